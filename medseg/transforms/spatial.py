"""Resampling to a target spacing with ``torch.nn.functional.interpolate``.

The grid convention is "voxel edges aligned" (``align_corners=False``): an axis
of ``n`` voxels of size ``s`` becomes ``m = round(n * s / t)`` voxels of size
``n * s / m`` covering the same extent, so resampling forward and back restores
the original grid exactly. Training and inference share this function, so the
network sees the same sampling in both.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(x: torch.Tensor, size: Sequence[int], *, mode: str = "trilinear") -> torch.Tensor:
    """Resample a channel-first tensor ``(C, *spatial)`` to ``size``.

    ``mode``: "trilinear"/"bilinear" for images and scores, "nearest" for labels
    (``nearest-exact``, which is symmetric with the edge-aligned grid).
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[1:]) == size:
        return x
    nd = len(size)
    if mode == "nearest":
        out = F.interpolate(x[None].float(), size=size, mode="nearest-exact")[0]
        return out.to(x.dtype)
    if mode in ("linear", "bilinear", "trilinear"):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
    return F.interpolate(x[None].float(), size=size, mode=mode, align_corners=False)[0]


def resampled_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Affine of the grid ``resample`` produces (edge-aligned, same extent)."""
    nd = len(in_shape)
    scale = np.array([n / m for n, m in zip(in_shape, out_shape)], dtype=np.float64)
    index_map = np.eye(nd + 1)
    index_map[:nd, :nd] = np.diag(scale)
    index_map[:nd, nd] = 0.5 * scale - 0.5
    full = np.eye(4)
    full[:nd, :nd] = index_map[:nd, :nd]
    full[:nd, 3] = index_map[:nd, nd]
    return np.asarray(affine, dtype=np.float64) @ full


class ResampleToSpacingd(MapTransform):
    """Keyed wrapper: resample MetaTensors to ``spacing`` (mm) and update their affine."""

    def __init__(self, keys: KeysCollection, spacing: Sequence[float], modes: Sequence[str] | str = "trilinear"):
        super().__init__(keys)
        self.spacing = [float(s) for s in spacing]
        self.modes = [modes] * len(self.keys) if isinstance(modes, str) else list(modes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        ref_shape = None
        for key, mode in zip(self.keys, self.modes):
            x = d[key]
            affine = np.asarray(x.affine, dtype=np.float64) if isinstance(x, MetaTensor) else np.eye(4)
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            in_shape = tuple(x.shape[1:])
            # All keys land on the first key's grid, so image and label stay aligned.
            size = ref_shape or target_shape(in_shape, spacing, self.spacing)
            ref_shape = size
            out = resample(torch.as_tensor(x), size, mode=mode)
            if isinstance(x, MetaTensor):
                out = MetaTensor(out, affine=torch.as_tensor(resampled_affine(affine, in_shape, size)), meta={k: v for k, v in x.meta.items() if k != "affine"})
            d[key] = out
        return d
