"""A plain MONAI training script (the tutorial recipe) for comparison with ``medseg train``.

LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd -> ScaleIntensityRanged
-> CropForegroundd -> RandCropByPosNegLabeld, MONAI UNet, DiceCELoss, Adam, under a
wall-clock budget; then sliding-window inference + Invertd on the held-out cases.
Used by ``bench_training.py --reference-monai``; same data, same budget, same network size.

    .venv/bin/python benchmarks/monai_reference_training.py --smoke   # both recipes on three 4 mm phantoms,
                                                                      # seconds each
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def train_and_predict(
    train_manifest: Path,
    test_images: list[Path],
    *,
    minutes: float,
    spacing=(2.5, 2.5, 2.5),
    patch=(96, 96, 64),
    window=(-200.0, 250.0),
    num_classes: int = 5,
    seed: int = 0,
) -> tuple[list[np.ndarray], int]:
    import pandas as pd
    import torch
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import (
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )
    from monai.utils import set_determinism

    set_determinism(seed)
    df = pd.read_csv(train_manifest)
    files = [
        {"image": str(train_manifest.parent / r.image), "label": str(train_manifest.parent / r.label)}
        for r in df.itertuples()
    ]
    lo, hi = window
    pre = [
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        Spacingd(keys=["image", "label"], pixdim=spacing, mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=["image", "label"], source_key="image", margin=12),
    ]
    rand = [
        SpatialPadd(keys=["image", "label"], spatial_size=patch),
        RandCropByPosNegLabeld(
            keys=["image", "label"], label_key="label", spatial_size=patch, pos=2, neg=1, num_samples=1
        ),
    ]
    ds = CacheDataset(files, Compose(pre + rand), progress=False)
    loader = DataLoader(ds, batch_size=1, shuffle=True, collate_fn=list_data_collate)
    model = UNet(3, 1, num_classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, norm="instance")
    loss_fn, opt = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(model.parameters(), 3e-3)
    t0, epochs = time.monotonic(), 0
    while time.monotonic() - t0 < minutes * 60:
        model.train()
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
        epochs += 1
    model.eval()
    infer_pre = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    post = Compose(
        [
            Invertd(keys="pred", transform=infer_pre, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", argmax=True),
        ]
    )
    outputs = []
    for img in test_images:
        d = infer_pre({"image": str(img)})
        with torch.inference_mode():
            d["pred"] = sliding_window_inference(d["image"][None], patch, 4, model, overlap=0.5, mode="gaussian")[0]
        d["pred"].applied_operations = d["image"].applied_operations
        outputs.append(post(d)["pred"][0].numpy().astype(np.uint8))
    return outputs, epochs


def train_validate_predict(
    train_files: list[dict],
    val_files: list[dict],
    test_images: list[Path],
    *,
    minutes: float,
    num_classes: int,
    spacing=(2.0, 2.0, 2.0),
    patch=(64, 64, 64),
    channels=(16, 32, 64, 128, 256),
    res_units: int = 2,
    lr: float = 1e-3,
    batch_size: int = 2,
    val_every: float = 0.1,
    seed: int = 0,
) -> tuple[list[np.ndarray], dict]:
    """The plain MONAI recipe of issue 12, for MR: z-score on the head, random patches, flips, the best checkpoint on
    validation.

    LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd -> NormalizeIntensityd(nonzero) ->
    RandSpatialCropd (uniform random ``patch`` crops) -> RandFlipd on each axis; MONAI UNet ``channels`` with
    ``res_units`` residual units and instance norm, DiceCELoss, Adam at a constant ``lr``. Validation (sliding
    windows on the whole validation case) about every ``val_every`` of the budget and at its end, which the
    final validation is planned into; the best state is kept. Returns the test label maps (on each input's grid) and
    ``{"iterations", "seconds", "best_val_dice", "validations"}``.
    """
    import copy

    import torch
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.nets import UNet
    from monai.networks.utils import one_hot
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandFlipd,
        RandSpatialCropd,
        Spacingd,
        SpatialPadd,
    )
    from monai.utils import set_determinism

    t0 = time.monotonic()
    budget = minutes * 60
    set_determinism(seed)
    keys = ["image", "label"]
    pre = [
        LoadImaged(keys=keys),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS"),
        Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest")),
        NormalizeIntensityd(keys="image", nonzero=True),
    ]
    rand = [
        SpatialPadd(keys=keys, spatial_size=patch),
        RandSpatialCropd(keys=keys, roi_size=patch, random_size=False),
        *[RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)],
    ]
    ds = CacheDataset(train_files, Compose(pre + rand), progress=False)
    val_ds = CacheDataset(val_files, Compose(pre), progress=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=list_data_collate)
    model = UNet(
        3,
        1,
        num_classes,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
        norm="instance",
    )
    loss_fn, opt = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(model.parameters(), lr)
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)

    def validate() -> float:
        model.eval()
        scores = []
        with torch.inference_mode():
            for item in val_ds:
                logits = sliding_window_inference(item["image"][None], patch, 4, model, overlap=0.25, mode="gaussian")
                metric.reset()
                metric(
                    one_hot(logits.argmax(1, keepdim=True), num_classes),
                    one_hot(item["label"][None].long(), num_classes),
                )
                scores.append(float(metric.aggregate().nanmean()))
        model.train()
        return float(np.mean(scores))

    iterations, best, best_state, val_s, step_s, validations = 0, -1.0, None, 1.0, 0.0, 0
    next_val = val_every * budget
    done = False
    while not done:
        for batch in loader:
            elapsed = time.monotonic() - t0
            if elapsed + 1.25 * val_s + step_s > budget:
                done = True
                break
            t_step = time.monotonic()
            opt.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            iterations += 1
            step_s = time.monotonic() - t_step
            if time.monotonic() - t0 >= next_val:
                t_val = time.monotonic()
                score = validate()
                validations += 1
                val_s = time.monotonic() - t_val
                next_val += val_every * budget
                if score > best:
                    best, best_state = score, copy.deepcopy(model.state_dict())
    t_val = time.monotonic()
    score = validate()
    validations += 1
    if score > best:
        best, best_state = score, copy.deepcopy(model.state_dict())
    seconds = time.monotonic() - t0
    model.load_state_dict(best_state)
    model.eval()
    infer_pre = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            NormalizeIntensityd(keys="image", nonzero=True),
        ]
    )
    post = Compose(
        [
            Invertd(keys="pred", transform=infer_pre, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", argmax=True),
        ]
    )
    outputs = []
    for img in test_images:
        d = infer_pre({"image": str(img)})
        with torch.inference_mode():
            d["pred"] = sliding_window_inference(d["image"][None], patch, 4, model, overlap=0.25, mode="gaussian")[0]
        d["pred"].applied_operations = d["image"].applied_operations
        outputs.append(post(d)["pred"][0].numpy().astype(np.uint8))
    return outputs, {"iterations": iterations, "seconds": seconds, "best_val_dice": best, "validations": validations}


def main(argv=None) -> int:
    """``--smoke``: both recipes on tiny inputs (2 training phantoms and 1 test phantom at 4 mm, 32^3 patches, a budget
    of about two seconds), with the test Dice of each against the phantom's truth: a test that the recipes run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--smoke", action="store_true", help="run both recipes on tiny inputs (the module is otherwise a library)"
    )
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if not args.smoke:
        ap.error(
            "this module is the reference recipes of bench_training.py (--reference-monai, --real); run it with "
            "--smoke to test them"
        )
    sys.path.insert(0, str(Path(__file__).parent))
    import pandas as pd
    from _smoke import SPACING, coarse_cohort

    from medseg.io.readers import read_volume
    from medseg.reporting.metrics import dice

    with tempfile.TemporaryDirectory(prefix="monai_reference_") as tmp:
        work = Path(args.work or tmp)
        train_manifest = coarse_cohort(work / "train", 2, seed=3000)
        test_manifest = coarse_cohort(work / "test", 1, seed=8000, split="test")
        test = pd.read_csv(test_manifest)
        images = [test_manifest.parent / p for p in test["image"]]
        truth = [read_volume(test_manifest.parent / p).array for p in test["label"]]
        files = [
            {"image": str(train_manifest.parent / r.image), "label": str(train_manifest.parent / r.label)}
            for r in pd.read_csv(train_manifest).itertuples()
        ]
        rows = []
        t0 = time.monotonic()
        outs, epochs = train_and_predict(train_manifest, images, minutes=0.02, spacing=SPACING, patch=(32, 32, 32))
        rows.append(("train_and_predict (CT)", f"{epochs} epochs", time.monotonic() - t0, outs))
        t0 = time.monotonic()
        outs, info = train_validate_predict(
            files[:1],
            files[1:],
            images,
            minutes=0.03,
            num_classes=5,
            spacing=SPACING,
            patch=(32, 32, 32),
            channels=(8, 16),
            res_units=1,
            val_every=0.5,
        )
        rows.append(("train_validate_predict", f"{info['iterations']} iterations", time.monotonic() - t0, outs))
    print(f"{'recipe':<26}{'trained':>15}{'seconds':>9}{'test Dice':>11}")
    for name, trained, seconds, outs in rows:
        mean = float(
            np.nanmean([[dice(o == k, t == k) for k in range(1, 5)] for o, t in zip(outs, truth, strict=False)])
        )
        print(f"{name:<26}{trained:>15}{seconds:>9.1f}{mean:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
