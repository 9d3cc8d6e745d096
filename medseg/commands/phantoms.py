"""``medseg phantoms``: write synthetic CT phantoms with exact truth and a manifest."""

from medseg import api


def _run(args) -> int:
    manifest = api.phantoms(out=args.out, n=args.n, seed=args.seed, split=args.split, dicom=args.dicom)
    print(f"wrote {args.n} phantoms; manifest {manifest}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("phantoms", help="write synthetic CT phantoms with exact truth and a manifest")
    s.add_argument(
        "--out",
        required=True,
        help="output folder: images/, labels/, manifest.csv and manifest_labels.yaml (the structures' names)",
    )
    s.add_argument("-n", type=int, default=8, help="number of cases (default 8)")
    s.add_argument("--seed", type=int, default=0, help="seed of the first case (case k uses seed + k; default 0)")
    s.add_argument(
        "--split", default="train", choices=["train", "val", "test"], help="the manifest's split column (default train)"
    )
    s.add_argument("--dicom", action="store_true", help="also write each case as a DICOM series")
    s.set_defaults(func=_run)
