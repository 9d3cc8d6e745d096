"""Bring an image onto a label map's grid for intensity statistics and QC pictures.

The label map's grid is the reference (volumes are never computed on a
resampled label map). The image is

1. used as is when both grids agree (shape and affine within ``atol`` mm): ``same_grid``;
2. permuted/flipped losslessly when the grids hold the same points in another
   axis order (a DICOM series against its NIfTI label map): ``reoriented``;
3. otherwise sampled at the label voxels' centres with trilinear interpolation
   (``order=1``; ``order=0`` gives nearest neighbour): ``linear`` / ``nearest``.
   Label voxels whose centre lies outside the image's outermost voxel centres
   get NaN and are left out of the statistics (``intensity_coverage`` < 1).
"""

from __future__ import annotations

import numpy as np

from medseg.errors import GeometryError
from medseg.io.geometry import align_to
from medseg.io.volume import Volume, same_grid

METHODS = {0: "nearest", 1: "linear"}


def image_on_label_grid(image: Volume, labels: Volume, *, order: int = 1, atol: float = 1e-3) -> tuple[np.ndarray, str]:
    """``(array on labels' grid as float32, method)``; see the module docstring for the methods."""
    if order not in METHODS:
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), not {order}")
    if same_grid(image, labels, atol=atol):
        return np.asarray(image.array, dtype=np.float32), "same_grid"
    try:
        return np.asarray(align_to(image, labels, atol=atol).array, dtype=np.float32), "reoriented"
    except GeometryError:
        pass
    return resample_to_grid(image, labels.shape, labels.affine, order=order), METHODS[order]


def resample_to_grid(
    image: Volume, shape: tuple[int, int, int], affine: np.ndarray, *, order: int = 1, chunk_voxels: int = 4_000_000
) -> np.ndarray:
    """Sample ``image`` at the voxel centres of the grid ``(shape, affine)``; NaN outside the image."""
    from scipy.ndimage import map_coordinates

    src = np.asarray(image.array, dtype=np.float32)
    to_src = np.linalg.inv(image.affine) @ np.asarray(affine, dtype=np.float64)
    out = np.empty(shape, dtype=np.float32)
    nx, ny, nz = shape
    step = max(1, chunk_voxels // max(1, nx * ny))
    ii, jj = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64), indexing="ij")
    eps = 1e-3  # points on the outermost voxel centres (up to rounding) are inside
    upper = np.asarray(src.shape, dtype=np.float64)[:, None, None, None] - 1
    for k0 in range(0, nz, step):
        kk = np.arange(k0, min(nz, k0 + step), dtype=np.float64)
        ijk = np.stack(
            [
                np.broadcast_to(ii[..., None], (nx, ny, kk.size)),
                np.broadcast_to(jj[..., None], (nx, ny, kk.size)),
                np.broadcast_to(kk[None, None, :], (nx, ny, kk.size)),
            ]
        )
        coords = np.tensordot(to_src[:3, :3], ijk, axes=1) + to_src[:3, 3][:, None, None, None]
        inside = np.all((coords >= -eps) & (coords <= upper + eps), axis=0)
        coords = np.clip(coords, 0, upper)
        vals = map_coordinates(src, coords.reshape(3, -1), order=order, mode="nearest").reshape(inside.shape)
        vals[~inside] = np.nan
        out[:, :, k0 : k0 + kk.size] = vals
    return out
