"""Exact grid operations: reorientation by axis permutation and flips.

These never interpolate, so they are lossless and invertible; they are what the
predictor uses to bring any input (flipped, permuted, oblique) to the closest
RAS orientation and back.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medseg.errors import GeometryError
from medseg.io.volume import Volume, check_affine

__all__ = ["align_to", "check_affine", "closest_ras_view", "from_closest_ras", "to_closest_ras"]


def to_closest_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute/flip ``array`` so its axes point (as nearly as they can) to R, A, S.

    Returns ``(array_ras, affine_ras, ornt)``; pass ``ornt`` to ``from_closest_ras``
    to restore the original layout. Oblique grids stay oblique: only the axis order
    and directions change, never the sampling.
    """
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return np.ascontiguousarray(ras), new_affine, ornt


def closest_ras_view(array: np.ndarray, affine: np.ndarray):
    """``to_closest_ras`` for a channel-first ``(C, X, Y, Z)`` array without copying it.

    Returns ``(tensor, affine_ras, ornt, reverse)``: ``tensor`` is a torch view
    with the axes permuted into RAS order, and ``reverse[a]`` says that RAS axis
    ``a`` runs backwards through it (the flip is left to whoever reads it, e.g.
    ``resample(..., reverse=reverse)``).
    """
    import warnings

    import torch

    spatial = array.shape[1:]
    ornt = nib.orientations.io_orientation(affine)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, spatial)
    axes = [int(np.flatnonzero(ornt[:, 0] == a)[0]) for a in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays (memory-mapped NIfTI): only read here
        tensor = torch.from_numpy(array)
    view = tensor.permute(0, *[i + 1 for i in axes])
    reverse = tuple(bool(ornt[i, 1] < 0) for i in axes)
    return view, new_affine, ornt, reverse


def from_closest_ras(array_ras: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo ``to_closest_ras`` on an array of the reoriented shape."""
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    back = nib.orientations.apply_orientation(array_ras, nib.orientations.ornt_transform(identity, ornt))
    return np.ascontiguousarray(back)


def align_to(moving: Volume, reference: Volume, *, atol: float = 1e-3) -> Volume:
    """Bring ``moving`` onto ``reference``'s grid when the two differ only by axis order/flips.

    Raises ``GeometryError`` when they are different grids (that needs resampling).
    """
    ornt_m = nib.orientations.io_orientation(moving.affine)
    ornt_r = nib.orientations.io_orientation(reference.affine)
    transform = nib.orientations.ornt_transform(ornt_m, ornt_r)
    array = nib.orientations.apply_orientation(moving.array, transform)
    affine = moving.affine @ nib.orientations.inv_ornt_aff(transform, moving.shape)
    if tuple(array.shape) != reference.shape or not np.allclose(affine, reference.affine, atol=atol):
        raise GeometryError(
            f"grid {moving.shape} cannot be matched to {reference.shape} by reordering axes; "
            "the two volumes sample different points",
            path=moving.source or None,
        )
    return Volume(np.ascontiguousarray(array), reference.affine.copy(), moving.source, dict(moving.meta))
