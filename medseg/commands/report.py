"""``medseg report`` (volumes.csv, cohort tables, QC montages, report.html) and ``medseg evaluate`` (metrics.csv).

Both work on any label maps on disk (medseg's or another tool's) and need no model and no GPU.
Both go through ``medseg.api``, which delegates to ``medseg.reporting.report``.
"""

from medseg import api


def _report(args) -> int:
    path = api.report(
        labels=args.labels,
        images=args.images,
        label_table=args.label_table,
        out=args.out,
        min_size_ml=args.min_size_ml,
        reference_ranges=args.reference_ranges,
        resample_order=0 if args.nearest else 1,
        qc=not args.no_qc,
        html=not (args.no_html or args.no_qc),
        window=tuple(args.window) if args.window else None,
        statistics_json=args.statistics_json,
        longitudinal=(args.longitudinal if args.longitudinal != "dicom" else True) if args.longitudinal else False,
    )
    print(f"wrote {path}" + ("" if args.no_qc or args.no_html else f" and {path.parent / 'report.html'}"))
    if args.statistics_json:
        print(f"wrote {path.parent / 'statistics'}/<case>.json (TotalSegmentator's statistics.json format)")
    if args.longitudinal:
        print(f"wrote {path.parent / 'longitudinal.csv'} (changes over time per patient and structure)")
    return 0


def _evaluate(args) -> int:
    options = {"surface": not args.no_surface}
    if args.nsd_tolerance_mm is not None:
        options["nsd_tolerance_mm"] = args.nsd_tolerance_mm
    path = api.evaluate(pred=args.pred, ref=args.ref, label_table=args.label_table, out=args.out, **options)
    print(f"wrote {path}")
    print(api.dice_summary(path))
    return 0


# long: one verb's whole option list reads best in one place
def add(sub) -> None:
    s = sub.add_parser(
        "report", help="volumes.csv, cohort tables, QC montages and report.html from label maps (no model needed)"
    )
    s.add_argument(
        "--labels",
        nargs="+",
        required=True,
        help="label maps (NIfTI, NRRD, MHA) or folders of them (e.g. the --out of medseg predict; probability "
        "maps are left out); structure names come from each map's predict sidecar, .labels.yaml, "
        "dataset.json or manifest table",
    )
    s.add_argument(
        "--images",
        nargs="+",
        help="images or a folder of them: one image per label map (for intensities and QC pictures), "
        "paired by case name (nnU-Net's _0000 "
        "ignored), in the order given when the names differ; "
        "an image on another grid is resampled onto the label map's (linear; --nearest)",
    )
    s.add_argument(
        "--label-table",
        help="YAML label table or a name in configs/labels: the names of label maps that carry "
        "none (default: the names that travel with each map)",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--min-size-ml", type=float, help="structures found but smaller than this get status below_min_size")
    s.add_argument(
        "--reference-ranges",
        help="CSV (structure,low_ml,high_ml) or YAML ({structure: [low, high]}) for outlier flags; "
        "default: robust z-score against the cohort",
    )
    s.add_argument(
        "--nearest",
        action="store_true",
        help="nearest-neighbour instead of linear resampling of images on another grid",
    )
    s.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("LEVEL", "WIDTH"),
        help="grey window of the QC pictures (default: CT 40/400 or percentiles)",
    )
    s.add_argument("--no-qc", action="store_true", help="skip the QC montages (and report.html)")
    s.add_argument("--no-html", action="store_true", help="skip report.html")
    s.add_argument(
        "--statistics-json",
        action="store_true",
        help="also OUT/statistics/<case>.json in TotalSegmentator's statistics.json format (volume in mm3 and "
        "mean intensity per structure, its rounding and border rule); needs --images",
    )
    s.add_argument(
        "--longitudinal",
        nargs="?",
        const="dicom",
        metavar="MANIFEST",
        help="also longitudinal.csv: each patient's studies in date order, volume changes from baseline and "
        "previous (mL, %%), days between, flags; patients and dates from the DICOM series the predict "
        "sidecars name, or from MANIFEST's case_id, subject and date columns (no identifier or date is written)",
    )
    s.set_defaults(func=_report)

    s = sub.add_parser(
        "evaluate", help="Dice, IoU, HD95, ASSD, NSD and volume error against reference label maps (metrics.csv)"
    )
    s.add_argument(
        "--pred", nargs="+", required=True, help="predicted label maps, or a folder of them (medseg predict's --out)"
    )
    s.add_argument(
        "--ref",
        nargs="+",
        required=True,
        help="reference label maps or a folder of them, paired with --pred by case name (the file name; nnU-Net's "
        "_0000 channel suffix ignored), or in the order given when the names differ",
    )
    s.add_argument(
        "--label-table",
        help="YAML label table or a name in configs/labels naming the values of maps that "
        "carry no names; structures are always compared by name, never value with value",
    )
    s.add_argument("--out", required=True, help="a .csv file or a folder")
    s.add_argument("--nsd-tolerance-mm", type=float, help="tolerance of the normalised surface Dice (default 2 mm)")
    s.add_argument("--no-surface", action="store_true", help="skip surface distances (HD95, ASSD, NSD)")
    s.set_defaults(func=_evaluate)
