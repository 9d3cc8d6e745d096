"""``medseg predict``: segment images or DICOM folders with one loaded model."""

import sys


def _run(args) -> int:
    from medseg import api

    r = api.predict(model=args.model, inputs=args.inputs, out=args.out, device=args.device, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"{len(r.outputs)} segmented, {len(r.skipped)} already done, {len(r.failures)} failed -> {args.out}")
    for cid, err in r.failures.items():
        print(f"  failed {cid}: {err}", file=sys.stderr)
    return r.exit_code


def add(sub) -> None:
    s = sub.add_parser("predict", help="segment images or DICOM folders; outputs sit on each input's grid")
    s.add_argument("--model", required=True, help="checkpoint (.pt) from medseg train")
    s.add_argument("inputs", nargs="+", help="NIfTI/NRRD/MHA files or DICOM folders")
    s.add_argument("--out", required=True)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--overwrite", action="store_true", help="redo cases already segmented by the same model")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_run)
