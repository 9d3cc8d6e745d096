"""medseg predict vs the plain MONAI recipe on the same checkpoint and the same CT-sized volume.

Reference (what a MONAI tutorial does): LoadImaged -> EnsureChannelFirstd ->
Orientationd(RAS) -> Spacingd -> ScaleIntensityRanged -> sliding_window_inference
(window 96^3, window batch 4, overlap 0.5, Gaussian) -> Invertd -> argmax.
medseg: ``Predictor.predict`` with the checkpoint's settings, then with one
speed switch turned off at a time to show what each buys.

Every variant runs in its own subprocess so peak RSS is its own (``--repeat``
times; medians). Prints one table: seconds, peak RSS, and the label agreement (mean Dice over structures)
with the reference and with medseg in full precision.

    .venv/bin/python benchmarks/bench_inference.py                 # trains a small model first (~2 min)
    .venv/bin/python benchmarks/bench_inference.py --model demo_out/model/best.pt
    .venv/bin/python benchmarks/bench_inference.py --smoke         # seconds: that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "medseg (defaults)": {},
    "medseg, reference windows": {"roi_size": [96, 96, 96], "overlap": 0.5, "sw_batch_size": 4},
    "  amp off (fp32)": {"amp": "off"},
    "  channels_last off": {"channels_last": False},
    "  skip_background off": {"skip_background": False},
    "  window batch 1": {"sw_batch_size": 1},
    "  all switches off": {"amp": "off", "channels_last": False, "skip_background": False, "sw_batch_size": 1},
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_reference(model_path: str, image_path: str, out: str, windows: str = "issue") -> dict:
    """The MONAI recipe; ``windows="issue"``: 96^3, overlap 0.5; ``"checkpoint"``: the checkpoint's own window and
    overlap."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscrete,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    from medseg.models.checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(model_path)
    model = build_model(ckpt)
    pre_cfg = ckpt["preprocessing"]
    lo, hi = pre_cfg["window"]
    t0 = time.monotonic()
    pre = Compose(
        [
            LoadImaged(keys="image", image_only=False),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=pre_cfg["spacing"], mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    data = pre({"image": image_path})
    with torch.inference_mode():
        roi, overlap = (
            ((96, 96, 96), 0.5)
            if windows == "issue"
            else (tuple(ckpt["inference"]["roi_size"]), ckpt["inference"]["overlap"])
        )
        logits = sliding_window_inference(data["image"][None], roi, 4, model, overlap=overlap, mode="gaussian")
    data["pred"] = logits[0]
    data["pred"].applied_operations = data["image"].applied_operations
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)
    labels = AsDiscrete(argmax=True)(inv(data)["pred"])[0].numpy().astype(np.uint8)
    seconds = time.monotonic() - t0
    np.save(out, labels)
    return {"seconds": seconds, "peak_rss_mb": _peak_mb()}


def run_medseg(model_path: str, image_path: str, out: str, overrides: dict) -> dict:
    from medseg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(model_path, device="cpu", **overrides)
    t0 = time.monotonic()
    labels = predictor.predict(image_path)
    seconds = time.monotonic() - t0
    np.save(out, labels.array)
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_mb(),
        "windows_run": labels.meta.get("windows_run"),
        "windows_skipped": labels.meta.get("windows_skipped"),
        "amp": labels.meta.get("amp"),
    }


def mean_dice(a: np.ndarray, b: np.ndarray, n_labels: int) -> float:
    from medseg.reporting.metrics import dice

    vals = [dice(a == k, b == k) for k in range(1, n_labels + 1)]
    return float(np.nanmean(vals))


def _child(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    print("RESULT " + json.dumps(_child_result(args)))


def _child_result(args) -> dict:
    if args.child == "reference_ckpt":
        res = run_reference(args.model, args.image, args.npy, windows="checkpoint")
    elif args.child == "make":  # the big phantom is made in a child so the parent's peak memory stays small
        from medseg.data.phantoms import make_phantom
        from medseg.io.readers import write_label_map, write_volume

        spacing = (0.6, 0.6, 0.7)
        shape = json.loads(args.overrides)["shape"]
        case = make_phantom(
            4242,
            spacing=spacing,
            fov_mm=tuple(n * s for n, s in zip(shape, spacing, strict=False)),
            flips=(True, True, False),
        )
        write_volume(case.image, args.image, dtype=np.int16)
        write_label_map(case.labels, args.npy)
        res = {"shape": list(case.image.shape), "air": float((case.image.array < -900).mean()), "spacing": spacing}
    elif args.child == "train":
        res = {"model": _train_small_model(Path(args.image))}
    elif args.child == "untrained":
        res = {"model": _untrained_model(Path(args.image))}
    elif args.child == "reference":
        res = run_reference(args.model, args.image, args.npy)
    else:
        res = run_medseg(args.model, args.image, args.npy, json.loads(args.overrides))
    return res


def _spawn(kind: str, model: str, image: str, npy: str, overrides: dict | None = None, repeat: int = 1) -> dict:
    """Run ``kind`` in ``repeat`` fresh processes; seconds and peak RSS are the medians."""
    runs = [_spawn_once(kind, model, image, npy, overrides) for _ in range(max(1, repeat))]
    res = dict(runs[-1])
    for key in ("seconds", "peak_rss_mb"):
        if key in res:
            res[key] = float(np.median([r[key] for r in runs]))
    return res


#: --smoke: every "child" runs in this process (seconds each instead of a fresh interpreter's; peak RSS is then this
#: process's, so not each variant's own)
IN_PROCESS = False


def _spawn_once(kind: str, model: str, image: str, npy: str, overrides: dict | None = None) -> dict:
    if IN_PROCESS:
        return _child_result(
            argparse.Namespace(child=kind, model=model, image=image, npy=npy, overrides=json.dumps(overrides or {}))
        )
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        model,
        "--image",
        image,
        "--npy",
        npy,
        "--overrides",
        json.dumps(overrides or {}),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][7:])


def _train_small_model(work: Path) -> str:
    from medseg import api
    from medseg.config import CONFIG_ROOT
    from medseg.data.phantoms import write_cohort

    manifest = write_cohort(work / "train", 8, seed=900)
    res = api.train(
        config=CONFIG_ROOT / "training" / "phantom_demo.yaml",
        manifest=manifest,
        out=work / "model",
        overrides=["training.epochs=80", "training.val_every=20"],
        progress=False,
    )
    return str(res.best_checkpoint)


def _untrained_model(work: Path) -> str:
    """--smoke: the demo config's U-Net, untrained, on 32^3 windows (seconds depend on the weights little; labels are
    noise)."""
    from medseg.config import CONFIG_ROOT, load_config
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    cfg = load_config(
        CONFIG_ROOT / "training" / "phantom_demo.yaml",
        overrides=["preprocessing.spacing=[4,4,4]", "inference.roi_size=[32,32,32]"],
    )
    model = create_model(
        cfg.model.name, spatial_dims=3, in_channels=1, out_channels=PHANTOM_LABELS.num_classes, **cfg.model.kwargs
    )
    return str(save_checkpoint(work / "untrained.pt", model, config=cfg, label_table=PHANTOM_LABELS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint; default: train a small one on phantoms first")
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200], help="volume size in voxels")
    ap.add_argument("--variants", default="all", help="'all' or 'defaults' (medseg defaults only)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (median seconds and peak RSS)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--npy", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (an untrained U-Net on 4 mm / 32^3 windows, a "
        "48x48x32 volume, every variant once, in this process): a test that the script runs",
    )
    args = ap.parse_args()
    if args.child:
        return _child(args)
    if args.smoke:
        global IN_PROCESS
        IN_PROCESS, args.shape, args.repeat = True, [48, 48, 32], 1

    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.io.readers import read_volume

    work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    model = args.model or _spawn("untrained" if args.smoke else "train", "", str(work), "")["model"]
    image, truth_path = work / "ct.nii.gz", work / "truth.nii.gz"
    made = _spawn("make", model, str(image), str(truth_path), {"shape": args.shape})
    print(
        f"volume {tuple(made['shape'])}, {made['air']:.0%} air, spacing {tuple(made['spacing'])} mm; model {model}; "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )

    ref = _spawn("reference", model, str(image), str(work / "ref.npy"), repeat=args.repeat)
    ref_labels = np.load(work / "ref.npy")
    rows = [("MONAI recipe (reference)", ref, 1.0, float("nan"))]
    ref2 = _spawn("reference_ckpt", model, str(image), str(work / "ref2.npy"), repeat=args.repeat)
    rows.append(
        (
            "MONAI, checkpoint windows",
            ref2,
            mean_dice(np.load(work / "ref2.npy"), ref_labels, PHANTOM_LABELS.num_classes - 1),
            np.load(work / "ref2.npy"),
        )
    )
    variants = VARIANTS if args.variants == "all" else {"medseg (defaults)": {}}
    fp32_labels = None
    for name, overrides in variants.items():
        res = _spawn("medseg", model, str(image), str(work / "m.npy"), overrides, repeat=args.repeat)
        labels = np.load(work / "m.npy")
        if overrides == {"amp": "off"}:
            fp32_labels = labels
        rows.append((name, res, mean_dice(labels, ref_labels, PHANTOM_LABELS.num_classes - 1), labels))
        print(f"  done: {name.strip()} {res['seconds']:.2f}s", flush=True)

    truth = np.asarray(read_volume(truth_path).array)
    print(
        f"\n{'variant':<26} {'seconds':>8} {'x faster':>9} {'peak RSS MB':>12} {'Dice vs ref':>12} "
        f"{'Dice vs fp32':>13} {'Dice vs truth':>14} {'windows run/skipped':>20}"
    )
    for name, res, d_ref, labels in rows:
        lab = ref_labels if isinstance(labels, float) else labels
        if name == "medseg (defaults)":
            ref2_labels = np.load(work / "ref2.npy")
            print(
                f"  (medseg defaults vs MONAI with the checkpoint's windows: Dice {mean_dice(lab, ref2_labels, 4):.4f})"
            )
        d_fp32 = mean_dice(lab, fp32_labels, 4) if fp32_labels is not None else float("nan")
        d_truth = mean_dice(lab, truth, 4)
        win = f"{res.get('windows_run', '')}/{res.get('windows_skipped', '')}" if "windows_run" in res else ""
        print(
            f"{name:<26} {res['seconds']:>8.2f} {ref['seconds'] / res['seconds']:>9.2f} {res['peak_rss_mb']:>12.0f} "
            f"{d_ref:>12.4f} {d_fp32:>13.4f} {d_truth:>14.4f} {win:>20}"
        )


if __name__ == "__main__":
    main()
