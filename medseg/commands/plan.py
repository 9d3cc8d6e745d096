"""``medseg plan``: write a training config derived from the data set."""

from medseg import api


def _run(args) -> int:
    path, fp = api.plan(
        manifest=args.manifest,
        out=args.out,
        base_config=args.base,
        memory_gb=args.memory_gb,
        min_spacing=args.min_spacing,
        overrides=args.set,
        labels=args.labels,
        model=args.model,
    )
    print(
        f"{fp['n_cases']} cases, {fp['modality']}, median spacing {[round(s, 2) for s in fp['spacing_median']]} mm, "
        f"labels from {fp['label_table_source']} -> {path}"
    )
    if "spacing_planned" in fp:
        print(f"planned spacing {[round(s, 2) for s in fp['spacing_planned']]} mm: {fp['spacing_reason']}")
    return 0


def add(sub) -> None:
    s = sub.add_parser(
        "plan", help="derive a training config (spacing, patch size, intensity scheme) from a manifest's data"
    )
    s.add_argument(
        "manifest", help="data manifest .csv (case_id, image, label, split), e.g. from medseg manifest from-folder"
    )
    s.add_argument("--out", required=True, help="config YAML to write")
    s.add_argument(
        "--base",
        help="config whose other settings (model, epochs...) the plan starts from; its label table is not used",
    )
    s.add_argument(
        "--labels",
        help="label table (YAML, labels.csv, ITK-SNAP label file, dataset.json, .seg.nrrd, or a name under "
        "configs/labels); default: the table beside the manifest or in the data set, else label_1, label_2... from the "
        "values",
    )
    s.add_argument(
        "--model",
        help="a model (a name medseg models lists: its family's preset, else its default width) "
        "or a model preset under configs/models (its architecture and per-family training recipe)",
    )
    s.add_argument("--memory-gb", type=float, default=4.0, help="memory budget for training activations (default 4)")
    s.add_argument("--min-spacing", type=float, default=1.0, help="never plan a finer spacing than this (mm)")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a planned value, e.g. training.patch_size=[64,64,64]",
    )
    s.set_defaults(func=_run)
