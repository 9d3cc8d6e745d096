"""A plain MONAI training script (the tutorial recipe) for comparison with ``medseg train``.

LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd -> ScaleIntensityRanged
-> CropForegroundd -> RandCropByPosNegLabeld, MONAI UNet, DiceCELoss, Adam, under a
wall-clock budget; then sliding-window inference + Invertd on the held-out cases.
Used by ``bench_training.py --reference-monai``; same data, same budget, same network size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def train_and_predict(train_manifest: Path, test_images: list[Path], *, minutes: float, spacing=(2.5, 2.5, 2.5),
                      patch=(96, 96, 64), window=(-200.0, 250.0), num_classes: int = 5, seed: int = 0) -> tuple[list[np.ndarray], int]:
    import pandas as pd
    import torch
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import (AsDiscreted, Compose, CropForegroundd, EnsureChannelFirstd, Invertd, LoadImaged,
                                  Orientationd, RandCropByPosNegLabeld, ScaleIntensityRanged, Spacingd, SpatialPadd)
    from monai.utils import set_determinism

    set_determinism(seed)
    df = pd.read_csv(train_manifest)
    files = [{"image": str(train_manifest.parent / r.image), "label": str(train_manifest.parent / r.label)} for r in df.itertuples()]
    lo, hi = window
    pre = [LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
           Orientationd(keys=["image", "label"], axcodes="RAS"),
           Spacingd(keys=["image", "label"], pixdim=spacing, mode=("bilinear", "nearest")),
           ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
           CropForegroundd(keys=["image", "label"], source_key="image", margin=12)]
    rand = [SpatialPadd(keys=["image", "label"], spatial_size=patch),
            RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch, pos=2, neg=1, num_samples=1)]
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
    infer_pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
                         Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
                         ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)])
    post = Compose([Invertd(keys="pred", transform=infer_pre, orig_keys="image", nearest_interp=False), AsDiscreted(keys="pred", argmax=True)])
    outputs = []
    for img in test_images:
        d = infer_pre({"image": str(img)})
        with torch.inference_mode():
            d["pred"] = sliding_window_inference(d["image"][None], patch, 4, model, overlap=0.5, mode="gaussian")[0]
        d["pred"].applied_operations = d["image"].applied_operations
        outputs.append(post(d)["pred"][0].numpy().astype(np.uint8))
    return outputs, epochs
