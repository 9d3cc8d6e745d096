"""``medseg models [NAME]``: list registered architectures (builds none) or show one model's options;
``medseg models import PATH --out MODEL.pt``: an nnU-Net v2 or TotalSegmentator folder as one portable file
(``medseg.adapters.portable``).

The listing reads only the registry. ``--params`` adds parameter counts at
default width, computed by building each model on PyTorch's meta device (no
memory, no weights); ``medseg models NAME`` always shows them.
"""

from medseg import api
from medseg.errors import ConfigError


def _fmt_params(n) -> str:
    return "?" if n is None else (f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k")


def _import(args) -> int:
    if not args.path or not args.out:
        raise ConfigError("usage: medseg models import PATH --out MODEL.pt [--force] [--folds 0,1] [--checkpoint best]")
    folds = [f.strip() for f in args.folds.split(",") if f.strip()] if args.folds else None
    out = api.import_model(args.path, out=args.out, folds=folds, checkpoint=args.checkpoint, force=args.force)
    print(f"wrote {out}")
    return 0


def _run(args) -> int:
    if args.name == "import":
        return _import(args)
    if args.path or args.out:
        raise ConfigError("PATH and --out belong to 'medseg models import PATH --out MODEL.pt'")
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
    s = sub.add_parser("models", help="list registered models (builds none), or import a model folder of another tool")
    s.add_argument("name", nargs="?", help="show one model's options and parameter counts; or 'import' (below)")
    s.add_argument(
        "path",
        nargs="?",
        help="with 'import': an nnU-Net v2 trained-model folder or TotalSegmentator's results "
        "folder, written as one portable file (medseg models import PATH --out MODEL.pt)",
    )
    s.add_argument("--out", help="with 'import': the file to write (refused if it exists, unless --force)")
    s.add_argument("--force", action="store_true", help="with 'import': replace an existing --out")
    s.add_argument(
        "--folds",
        help="with 'import': comma-separated folds to keep (default: every fold_N present; TotalSegmentator: fold 0)",
    )
    s.add_argument(
        "--checkpoint",
        choices=["final", "best"],
        default="final",
        help="with 'import': checkpoint_final.pth (default) or checkpoint_best.pth",
    )
    s.add_argument("--pattern", help="glob filter, e.g. 'unet*'")
    s.add_argument(
        "--params",
        action="store_true",
        help="add parameter counts at default width (built on the meta device: no memory)",
    )
    s.set_defaults(func=_run)
