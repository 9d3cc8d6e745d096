"""``medseg report`` (volumes.csv) and ``medseg evaluate`` (metrics.csv)."""


def _report(args) -> int:
    from medseg import api

    path = api.report(labels=args.labels, images=args.images, label_table=args.label_table, out=args.out)
    print(f"wrote {path}")
    return 0


def _evaluate(args) -> int:
    from medseg import api

    path = api.evaluate(pred=args.pred, ref=args.ref, label_table=args.label_table, out=args.out)
    print(f"wrote {path}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("report", help="volume and intensity table (volumes.csv) from label maps")
    s.add_argument("--labels", nargs="+", required=True, help="label maps")
    s.add_argument("--images", nargs="+", help="images on the same grids, in the same order (for intensities)")
    s.add_argument("--label-table", help="YAML label table or a name in configs/labels (default: from the predict sidecar)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=_report)

    s = sub.add_parser("evaluate", help="Dice and volume error against reference label maps (metrics.csv)")
    s.add_argument("--pred", nargs="+", required=True)
    s.add_argument("--ref", nargs="+", required=True)
    s.add_argument("--label-table")
    s.add_argument("--out", required=True, help="a .csv file or a folder")
    s.set_defaults(func=_evaluate)
