"""MONAI Compose pipelines for training and validation, built from the config.

Deterministic part (cached by ``CacheDataset``, runs once per case):
load -> channel first (several image columns are stacked as channels) -> RAS
-> target spacing -> crop to the body (on raw intensities) -> intensity preset.
Random part (every time a case is drawn): pad, positive/negative patch
sampling, small rotations and scaling, optional flips, intensity augmentation.
The spacing and intensity steps are the very functions inference uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from medseg.config import PreprocessingConfig, TrainingConfig
from medseg.transforms.intensity import NormalizeIntensityByPresetd, RefuseNonFinited, check_preprocessing, get_scheme
from medseg.transforms.reader import VolumeReader
from medseg.transforms.spatial import ResampleToSpacingd


def _foreground_select(cfg: PreprocessingConfig):
    """Which raw voxels are 'body' for the training crop (the intensity scheme says: above foreground_hu on CT,
    non-zero on MR)."""
    return get_scheme(cfg.intensity).foreground(dataclasses.asdict(cfg))


def deterministic_transforms(cfg: PreprocessingConfig, image_keys: list[str] | None = None):
    check_preprocessing(cfg, "config")  # (medseg train and plan checked it before any work, naming the config file)
    image_keys = image_keys or ["image"]
    steps = [
        LoadImaged(
            keys=[*image_keys, "label"], reader=VolumeReader(), image_only=True
        ),  # NIfTI, NRRD, MHA as inference reads them
        EnsureChannelFirstd(keys=[*image_keys, "label"]),
        RefuseNonFinited(keys=image_keys),
    ]
    if len(image_keys) > 1:
        steps += [
            ConcatItemsd(keys=image_keys, name="image"),
            DeleteItemsd(keys=[k for k in image_keys if k != "image"]),
        ]
    steps += [
        Orientationd(keys=["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ResampleToSpacingd(keys=["image", "label"], spacing=cfg.spacing, modes=["trilinear", "nearest"]),
        CropForegroundd(
            keys=["image", "label"],
            source_key="image",
            select_fn=_foreground_select(cfg),
            margin=cfg.crop_margin,
            allow_smaller=True,
        ),
        NormalizeIntensityByPresetd(keys="image", preprocessing=vars(cfg)),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]
    return Compose(steps)


def random_transforms(train: TrainingConfig, num_classes: int, *, pad_value: float = 0.0):
    """Patch sampling (positive/negative) and augmentation, per ``train.augmentation``."""
    aug = train.augmentation
    pos = train.pos_fraction
    steps = [
        SpatialPadd(keys="image", spatial_size=train.patch_size, mode="constant", value=pad_value),
        SpatialPadd(keys="label", spatial_size=train.patch_size, mode="constant", value=0),
        RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=train.patch_size,
            pos=pos,
            neg=1.0 - pos,
            num_samples=train.samples_per_image,
            image_key="image",
            image_threshold=pad_value + 1e-3,
        ),
    ]
    if aug.affine_prob > 0:
        rot = float(np.deg2rad(aug.rotate_deg))
        steps.append(
            RandAffined(
                keys=["image", "label"],
                prob=aug.affine_prob,
                rotate_range=(rot, rot, rot),
                scale_range=(aug.scale,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode=("border", "zeros"),
            )
        )
    for axis in aug.flip_axes:  # only for label tables without left/right structures
        steps.append(RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=int(axis)))
    if aug.intensity:
        steps += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.15, std=0.03),
            RandAdjustContrastd(keys="image", prob=0.15, gamma=(0.8, 1.25)),
        ]
    return Compose(steps)
