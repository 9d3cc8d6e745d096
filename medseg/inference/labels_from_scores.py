"""Class probabilities on the network's grid -> integer labels on the input's grid, in slabs.

The probabilities live on the coarse, resampled grid (small). Mapping them back
to the input's full resolution at once would hold ``classes x voxels`` floats
(GBs for a large CT), so the output is built ``slab_size`` slices at a time:
each slab is interpolated along the last axis first, then in-plane, then
reduced to labels. Linear interpolation is separable, so the result is the same
as trilinear resampling of the whole volume (``resample``'s edge-aligned
grid), but the peak memory is ``classes x X x Y x slab_size`` floats.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _linear_weights(n_in: int, n_out: int, start: int, stop: int):
    """Source indices and weights of output positions ``start:stop`` (PyTorch's align_corners=False rule)."""
    scale = n_in / n_out
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = (src - i0.double()).clamp(0.0, 1.0)
    return i0, i1, w1.float()


def labels_from_scores(scores: torch.Tensor, out_shape, *, slab_size: int = 16, with_confidence: bool = False):
    """``scores``: ``(C, x, y, z)`` probabilities; returns ``uint8/uint16 (X, Y, Z)`` labels.

    With ``with_confidence`` also returns per-label sums of the winning
    probability and voxel counts (to report mean confidence per structure).
    """
    C, _, _, zin = scores.shape
    X, Y, Z = (int(s) for s in out_shape)
    dtype = torch.uint8 if C <= 256 else torch.int16
    labels = torch.empty((X, Y, Z), dtype=dtype)
    conf_sum = torch.zeros(C, dtype=torch.float64)
    counts = torch.zeros(C, dtype=torch.int64)
    in_plane_same = tuple(scores.shape[1:3]) == (X, Y)
    for z0 in range(0, Z, slab_size):
        z1 = min(Z, z0 + slab_size)
        if zin == Z:
            slab = scores[..., z0:z1]
        else:
            i0, i1, w1 = _linear_weights(zin, Z, z0, z1)
            slab = scores[..., i0] * (1.0 - w1) + scores[..., i1] * w1  # (C, x, y, nz)
        if not in_plane_same:
            slab = F.interpolate(slab.permute(3, 0, 1, 2), size=(X, Y), mode="bilinear", align_corners=False)  # (nz, C, X, Y)
            slab = slab.permute(1, 2, 3, 0)
        best, idx = slab.max(dim=0)
        labels[..., z0:z1] = idx.to(dtype)
        if with_confidence:
            conf_sum += torch.bincount(idx.flatten(), weights=best.flatten().double(), minlength=C)[:C]
            counts += torch.bincount(idx.flatten(), minlength=C)[:C]
    out = labels.numpy()
    if out.dtype == np.int16:
        out = out.astype(np.uint16)
    if with_confidence:
        return out, conf_sum.numpy(), counts.numpy()
    return out
