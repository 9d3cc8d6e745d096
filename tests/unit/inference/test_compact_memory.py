"""The slab-wise paths that bound ``medseg predict``'s memory give the whole-volume answer bit for bit (issue 37).

``resample`` makes its output slab by slab along its first axis (the only full-resolution array is the input, kept
in its stored type); ``labels_from_scores`` fills the label map slab by slab. Each is compared with the whole-volume
computation written out here (the operations of medseg 0.2, axis by axis), on int16 and float inputs, flipped and
permuted views, shrinking and growing axes, and slabs much smaller than the volume.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.inference.labels_from_scores import labels_from_scores
from medseg.transforms import spatial
from medseg.transforms.spatial import resample, resample_axis


def _whole_volume(x: torch.Tensor, size, steps, reverse) -> torch.Tensor:
    """Axis by axis on the whole volume, in ``resample``'s order (shrinking axes first, outermost in memory first)."""
    shrink = [a for a in range(3) if size[a] <= x.shape[a + 1]]
    grow = [a for a in range(3) if size[a] > x.shape[a + 1]]
    order = sorted(shrink, key=lambda a: -abs(x.stride(a + 1))) + sorted(grow, key=lambda a: size[a] / x.shape[a + 1])
    out = x
    for a in order:
        out = resample_axis(out, a + 1, size[a], steps[a], reverse=reverse[a])
    return out.float()


@pytest.mark.parametrize("dtype", [torch.int16, torch.float32])
@pytest.mark.parametrize(
    "shape, size, reverse, perm",
    [
        ((1, 40, 37, 60), (13, 20, 31), (False, True, False), None),  # CT-like: every axis shrinks
        ((2, 30, 30, 25), (50, 12, 40), (True, False, True), (0, 3, 1, 2)),  # two channels, a permuted view
        ((1, 64, 64, 90), (20, 20, 30), (True, True, False), (0, 2, 1, 3)),
    ],
)
def test_slab_resampling_equals_whole_volume_resampling(monkeypatch, dtype, shape, size, reverse, perm):
    monkeypatch.setattr(spatial, "SLAB_VOXELS", 3000)  # many slabs, a partial last one
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 500).to(dtype)
    if perm:
        x = x.permute(*perm)
    steps = [0.97 * (x.shape[a + 1] - 1) / (size[a] - 1) for a in range(3)]
    got = resample(x, size, steps, reverse=reverse)
    assert got.dtype == torch.float32 and tuple(got.shape) == (x.shape[0], *size)
    assert torch.equal(got, _whole_volume(x, size, steps, reverse))


def test_slab_resampling_keeps_known_values():
    """A linear ramp resamples to the ramp at the new positions (an answer known without any implementation)."""
    x = torch.arange(50, dtype=torch.int16).view(1, 50, 1, 1).expand(1, 50, 3, 2)
    got = resample(x, (25, 3, 2), (2.0, 1.0, 1.0))
    assert torch.equal(got[0, :, 1, 1], torch.arange(0, 50, 2, dtype=torch.float32))


@pytest.mark.parametrize("classes, out_shape", [(5, (31, 26, 20)), (300, (12, 10, 9))])
def test_slab_labels_equal_one_slab(classes, out_shape):
    g = torch.Generator().manual_seed(1)
    scores = torch.nn.functional.avg_pool3d(torch.randn((1, classes, 9, 8, 7), generator=g), 3, 1, 1)[0] * 5
    steps = [(n - 1) / (o - 1) for n, o in zip(scores.shape[1:], out_shape, strict=True)]
    whole = labels_from_scores(scores, out_shape, steps, chunk=50, with_confidence=True, slab_voxels=10**9)
    slabs = labels_from_scores(scores, out_shape, steps, chunk=50, with_confidence=True, slab_voxels=200)
    assert whole[0].dtype == slabs[0].dtype == (np.uint8 if classes < 255 else np.uint16)
    assert len(np.unique(whole[0])) > 1  # boundaries to interpolate
    for a, b in zip(whole, slabs, strict=True):
        assert np.array_equal(a, b)
