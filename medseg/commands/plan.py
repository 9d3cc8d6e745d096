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
        budget_minutes=args.budget_minutes,
    )
    print(
        f"{fp['n_cases']} cases, {fp['modality']}, median spacing {[round(s, 2) for s in fp['spacing_median']]} mm, "
        f"labels from {fp['label_table_source']} -> {path}"
    )
    if "spacing_planned" in fp:
        print(f"planned spacing {[round(s, 2) for s in fp['spacing_planned']]} mm: {fp['spacing_reason']}")
    _print_candidates(fp.get("resolution"))
    return 0


def _print_candidates(res: dict | None) -> None:
    """The spacings the planner weighed, one line each, with the figures it decided by."""
    if not res or len(res.get("candidates", [])) < 2:
        return
    budget = f"{res['budget_minutes']:g} min" if res.get("budget_minutes") else "the schedule"
    step = f", {res['seconds_per_step']:.2f} s per step measured" if res.get("seconds_per_step") else ""
    print(f"resolution for {budget} on the {res['device']}{step}:")
    for c in res["candidates"]:
        passes = "?" if c["passes"] is None else f"{c['passes']:.3g}"
        print(
            f"  {'x'.join(f'{v:g}' for v in c['spacing'])} mm, patch {'x'.join(map(str, c['patch']))}: "
            f"context {c['context']:.0%}, detail {c['detail']:.3g} voxels, passes {passes} -> {c['verdict']}"
        )
    if res.get("cascade_reason"):
        print(f"  {res['cascade_reason']}")


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
        "--budget-minutes",
        type=float,
        help="training time the plan is for (what medseg train --max-minutes will get; default: the base config's "
        "training.max_minutes, else its schedule); with the device it decides how coarse to train",
    )
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a planned value, e.g. training.patch_size=[64,64,64]",
    )
    s.set_defaults(func=_run)
