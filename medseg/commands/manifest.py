"""``medseg manifest from-folder``: a manifest + label table from an nnU-Net raw or Decathlon folder."""


def _from_folder(args) -> int:
    from medseg import api

    manifest, table = api.import_dataset(folder=args.folder, out=args.out, folds=args.folds, seed=args.seed)
    print(f"wrote {manifest} and {table}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("manifest", help="make data manifests")
    verbs = s.add_subparsers(dest="manifest_command", metavar="VERB", required=True)
    f = verbs.add_parser("from-folder", help="manifest + label table from an nnU-Net raw or Decathlon data set folder")
    f.add_argument("folder", help="folder with dataset.json (imagesTr/, labelsTr/, imagesTs/)")
    f.add_argument("--out", required=True, help="manifest CSV to write; the label table goes beside it (<name>_labels.yaml)")
    f.add_argument("--folds", type=int, default=0, help="assign the training cases to K cross-validation folds")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_from_folder)
