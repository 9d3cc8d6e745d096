"""``medseg predict``: segment images or DICOM folders with one loaded model."""

from __future__ import annotations  # (the annotation api.PredictOptions is not looked up: --help stays light)

import sys

from medseg import api
from medseg.commands import add_grid_policy


def _overrides(args) -> dict:
    out = {}
    if args.sw_batch_size is not None:
        out["sw_batch_size"] = args.sw_batch_size
    if args.overlap is not None:
        out["overlap"] = args.overlap
    if args.amp is not None:
        out["amp"] = args.amp
    if args.tta_flips is not None:
        out["tta_flips"] = [int(a) for a in args.tta_flips.split(",") if a != ""]
    if args.no_skip_background:
        out["skip_background"] = False
    if args.no_channels_last:
        out["channels_last"] = False
    if args.crf is not None:
        out["crf_iterations"] = args.crf
    if args.nonfinite is not None:
        out["nonfinite"] = args.nonfinite
    if args.folds is not None:  # nnU-Net model folders only
        out["folds"] = [f.strip() for f in args.folds.split(",") if f.strip()]
    if args.checkpoint is not None:
        out["checkpoint"] = args.checkpoint
    if args.preset is not None:
        out["preset"] = args.preset
    return out


def _options(args) -> api.PredictOptions:
    return api.PredictOptions(
        device=args.device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        dicom_seg=not args.no_seg,
        rtstruct=args.rtstruct,
        save_probabilities=args.save_probabilities,
        sr=not args.no_sr,
        modalities=tuple(args.modality or ()),
        min_slices=args.min_slices,
        series_description=args.series_description,
        resample_irregular=args.resample_irregular,
        refuse_tilt=args.refuse_tilt,
        inference=_overrides(args),
    )


def _run(args) -> int:
    model = args.model[0] if len(args.model) == 1 else args.model
    r = api.predict(model=model, inputs=args.inputs, out=args.out, options=_options(args))
    print(f"{len(r.outputs)} segmented, {len(r.skipped)} already done, {len(r.failures)} failed -> {args.out}")
    for cid, err in r.failures.items():
        print(f"  failed {cid}: {err}", file=sys.stderr)
    return r.exit_code


# long: one verb's whole option list reads best in one place
def add(sub) -> None:
    s = sub.add_parser("predict", help="segment images or DICOM folders; outputs sit on each input's grid")
    s.add_argument(
        "--model",
        required=True,
        action="append",
        help="checkpoint (.pt) from medseg train or medseg models import (repeat: ensemble), or a model folder: "
        "nnU-Net v2 (DatasetXXX/Trainer__Plans__conf), TotalSegmentator's results folder, a MONAI bundle",
    )
    s.add_argument(
        "inputs",
        nargs="+",
        help="NIfTI/NRRD/MHA files, folders of them (each file a case; for a model that "
        "takes several channels, nnU-Net's case_0000, case_0001... are one case's channels) or DICOM folders "
        "(a folder holding several image series, e.g. an export of several patients: one case per series)",
    )
    s.add_argument("--out", required=True, help="output folder: one label map (+ JSON sidecar, DICOM SEG) per case")
    d = s.add_argument_group("DICOM series selection (which image series of a DICOM folder to segment)")
    d.add_argument("--modality", action="append", help="only this modality (repeatable), e.g. CT")
    d.add_argument("--min-slices", type=int, default=1, help="only stacks with at least this many slices")
    d.add_argument("--series-description", help="only series whose description matches this regular expression")
    add_grid_policy(d)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--overwrite", action="store_true", help="redo cases already segmented by the same model")
    s.add_argument(
        "--no-seg", action="store_true", help="do not write DICOM SEG (nor the SR that references it) for DICOM inputs"
    )
    s.add_argument(
        "--no-sr",
        action="store_true",
        help="do not write the DICOM SR measurement report (TID 1500: volume, mean/SD HU per structure) beside the SEG",
    )
    s.add_argument(
        "--rtstruct",
        action="store_true",
        help="also write an RT Structure Set (contours per slice, referencing the source series) for DICOM inputs",
    )
    s.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write class probabilities (4D NIfTI on the network's grid)",
    )
    s.add_argument(
        "--nonfinite",
        choices=["refuse", "replace"],
        help="NaN/Inf voxels: refuse the input (default) or replace them with the intensity floor, recorded as a "
        "finding",
    )
    g = s.add_argument_group("inference settings (default: the checkpoint's)")
    g.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    g.add_argument("--overlap", type=float, help="window overlap in [0, 1)")
    g.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        help="mixed precision (auto: fp16 on CUDA, bf16 on CPUs that have it)",
    )
    g.add_argument(
        "--tta-flips", help="comma-separated spatial axes to mirror (0=x L-R, 1=y, 2=z); never 0 for left/right labels"
    )
    g.add_argument("--no-skip-background", action="store_true", help="run the network on air-only windows too")
    g.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout")
    g.add_argument(
        "--crf",
        type=int,
        metavar="ITERATIONS",
        help="dense-CRF refinement of the scores (DeepLab post-processing); 0 = off",
    )
    n = s.add_argument_group("nnU-Net v2 model folders (--model DatasetXXX_Name/Trainer__Plans__configuration)")
    n.add_argument("--folds", help="comma-separated folds to average, e.g. 0,1 or all (default: every fold_N present)")
    n.add_argument(
        "--checkpoint", choices=["final", "best"], help="checkpoint_final.pth (default) or checkpoint_best.pth"
    )
    n.add_argument(
        "--preset",
        choices=["faithful", "fast"],
        help="faithful: nnU-Net's own inference step for step (default); fast: medseg's faster paths "
        "(benchmarks/bench_nnunet.py measures their speed and label agreement)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_run)
