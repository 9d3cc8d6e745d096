"""Intensity normalisation shared by training and inference.

Presets (``preprocessing.intensity``):

- ``ct_window``: clip HU to ``window`` [low, high] and scale to [0, 1].
- ``ct_clip_zscore``: clip HU to ``clip`` [low, high] (the 0.5/99.5 percentiles
  inside the labelled foreground, from ``medseg plan``), then ``(x - mean) / std``
  with the foreground's mean and std (nnU-Net's CT scheme).
- ``zscore``: per image and channel, ``(x - mean) / std`` over the voxels that
  are not zero (MR).

The array operation is ``normalize``; ``NormalizeIntensityByPresetd`` is the
keyed MONAI wrapper used in training, so both paths compute the same numbers.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

PRESETS = ("ct_window", "ct_clip_zscore", "zscore")


def normalize(x: torch.Tensor, pre: Mapping) -> torch.Tensor:
    """Normalise a channel-first float tensor according to ``pre`` (a preprocessing dict)."""
    kind = pre.get("intensity", "ct_window")
    x = x.float()
    if kind == "ct_window":
        lo, hi = (float(v) for v in pre["window"])
        return (x.clamp(lo, hi) - lo) / (hi - lo)
    if kind == "ct_clip_zscore":
        lo, hi = (float(v) for v in pre["clip"])
        return (x.clamp(lo, hi) - float(pre["mean"])) / max(float(pre["std"]), 1e-6)
    if kind == "zscore":
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            ch = x[c]
            mask = ch != 0
            vals = ch[mask] if mask.any() else ch.flatten()
            mean, std = vals.mean(), vals.std().clamp(min=1e-6)
            out[c] = (ch - mean) / std
        return out
    raise ValueError(f"unknown intensity preset {kind!r}; expected one of {PRESETS}")


def floor_value(pre: Mapping) -> float | None:
    """The normalised value of "at or below the intensity floor" (air on CT); None when there is none."""
    kind = pre.get("intensity", "ct_window")
    if kind == "ct_window":
        return 0.0
    if kind == "ct_clip_zscore":
        return (float(pre["clip"][0]) - float(pre["mean"])) / max(float(pre["std"]), 1e-6)
    return None


class NormalizeIntensityByPresetd(MapTransform):
    """Keyed wrapper of ``normalize`` (MetaTensor metadata is kept)."""

    def __init__(self, keys: KeysCollection, preprocessing: Mapping):
        super().__init__(keys)
        self.pre = dict(preprocessing)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.keys:
            x = d[key]
            out = normalize(torch.as_tensor(x), self.pre)
            if hasattr(x, "copy_meta_from"):
                from monai.data import MetaTensor

                out = MetaTensor(out, affine=x.affine, meta={k: v for k, v in x.meta.items() if k != "affine"})
            d[key] = out
        return d
