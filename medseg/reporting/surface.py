"""Surface distances between two binary masks on one grid, in millimetres.

Definitions (those of MONAI's ``compute_hausdorff_distance``,
``compute_average_surface_distance`` and ``compute_surface_dice``):

- The surface of a mask is its voxels with at least one 6-neighbour outside the
  mask (voxels on the image border count as surface).
- ``d(a->b)``: for every surface voxel of ``a``, the Euclidean distance in mm
  (voxel centres, the grid's own spacing) to the nearest surface voxel of ``b``.
- HD95 = max(95th percentile of d(a->b), 95th percentile of d(b->a)).
- ASSD (average symmetric surface distance) = mean of d(a->b) and d(b->a) pooled.
- NSD at tolerance t (normalised surface Dice) = fraction of the pooled surface
  voxels of both masks whose distance to the other surface is <= t mm
  (voxel-count weighting, not surfel areas).

Distances use the lengths of the affine's columns as spacing, which is exact
for any orthogonal grid, rotated (oblique) or not; a sheared grid (rare: gantry
tilt) would need its own metric and is measured as if it were orthogonal.
Both surfaces lie inside the union's bounding box, so distance transforms run
on that crop (padded by one voxel) and give the same distances as on the full grid.
"""

from __future__ import annotations

import numpy as np

_CONNECTIVITY_6 = np.array(
    [[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool
)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, structure=_CONNECTIVITY_6, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """``(d(a->b), d(b->a))`` in mm for two non-empty boolean masks of one shape."""
    from scipy.ndimage import distance_transform_edt

    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    union = a | b
    lo = [int(np.nonzero(union.any(axis=tuple(x for x in range(3) if x != ax)))[0][0]) for ax in range(3)]
    hi = [int(np.nonzero(union.any(axis=tuple(x for x in range(3) if x != ax)))[0][-1]) + 1 for ax in range(3)]
    crop = tuple(slice(l_, h_) for l_, h_ in zip(lo, hi, strict=False))
    # Every neighbour outside the union's bounding box is background, so the surfaces
    # found on the crop are those of the full grid; the padding keeps the EDT exact.
    sa = np.pad(_surface(a[crop]), 1)
    sb = np.pad(_surface(b[crop]), 1)
    spacing = tuple(float(s) for s in spacing)
    dist_to_b = distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = distance_transform_edt(~sa, sampling=spacing)
    return dist_to_b[sa], dist_to_a[sb]


def hd95(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def assd(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
    return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def nsd(d_ab: np.ndarray, d_ba: np.ndarray, tolerance_mm: float) -> float:
    return float(
        (np.count_nonzero(d_ab <= tolerance_mm) + np.count_nonzero(d_ba <= tolerance_mm)) / (d_ab.size + d_ba.size)
    )
