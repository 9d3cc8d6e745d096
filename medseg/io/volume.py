"""The volume every stage passes along: voxels plus the grid they live on.

Convention (NIfTI's, as nibabel uses it): ``array[i, j, k]`` is centred at the
world point ``affine @ [i, j, k, 1]`` in millimetres, in the RAS+ patient frame
(+x towards the patient's right, +y anterior, +z superior). DICOM uses LPS+;
readers convert with ``LPS_TO_RAS`` so everything downstream sees RAS+.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from medseg.errors import GeometryError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Smallest voxel edge (mm) accepted as a measurement rather than a broken header (1 nm).
MIN_VOXEL_MM = 1e-6
#: An affine whose axes are this close to parallel (|det| / product of axis lengths) is singular.
MIN_AXIS_INDEPENDENCE = 1e-6


def check_affine(affine: np.ndarray, *, path: object | None = None) -> None:
    """Refuse a voxel-to-world affine that cannot place voxels in the patient: non-finite
    entries, a zero-length axis (zero voxel size) or axes that are parallel (singular).

    Every volume passes here (``Volume`` calls it), so no grid with an invented or
    degenerate geometry is ever measured in mm or mL.
    """
    a = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise GeometryError(
            "the image's affine holds NaN or infinite numbers, so its voxels have no position or size; "
            "fix the header's geometry (NIfTI qform/sform, pixdim) or re-export the image",
            path=path,
        )
    m = a[:3, :3]
    sizes = np.linalg.norm(m, axis=0)
    if np.any(sizes < MIN_VOXEL_MM):
        raise GeometryError(
            f"voxel size {tuple(float(f'{s:.4g}') for s in sizes)} mm: an axis has zero length, so volumes "
            "cannot be measured; fix the header's voxel size (NIfTI pixdim/qform/sform) or re-export the image",
            path=path,
        )
    if abs(float(np.linalg.det(m))) <= MIN_AXIS_INDEPENDENCE * float(np.prod(sizes)):
        raise GeometryError(
            "the image's affine is singular (two voxel axes point the same way), so voxels have no "
            "well-defined position or volume; fix the header's orientation (qform/sform) or re-export the image",
            path=path,
        )


def count_nonfinite(array: np.ndarray, *, slab_voxels: int = 1 << 24) -> int:
    """Number of NaN/Inf voxels, counted slab by slab (temporaries stay small for a large CT).

    Integer arrays are finite by construction and cost nothing.
    """
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.inexact) or a.size == 0:
        return 0
    if a.ndim == 0:
        return int(not np.isfinite(a))
    step = max(1, slab_voxels // max(1, a.size // a.shape[-1]))
    return int(sum(int(np.count_nonzero(~np.isfinite(a[..., k : k + step]))) for k in range(0, a.shape[-1], step)))


#: Above this label value ``label_boxes`` compacts the values first: ``scipy.ndimage.find_objects`` keeps
#: a box (48 bytes) per value from 1 to the largest, i.e. 100 GB for one voxel of 2**31 - 1.
_DENSE_LABELS = 1 << 16


def label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """``{value: bounding box}`` of every value > 0 present in integer array ``labels``.

    Costs memory in proportion to the array and the number of values present, never to the largest value:
    a map holding 2**31 - 1 is first renumbered 1..n over the values it holds (``np.unique``).
    """
    from scipy import ndimage

    a = np.asarray(labels)
    if a.size == 0:
        return {}
    top = int(a.max())
    if top <= 0:
        return {}
    if top <= _DENSE_LABELS:
        return {i + 1: box for i, box in enumerate(ndimage.find_objects(a)) if box is not None}
    values = np.unique(a)
    values = values[values > 0]
    dense = np.searchsorted(values, a).astype(np.int32)  # the k-th present value -> k - 1
    dense += 1
    dense[a <= 0] = 0
    return {int(values[i]): box for i, box in enumerate(ndimage.find_objects(dense)) if box is not None}


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise GeometryError(
                f"expected a 3D volume, found {self.array.ndim} dimensions (shape {self.array.shape}); "
                "split 4D series into 3D volumes first",
                path=self.source or None,
            )
        if self.affine.shape != (4, 4):
            raise GeometryError(f"affine must be 4x4, found {self.affine.shape}", path=self.source or None)
        check_affine(self.affine, path=self.source or None)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (lengths of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel: |det| of the affine's 3x3 part (exact also for oblique grids)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def with_array(self, array: np.ndarray, **meta) -> Volume:
        """A volume on the same grid holding other voxels (e.g. the label map)."""
        if tuple(array.shape) != self.shape:
            raise GeometryError(f"array shape {tuple(array.shape)} does not match the grid {self.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})


def same_grid(a: Volume, b: Volume, *, atol: float = 1e-3) -> bool:
    """True when both volumes have the same shape and (to ``atol`` mm) the same affine."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=atol))


def require_same_grid(found: Volume, expected: Volume, *, what: str = "label map", atol: float = 1e-3) -> None:
    if found.shape != expected.shape:
        raise GeometryError(
            f"{what} has shape {found.shape} but its image has {expected.shape}; "
            "it must be on the image's grid (resample it, or pair it with the right image)",
            path=found.source or None,
        )
    if not np.allclose(found.affine, expected.affine, atol=atol):
        diff = float(np.abs(found.affine - expected.affine).max())
        raise GeometryError(
            f"{what} affine differs from its image's by up to {diff:.4g} mm (tolerance {atol}); "
            "it must be on the image's grid",
            path=found.source or None,
        )
