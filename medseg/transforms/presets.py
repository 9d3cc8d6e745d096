"""MONAI Compose pipelines for training and validation, built from a PreprocessingConfig."""

from __future__ import annotations

from medseg.config import PreprocessingConfig, TrainingConfig


def window_to_unit(cfg: PreprocessingConfig):
    from monai.transforms import ScaleIntensityRanged

    lo, hi = (float(v) for v in cfg.window)
    return ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)


def deterministic_transforms(cfg: PreprocessingConfig):
    """Load -> channel first -> RAS -> target spacing -> CT window -> crop to the body.

    These results are cached (``CacheDataset``), so they run once per case.
    """
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
    )

    from medseg.transforms.spatial import ResampleToSpacingd

    lo, hi = (float(v) for v in cfg.window)
    threshold = (float(cfg.foreground_hu) - lo) / (hi - lo)  # the body, after windowing
    return Compose(
        [
            LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            ResampleToSpacingd(keys=["image", "label"], spacing=cfg.spacing, modes=["trilinear", "nearest"]),
            window_to_unit(cfg),
            CropForegroundd(keys=["image", "label"], source_key="image", select_fn=lambda x: x > max(threshold, 1e-3), margin=4, allow_smaller=True),
            EnsureTyped(keys=["image", "label"], track_meta=False),
        ]
    )


def random_transforms(train: TrainingConfig, num_classes: int):
    """Patch sampling (positive/negative) and light intensity augmentation."""
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    pos = train.pos_fraction
    steps = [
        SpatialPadd(keys=["image", "label"], spatial_size=train.patch_size),
        RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=train.patch_size,
            pos=pos,
            neg=1.0 - pos,
            num_samples=train.samples_per_image,
            image_key="image",
            image_threshold=0.0,
        ),
    ]
    if train.intensity_augmentation:
        # No flips: left and right organs are different labels.
        steps += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        ]
    return Compose(steps)
