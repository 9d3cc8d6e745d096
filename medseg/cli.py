"""``medseg`` command line: a thin shell over ``medseg.api``.

A ``MedsegError`` becomes one line on stderr (``medseg: error: ...``) and exit
code 2; batch commands exit 1 when some cases failed. Listing commands never
build a model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings


def _quiet_third_party() -> None:
    # MONAI announces optional GPU decoders it cannot find; not the user's concern.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*NvImgCodec.*")
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _cmd_models(args) -> int:
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


def _cmd_phantoms(args) -> int:
    from medseg.phantoms import write_cohort

    manifest = write_cohort(args.out, args.n, seed=args.seed, split=args.split, dicom=args.dicom)
    print(f"wrote {args.n} phantoms; manifest {manifest}")
    return 0


def _cmd_train(args) -> int:
    from medseg import api

    r = api.train(config=args.config, manifest=args.manifest, out=args.out, overrides=args.set, progress=not args.no_progress)
    print(f"best validation mean Dice {r.best_mean_dice:.3f} (epoch {r.best_epoch}); checkpoint {r.best_checkpoint}")
    for k, v in r.per_structure_dice.items():
        print(f"  {k:<16} {v:.3f}")
    return 0


def _cmd_predict(args) -> int:
    from medseg import api

    r = api.predict(model=args.model, inputs=args.inputs, out=args.out, device=args.device, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"{len(r.outputs)} segmented, {len(r.skipped)} already done, {len(r.failures)} failed -> {args.out}")
    for cid, err in r.failures.items():
        print(f"  failed {cid}: {err}", file=sys.stderr)
    return r.exit_code


def _cmd_report(args) -> int:
    from medseg import api

    path = api.report(labels=args.labels, images=args.images, label_table=args.label_table, out=args.out)
    print(f"wrote {path}")
    return 0


def _cmd_evaluate(args) -> int:
    from medseg import api

    path = api.evaluate(pred=args.pred, ref=args.ref, label_table=args.label_table, out=args.out)
    print(f"wrote {path}")
    return 0


def _cmd_demo(args) -> int:
    from medseg.demo import run_demo

    res = run_demo(out=args.out, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    return 0 if res["mean_dice"] >= args.min_dice else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medseg", description="Segment CT/MR volumes and quantify what is found.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details and tracebacks")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("models", help="list registered models (builds none)")
    s.add_argument("name", nargs="?", help="show one model's options")
    s.add_argument("--pattern", help="glob filter, e.g. 'unet*'")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("phantoms", help="write synthetic CT phantoms with exact truth and a manifest")
    s.add_argument("--out", required=True)
    s.add_argument("-n", type=int, default=8, help="number of cases")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", default="train", choices=["train", "val", "test"])
    s.add_argument("--dicom", action="store_true", help="also write each case as a DICOM series")
    s.set_defaults(func=_cmd_phantoms)

    s = sub.add_parser("train", help="train a model from a config and a data manifest")
    s.add_argument("--config", required=True, help="training YAML, e.g. configs/training/phantom_demo.yaml")
    s.add_argument("--manifest", required=True, help="CSV with case_id,image,label,split")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=20")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="segment images or DICOM folders; outputs sit on each input's grid")
    s.add_argument("--model", required=True, help="checkpoint (.pt) from medseg train")
    s.add_argument("inputs", nargs="+", help="NIfTI/NRRD/MHA files or DICOM folders")
    s.add_argument("--out", required=True)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--overwrite", action="store_true", help="redo cases already segmented by the same model")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("report", help="volume and intensity table (volumes.csv) from label maps")
    s.add_argument("--labels", nargs="+", required=True, help="label maps")
    s.add_argument("--images", nargs="+", help="images on the same grids, in the same order (for intensities)")
    s.add_argument("--label-table", help="YAML label table or a name in configs/labels (default: from the predict sidecar)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("evaluate", help="Dice and volume error against reference label maps (metrics.csv)")
    s.add_argument("--pred", nargs="+", required=True)
    s.add_argument("--ref", nargs="+", required=True)
    s.add_argument("--label-table")
    s.add_argument("--out", required=True, help="a .csv file or a folder")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("demo", help="train on phantoms, segment DICOM phantoms, report (about 5 minutes on 2 CPU cores)")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--n-train", type=int, default=16)
    s.add_argument("--n-test", type=int, default=4)
    s.add_argument("--epochs", type=int, help="override the demo config's epochs")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-dice", type=float, default=0.85, help="exit 1 when the mean Dice is below this")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from medseg.errors import MedsegError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import medseg

        print(medseg.__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="medseg: %(levelname)s: %(message)s")
    _quiet_third_party()
    try:
        return args.func(args)
    except MedsegError as exc:
        if args.verbose:
            logging.exception("details")
        print(f"medseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
