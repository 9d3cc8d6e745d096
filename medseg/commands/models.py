"""``medseg models [NAME]``: list registered architectures (builds none) or show one model's options.

The listing reads only the registry. ``--params`` adds parameter counts at
default width, computed by building each model on PyTorch's meta device (no
memory, no weights); ``medseg models NAME`` always shows them.
"""


def _fmt_params(n) -> str:
    return "?" if n is None else (f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k")


def _run(args) -> int:
    from medseg import api

    if args.name:
        info = api.model_info(args.name)
        print(f"{info['name']}: {info['description']}")
        print(f"  dims: {list(info['dims'])}  input divisor: {info['divisor']}")
        counts = ", ".join(f"{d}D {_fmt_params(n)} ({n:,})" if n else f"{d}D ?" for d, n in info["params"].items())
        print(f"  parameters at default width (1 input channel, 2 classes): {counts}")
        print("  options:")
        for k, v in info["options"].items():
            print(f"    {k} = {v!r}")
        return 0
    names = api.list_models(args.pattern)
    header = f"{'name':<16} {'dims':<6} {'divisor':<8} "
    print(header + (f"{'params 2D':>10} {'params 3D':>10}  " if args.params else "") + "description")
    for name in names:
        info = api.model_info(name, params=args.params)
        row = f"{name:<16} {','.join(map(str, info['dims'])):<6} {info['divisor']!s:<8} "
        if args.params:
            p = info["params"]
            row += f"{_fmt_params(p[2]) if 2 in p else '-':>10} {_fmt_params(p[3]) if 3 in p else '-':>10}  "
        print(row + info["description"])
    for name, why in sorted(api.failed_plugins().items()):
        print(f"{name:<16} (plugin failed to load: {why})")
    return 0


def add(sub) -> None:
    s = sub.add_parser("models", help="list registered models (builds none)")
    s.add_argument("name", nargs="?", help="show one model's options and parameter counts")
    s.add_argument("--pattern", help="glob filter, e.g. 'unet*'")
    s.add_argument("--params", action="store_true", help="add parameter counts at default width (built on the meta device: no memory)")
    s.set_defaults(func=_run)
