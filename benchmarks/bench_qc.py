"""Quality verdicts without ground truth (``medseg.reporting.quality``), measured where the truth is known.

A small 3D U-Net is trained on phantoms for a few minutes (or ``--model`` reuses a
checkpoint trained on phantoms). The input profile of its training data is taken
from the training phantoms (``quality.training_profile``; with ``--model``, from the
phantoms this script trains on, same seeds). Then it segments:

- held-out phantoms (``clean``);
- held-out phantoms degraded: strong noise, a bias field, a field of view cut
  through the organs, intensity shifts (+150 HU, a missing -1024 intercept),
  metal-like streaks, an MR-like intensity map (wrong modality), the image
  mirrored left-right (a flipped header / situs inversus);
- the clean prediction with the kidney labels exchanged (a model confusing sides);
- real images of other anatomy or modality shipped with installed packages
  (pydicom's ``CT_small.dcm``/``MR_small.dcm``, nibabel's ``anatomical.nii`` and
  ``example4d.nii.gz``) and a synthetic head CT; no truth, none may pass.

A structure *fails* when its Dice against the truth is below 0.8 (a structure the
truth lacks fails when predicted), or, in a cut field of view, when less than 90%
of the true organ lies inside the image (its volume cannot be right). Per signal
and combined: the share of failed structures flagged (``qc`` review or fail) and
the share of good structures flagged. Written to ``benchmarks/results/<date>_qc.txt``.

    .venv/bin/python benchmarks/bench_qc.py                      # trains ~4 min, ~8 min in all
    .venv/bin/python benchmarks/bench_qc.py --model RUN/best.pt  # reuse a phantom checkpoint
    .venv/bin/python benchmarks/bench_qc.py --quick              # < 2 min: smoke test, not a measurement
    .venv/bin/python benchmarks/bench_qc.py --smoke              # seconds: that it runs
                                                                 # (tests/unit/test_benchmark_scripts.py)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAIL_DICE = 0.8
TARGET_SENS, TARGET_FPR = 0.90, 0.10
BENCH_SPACING = ((1.5, 2.5), (2.0, 4.0))  # in-plane, slice (mm): coarse, so the phantoms are cheap
SMOKE_SPACING = ((4.0, 4.5), (5.0, 6.0))  # --smoke: coarser still (seconds, not a measurement)
_spacing = BENCH_SPACING  # the range phantom() draws from (main sets it)

# the small recipe (5 mm grid, 8-16-32 U-Net): about 0.85 mean validation Dice after ~3.5 min on 2 cores
RECIPE = {
    "labels": "abdomen_phantom",
    "model": {
        "name": "unet",
        "spatial_dims": 3,
        "kwargs": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    },
    "preprocessing": {
        "spacing": [5.0, 5.0, 5.0],
        "intensity": "ct_window",
        "window": [-200, 250],
        "foreground_hu": -500,
        "crop_margin": 4,
    },
    "training": {
        "epochs": 400,
        "patch_size": [48, 48, 32],
        "batch_size": 2,
        "samples_per_image": 1,
        "learning_rate": 0.01,
        "iterations_per_epoch": 8,
        "val_every": 10,
        "seed": 0,
    },
    "inference": {"roi_size": [48, 48, 32], "overlap": 0.25, "sw_batch_size": 2},
}


def phantom(seed: int):
    from medseg.data.phantoms import make_phantom

    rng = np.random.default_rng([seed, 7])
    s_in, s_z = rng.uniform(*_spacing[0]), rng.uniform(*_spacing[1])
    return make_phantom(seed, spacing=(s_in, s_in, s_z))


def train(work: Path, n_train: int, minutes: float, seeds: range):
    import pandas as pd
    import yaml

    from medseg import api
    from medseg.io.readers import write_label_map, write_volume

    rows = []
    for i, seed in enumerate(seeds[:n_train]):
        ph = phantom(seed)
        img, lab = work / "train" / f"p{seed}.nii.gz", work / "train" / f"p{seed}_seg.nii.gz"
        write_volume(ph.image, img, dtype=np.int16)
        write_label_map(ph.labels, lab)
        rows.append(
            {"case_id": f"p{seed}", "image": str(img), "label": str(lab), "split": "val" if i % 6 == 5 else "train"}
        )
    manifest = work / "train" / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = work / "recipe.yaml"
    config.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    result = api.train(config=config, manifest=manifest, out=work / "model", max_minutes=minutes, progress=False)
    print(
        f"trained {result.epochs_run} epochs in {result.seconds:.0f} s: validation mean Dice "
        f"{result.best_mean_dice:.3f}",
        flush=True,
    )
    return result.best_checkpoint


# -- degradations (image, truth) -> (image, truth, full-truth volumes or None) ------------------------


def _vol(a, like):
    from medseg.io.volume import Volume

    return Volume(np.asarray(a), like.affine.copy(), like.source, dict(like.meta))


def noise(ph, rng, sigma=70.0):
    return _vol(ph.image.array + rng.normal(0, sigma, ph.image.shape).astype(np.float32), ph.image), ph.labels


def bias(ph, rng):
    from scipy.ndimage import zoom

    coarse = rng.uniform(0.6, 1.4, size=(3, 3, 2))
    field = zoom(coarse, [n / c for n, c in zip(ph.image.shape, coarse.shape, strict=False)], order=3)[
        : ph.image.shape[0], : ph.image.shape[1], : ph.image.shape[2]
    ]
    return _vol((ph.image.array + 1000.0) * field.astype(np.float32) - 1000.0, ph.image), ph.labels


def shift(ph, rng, hu=150.0):
    return _vol(ph.image.array + np.float32(hu), ph.image), ph.labels


def streaks(ph, rng):
    a = ph.image.array.copy()
    nx, ny, _ = a.shape
    x, y = np.meshgrid(np.arange(nx) - nx / 2, np.arange(ny) - ny / 2, indexing="ij")
    ang = np.arctan2(y, x)
    pattern = np.zeros((nx, ny), np.float32)
    for th in rng.uniform(0, np.pi, 6):
        pattern += np.where(np.abs(np.sin(ang - th)) < 0.02, rng.choice([-1.0, 1.0]) * 900.0, 0.0).astype(np.float32)
    r = np.hypot(x, y)
    pattern[r < 4] = 3000.0
    body = a > -500
    a = np.where(body, a + pattern[:, :, None], a)
    return _vol(np.clip(a, -1024, 3071), ph.image), ph.labels


def mr_like(ph, rng):
    """A T1-like map of the same anatomy: air dark, fat bright, organs mid-grey, positive values only."""
    hu = ph.image.array
    pts_hu = [-1024, -500, -120, -80, 0, 30, 45, 60, 300, 3071]
    pts_mr = [0, 20, 900, 850, 300, 380, 420, 520, 150, 100]
    return _vol(
        np.interp(hu, pts_hu, pts_mr).astype(np.float32) + rng.normal(0, 15, hu.shape).astype(np.float32), ph.image
    ), ph.labels


def truncate(ph, rng):
    """The field of view cut through the kidneys (inferior part removed): the truth is the full organ."""
    from medseg.io.volume import Volume

    lab = ph.labels.array
    kz = np.nonzero(np.isin(lab, (3, 4)))
    axis = int(np.argmax(np.abs(ph.labels.affine[2, :3])))  # the array axis closest to superior
    k = kz[axis]
    cut = int(np.percentile(k, 50))
    sign = np.sign(ph.labels.affine[2, axis])
    sl = [slice(None)] * 3
    sl[axis] = slice(cut, None) if sign > 0 else slice(0, cut + 1)
    offset = np.zeros(3)
    offset[axis] = sl[axis].start or 0
    aff = ph.labels.affine.copy()
    aff[:3, 3] = aff[:3, :3] @ offset + aff[:3, 3]
    img = Volume(ph.image.array[tuple(sl)], aff, ph.image.source, {})
    labs = Volume(lab[tuple(sl)], aff, ph.labels.source, {})
    return img, labs, {v: int(np.count_nonzero(lab == v)) for v in (1, 2, 3, 4)}


def mirror(ph, rng):
    """The image mirrored left-right in the patient frame (a wrong header, or situs inversus): the truth mirrors too."""
    axis = int(np.argmax(np.abs(ph.image.affine[0, :3])))
    return _vol(np.flip(ph.image.array, axis).copy(), ph.image), _vol(np.flip(ph.labels.array, axis).copy(), ph.labels)


DEGRADATIONS = {
    "noise70": noise,
    "bias": bias,
    "shift150": shift,
    "no_intercept": lambda ph, rng: shift(ph, rng, 1024.0),
    "streaks": streaks,
    "mr_like": mr_like,
    "truncated": truncate,
    "mirrored": mirror,
}


# -- images without truth -------------------------------------------------------------------------


def _dicom_volume(path: Path):
    import pydicom

    from medseg.io.volume import LPS_TO_RAS, Volume

    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    ps = [float(v) for v in ds.PixelSpacing]
    dz = float(getattr(ds, "SliceThickness", 1) or 1)
    aff = np.diag([ps[1], ps[0], dz, 1.0])
    return Volume(a.T[:, :, None].copy(), LPS_TO_RAS @ aff, str(path), {})


def head_ct(rng):
    from medseg.io.volume import Volume

    sp = 2.0
    shape = (110, 120, 100)
    idx = np.stack(np.meshgrid(*[(np.arange(n) - n / 2) * sp for n in shape], indexing="ij"))
    r = (idx[0] / 75) ** 2 + (idx[1] / 95) ** 2 + (idx[2] / 90) ** 2
    a = np.full(shape, -1000.0, np.float32)
    a[r <= 1] = 1200.0  # skull
    a[r <= 0.86] = 35.0  # brain
    a[(r <= 0.86) & (np.abs(idx[0]) < 3)] = 10.0  # falx-like midline CSF
    a += rng.normal(0, 8, shape).astype(np.float32)
    aff = np.diag([sp, sp, sp, 1.0])
    aff[:3, 3] = -np.array(shape) / 2 * sp
    return Volume(a, aff, "synthetic_head_ct", {})


def other_images(rng) -> dict:
    import nibabel as nib
    import pydicom

    from medseg.io.volume import Volume

    out = {}
    data = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in ("CT_small.dcm", "MR_small.dcm"):
        if (data / name).is_file():
            out[f"pydicom {name}"] = _dicom_volume(data / name)
    nib_data = Path(nib.__file__).parent / "tests" / "data"
    for name in ("anatomical.nii", "example4d.nii.gz"):
        p = nib_data / name
        if p.is_file():
            img = nib.load(p)
            a = np.asarray(img.dataobj, dtype=np.float32)
            a = a[..., 0] if a.ndim == 4 else a
            out[f"nibabel {name}"] = Volume(np.nan_to_num(a), img.affine, str(p), {})
    out["synthetic head CT"] = head_ct(rng)
    return out


# -- measurement ----------------------------------------------------------------------------------


def dice(pred, truth, index) -> float | None:
    p, t = pred == index, truth == index
    n = int(p.sum()) + int(t.sum())
    return None if n == 0 else 2.0 * int((p & t).sum()) / n


def segment(predictor, image):
    lab = predictor.predict(image)
    return lab, lab.meta.get("confidence"), lab.meta.get("pass_agreement")


def rows_for(case_id, group, image, pred, table, conf, agree, expected):
    from medseg.reporting import quality
    from medseg.reporting.volumes import structure_rows

    rows = structure_rows(case_id, pred, table, image)
    quality.assess_case(rows, image=image, labels=pred, confidence=conf, agreement=agree, expected=expected)
    for r in rows:
        r["group"] = group
    return rows


def code(reason: str) -> str:
    return re.split(r"[(\s]", reason.strip(), maxsplit=1)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint trained on phantoms (skips training)")
    ap.add_argument("--quick", action="store_true", help="few cases, ~40 s of training: a smoke test under 2 minutes")
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget")
    ap.add_argument("--clean", type=int, default=12, help="held-out clean phantoms")
    ap.add_argument("--per-degradation", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "2026-12-07_qc.txt"))
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--csv", help="also write every judged row (signals, verdict, Dice) to this CSV")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (3 training phantoms, a few seconds of training, "
        "one case per group, phantoms at 4-6 mm; writes --out only when given): a test that the script runs",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.minutes, args.clean, args.per_degradation = 0.6, 3, 1
    global _spacing
    _spacing = BENCH_SPACING
    if args.smoke:
        args.minutes, args.clean, args.per_degradation = 0.03, 1, 1
        _spacing = SMOKE_SPACING

    import pandas as pd

    from medseg.inference.predictor import Predictor
    from medseg.reporting import cohort, quality

    t0 = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="bench_qc_") if not args.work else None
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    train_seeds = range(100, 100 + (3 if args.smoke else 6 if args.quick else 18))
    if args.model:
        model = Path(args.model)
    else:
        model = train(work, len(train_seeds), args.minutes, train_seeds)
    predictor = Predictor.from_checkpoint(model, device="cpu")
    table = predictor.labels
    from medseg.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)
    expected = quality.expected_from_checkpoint(ckpt)
    val = ckpt.get("val_dice") or {}
    trained = (
        (f"epoch {ckpt.get('epoch')}, validation Dice " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if val
        else ""
    )
    del ckpt
    prof_seeds = train_seeds[: (2 if args.smoke else 4 if args.quick else 12)]
    expected.update(
        {
            k: v
            for k, v in quality.training_profile(((p.image, p.labels) for p in map(phantom, prof_seeds)), table).items()
            if k != "modality"
        }
    )
    print(
        f"[{time.monotonic() - t0:5.0f}s] model {model}; input profile from {len(prof_seeds)} training phantoms",
        flush=True,
    )

    rng = np.random.default_rng(0)
    rows = []

    def judge(case_id, group, image, truth, pred, conf, agree, full_counts=None):
        case_rows = rows_for(case_id, group, image, pred, table, conf, agree, expected)
        p, t = np.asarray(pred.array), np.asarray(truth.array)
        for r in case_rows:
            idx = int(r["label"])
            d = dice(p, t, idx)
            failed = d is not None and d < FAIL_DICE
            if full_counts is not None and full_counts.get(idx):
                failed = failed or int(np.count_nonzero(t == idx)) < 0.9 * full_counts[idx]
            r.update(dice=d, failed=failed)
        rows.extend(case_rows)

    test_seed = 9000
    for i in range(args.clean):
        ph = phantom(test_seed + i)
        pred, conf, agree = segment(predictor, ph.image)
        judge(ph.case_id, "clean", ph.image, ph.labels, pred, conf, agree)
        if i == 0:  # the same prediction with the kidneys exchanged: a model confusing sides
            from medseg.io.volume import Volume

            a = np.asarray(pred.array).copy()
            k3, k4 = a == 3, a == 4
            a[k3], a[k4] = 4, 3
            judge(ph.case_id + "_swapped", "kidneys_swapped", ph.image, ph.labels, Volume(a, pred.affine), conf, agree)
    print(f"[{time.monotonic() - t0:5.0f}s] {args.clean} clean cases", flush=True)
    seed = test_seed + 100
    for name, fn in DEGRADATIONS.items():
        for _ in range(args.per_degradation):
            ph = phantom(seed)
            seed += 1
            out = fn(ph, rng)
            image, truth = out[0], out[1]
            full = out[2] if len(out) > 2 else None
            pred, conf, agree = segment(predictor, image)
            judge(f"{ph.case_id}_{name}", name, image, truth, pred, conf, agree, full)
    print(f"[{time.monotonic() - t0:5.0f}s] degraded cases", flush=True)
    others = []
    for name, image in other_images(rng).items():
        try:
            pred, conf, agree = segment(predictor, image)
        except Exception as exc:  # noqa: BLE001 (an image the predictor refuses never passes)
            others.append((name, "refused", f"{type(exc).__name__}: {str(exc)[:80]}", image.shape))
            continue
        case_rows = rows_for(name, "other", image, pred, table, conf, agree, expected)
        found = [r for r in case_rows if r["status"] != "absent"] or case_rows
        passed = [r["structure"] for r in found if r["qc"] == "pass"]
        worst = max((r["qc"] for r in case_rows), key=["pass", "review", "fail"].index)
        others.append(
            (
                name,
                "PASS:" + ",".join(passed) if passed else worst,
                "; ".join(dict.fromkeys(r["qc_reasons"] for r in case_rows if r["qc_reasons"]))[:160],
                image.shape,
            )
        )
    print(f"[{time.monotonic() - t0:5.0f}s] other images", flush=True)

    df = pd.DataFrame(rows)
    df = cohort.add_outlier_flags(df)
    df = quality.add_cohort_verdicts(df)
    df["flagged"] = df["qc"] != "pass"
    df["failed"] = df["failed"].astype(bool)
    if args.csv:
        df.to_csv(args.csv, index=False)
    judged = df[df["dice"].notna()]
    fails, goods = judged[judged["failed"]], judged[~judged["failed"]]

    lines = [
        f"bench_qc: {'smoke' if args.smoke else 'quick (smoke test)' if args.quick else 'full'}; model {model.name} "
        f"({'given' if args.model else f'trained {args.minutes:g} min on {len(train_seeds)} phantoms'}); "
        f"failure = Dice < {FAIL_DICE} (or <90% of a cut organ inside the image)",
        f"checkpoint: {trained}; spacing {RECIPE['preprocessing']['spacing'] if not args.model else 'its own'}",
        f"structures judged: {len(judged)} ({len(fails)} failed, {len(goods)} good) in {df['case_id'].nunique()} cases",
        "",
        "Dice and verdicts per group (structures with truth):",
        f"{'group':<16}{'n':>4}{'failed':>8}{'mean Dice':>11}{'pass':>6}{'review':>8}{'fail':>6}",
    ]
    for g, part in judged.groupby("group", sort=False):
        vc = part["qc"].value_counts()
        lines.append(
            f"{g:<16}{len(part):>4}{int(part['failed'].sum()):>8}{part['dice'].mean():>11.3f}"
            f"{vc.get('pass', 0):>6}{vc.get('review', 0):>8}{vc.get('fail', 0):>6}"
        )
    codes = sorted({code(r) for t in judged["qc_reasons"] for r in str(t).split(";") if r.strip()})
    lines += [
        "",
        "Per signal (a structure is flagged by a signal when its qc_reasons name it):",
        f"{'signal':<24}{'failures flagged':>18}{'good flagged':>15}",
    ]
    for c in codes:
        hit = judged["qc_reasons"].map(lambda t, c=c: any(code(r) == c for r in str(t).split(";") if r.strip()))
        lines.append(f"{c:<24}{_share(hit[judged['failed']]):>18}{_share(hit[~judged['failed']]):>15}")
    sens = fails["flagged"].mean() if len(fails) else float("nan")
    fpr = goods["flagged"].mean() if len(goods) else float("nan")
    sens_fail = (fails["qc"] == "fail").mean() if len(fails) else float("nan")
    fpr_fail = (goods["qc"] == "fail").mean() if len(goods) else float("nan")
    lines += [
        f"{'combined (review+fail)':<24}{_share(fails['flagged']):>18}{_share(goods['flagged']):>15}",
        f"{'combined (fail only)':<24}{_share(fails['qc'] == 'fail'):>18}{_share(goods['qc'] == 'fail'):>15}",
    ]
    missed = fails[~fails["flagged"]]
    if len(missed):
        lines += ["", "failures not flagged:"] + [
            f"  {r.case_id} {r.structure}: Dice {r.dice:.3f}" for r in missed.itertuples()
        ]
    noisy = goods[goods["flagged"]]
    if len(noisy):
        lines += ["", "good structures flagged:"] + [
            f"  {r.case_id} {r.structure}: Dice {r.dice:.3f}: {r.qc} {r.qc_reasons}" for r in noisy.itertuples()
        ]
    lines += ["", "Images of other anatomy / modality (no truth; none may pass):"]
    lines += [f"  {n} {shape}: {verdict}  [{why}]" for n, verdict, why, shape in others]
    n_other_pass = sum(v.startswith("PASS") for _, v, _, _ in others)
    met = sens >= TARGET_SENS and fpr <= TARGET_FPR and n_other_pass == 0
    lines += [
        "",
        f"ratio/target: failures flagged {sens:.1%} (target >= {TARGET_SENS:.0%}), good flagged {fpr:.1%} "
        f"(target <= {TARGET_FPR:.0%}), other images passing {n_other_pass} (target 0): "
        + (
            "MET"
            if met
            else f"NOT MET (distance: {max(0.0, TARGET_SENS - sens):.1%} sensitivity, "
            f"{max(0.0, fpr - TARGET_FPR):.1%} false flags, {n_other_pass} images)"
        ),
        f"fail verdicts alone: failures {sens_fail:.1%}, good {fpr_fail:.1%}",
        f"time {time.monotonic() - t0:.0f} s",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not (args.quick or args.smoke) or args.out != ap.get_default("out"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def _share(mask) -> str:
    mask = np.asarray(mask, dtype=bool)
    return f"{int(mask.sum())}/{mask.size} ({mask.mean():.0%})" if mask.size else "-"


if __name__ == "__main__":
    sys.exit(main())
