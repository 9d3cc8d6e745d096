"""``medseg plan``: write a training config derived from the data set."""


def _run(args) -> int:
    from medseg.training.planning import plan

    path, fp = plan(args.manifest, args.out, base_config=args.base, memory_gb=args.memory_gb, min_spacing=args.min_spacing, overrides=args.set)
    print(f"{fp['n_cases']} cases, {fp['modality']}, median spacing {[round(s, 2) for s in fp['spacing_median']]} mm -> {path}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("plan", help="derive a training config (spacing, patch size, intensity scheme) from a manifest's data")
    s.add_argument("manifest")
    s.add_argument("--out", required=True, help="config YAML to write")
    s.add_argument("--base", help="config whose other settings (model, epochs, labels...) the plan starts from")
    s.add_argument("--memory-gb", type=float, default=4.0, help="memory budget for training activations (default 4)")
    s.add_argument("--min-spacing", type=float, default=1.0, help="never plan a finer spacing than this (mm)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a planned value, e.g. training.patch_size=[64,64,64]")
    s.set_defaults(func=_run)
