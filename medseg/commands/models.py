"""``medseg models [NAME]``: list registered architectures (builds none)."""


def _run(args) -> int:
    from medseg.models import list_models, model_info

    if args.name:
        info = model_info(args.name)
        print(f"{info['name']}: {info['description']}")
        print(f"  dims: {list(info.get('dims', ()))}  input divisor: {info.get('divisor', '')}")
        for k, v in info["options"].items():
            print(f"  {k} = {v!r}")
        return 0
    print(f"{'name':<12} {'dims':<8} {'divisor':<8} description")
    for name in list_models(args.pattern):
        info = model_info(name)
        print(f"{name:<12} {','.join(map(str, info.get('dims', ()))):<8} {str(info.get('divisor', '')):<8} {info['description']}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("models", help="list registered models (builds none)")
    s.add_argument("name", nargs="?", help="show one model's options")
    s.add_argument("--pattern", help="glob filter, e.g. 'unet*'")
    s.set_defaults(func=_run)
