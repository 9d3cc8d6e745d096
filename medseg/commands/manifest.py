"""``medseg manifest from-folder`` (nnU-Net raw / Decathlon folder) and ``from-dicom`` (DICOM export with
RTSTRUCT/SEG)."""

from medseg import api


def _from_folder(args) -> int:
    manifest, table = api.import_dataset(folder=args.folder, out=args.out, folds=args.folds, seed=args.seed)
    print(f"wrote {manifest} and {table}")
    return 0


def _from_dicom(args) -> int:
    res = api.import_dicom(export=args.export, out=args.out, split=args.split)
    print(
        f"wrote {res.manifest} ({len(res.cases)} cases) and {res.table}; "
        f"{len(res.unpaired_rows)} objects/series not paired, with reasons, in {res.unpaired}"
    )
    return 0


def add(sub) -> None:
    s = sub.add_parser("manifest", help="make data manifests")
    verbs = s.add_subparsers(dest="manifest_command", metavar="VERB", required=True)
    f = verbs.add_parser("from-folder", help="manifest + label table from an nnU-Net raw or Decathlon data set folder")
    f.add_argument("folder", help="folder with dataset.json (imagesTr/, labelsTr/, imagesTs/)")
    f.add_argument(
        "--out", required=True, help="manifest CSV to write; the label table goes beside it (<name>_labels.yaml)"
    )
    f.add_argument("--folds", type=int, default=0, help="assign the training cases to K cross-validation folds")
    f.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    f.set_defaults(func=_from_folder)
    d = verbs.add_parser(
        "from-dicom",
        help="manifest + label table from a DICOM export: image series paired with the "
        "RTSTRUCT/SEG objects that reference them (converted to NIfTI once, cached beside the manifest)",
    )
    d.add_argument("export", help="folder holding the export (any layout: series, RTSTRUCT, SEG, other objects)")
    d.add_argument(
        "--out",
        required=True,
        help="manifest CSV to write; beside it <name>_labels.yaml, <name>_unpaired.csv, <name>_cache/",
    )
    d.add_argument(
        "--split", default="train", choices=("train", "val", "test"), help="split of every case (default train)"
    )
    d.set_defaults(func=_from_dicom)
