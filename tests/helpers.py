"""Plain helpers the tests import (fixtures live in conftest.py, which is never imported).

The oracle network reads the label straight from the intensity of a phantom
whose HU encode the label (label * 100 HU, no noise). Any error in orientation,
resampling or the inverse mapping shows up as a lost Dice, and left/right
swaps show up as kidney_right/kidney_left exchanged.
"""

from __future__ import annotations

import numpy as np


def register_oracle():
    """Register ``test_intensity_oracle`` (label = round(intensity / 100 HU)) unless it is there."""
    import torch

    from medseg.models import MODELS

    if "test_intensity_oracle" in MODELS:
        return

    class IntensityOracle(torch.nn.Module):
        def __init__(self, out_channels: int):
            super().__init__()
            self.register_buffer("centres", torch.linspace(0, 1, out_channels))

        def forward(self, x):
            c = self.centres.view(1, -1, *([1] * (x.ndim - 2)))
            return -100.0 * (x - c) ** 2

    @MODELS.register("test_intensity_oracle", description="test only: label = round(intensity)", dims=(2, 3), divisor=1)
    def _oracle(*, spatial_dims: int, in_channels: int, out_channels: int):
        return IntensityOracle(out_channels)


def label_coded(case):
    """A copy of a phantom whose image is label * 100 HU (the oracle's input)."""
    from medseg.io.volume import Volume

    img = case.labels.array.astype(np.float32) * 100.0
    return Volume(img, case.image.affine.copy(), case.case_id)


# --- small data sets for training tests: tiny volumes, a tiny network, a few epochs ---

TINY_MODEL = {
    "name": "unet",
    "spatial_dims": 3,
    "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
}


def tiny_config(**training) -> dict:
    return {
        "labels": "abdomen_phantom",
        "model": TINY_MODEL,
        "preprocessing": {"spacing": [6.0, 6.0, 6.0], "crop_margin": 2},
        "training": {
            "epochs": 3,
            "iterations_per_epoch": 2,
            "val_every": 1,
            "patch_size": [32, 32, 16],
            "batch_size": 2,
            "samples_per_image": 1,
            "amp": "off",
            **training,
        },
        "inference": {"roi_size": [32, 32, 16], "sw_batch_size": 2},
    }
