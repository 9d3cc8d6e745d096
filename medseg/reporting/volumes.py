"""Per-structure volume, shape and intensity table (``volumes.csv``).

One row per case x structure in the label table, present or not, in tidy long
form. ``status`` says what a row means so that no value means two things:

- ``present``            found, not touching the image border
- ``touches_border``     found and cut by the image border: the volume is a lower bound
- ``below_min_size``     found, but smaller than ``min_size_ml`` (only when a minimum is given)
- ``absent``             no voxel has this label (volume 0, counts 0, every other cell empty)
- ``not_in_label_table`` a label value found in the map that the table does not name

``touches_border`` is also a column of its own (True/False for every structure
found), so a structure that is both small and cut keeps both facts.

Columns (units in the names):

- ``voxel_count``, ``volume_mm3``, ``volume_ml``: counted on the label map's own
  grid, ``voxel_count x |det(affine[:3, :3])|``; exact for any orientation,
  anisotropic or oblique spacing (no resampling of the labels, ever).
- ``intensity_*``: mean, std (population, ddof=0), median, 5th and 95th
  percentile of the image under the structure. The image is read on the label
  map's grid: as is when the grids match, permuted/flipped losslessly when they
  differ only in axis order, else resampled with trilinear interpolation
  (``intensity_sampling`` says which; see ``medseg.reporting.resample``).
  ``intensity_coverage`` is the fraction of the structure's voxels that lie
  inside the image (1.0 unless the image covers less than the label map).
- ``n_components``, ``largest_component_ml``: connected components with
  26-connectivity (voxels touching by a face, edge or corner belong together).
- ``centroid_{x,y,z}_mm``: mean position of the structure's voxel centres;
  ``bbox_{x,y,z}_{min,max}_mm``: extent of those voxel centres along each world
  axis. Both in **RAS+ millimetres** (NIfTI's world frame: +x towards the
  patient's right, +y anterior, +z superior; DICOM LPS positions are
  converted on reading, so negate x and y to get DICOM patient coordinates).
- ``spacing_mm``: voxel size along the label map's array axes, ``AxBxC``.

A value that does not apply is an empty cell, never 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medseg.errors import InputError
from medseg.io.volume import Volume, label_boxes, require_same_grid
from medseg.labels import LabelTable

COLUMNS = [
    "case_id",
    "structure",
    "label",
    "status",
    "voxel_count",
    "volume_mm3",
    "volume_ml",
    "intensity_mean",
    "intensity_std",
    "intensity_median",
    "intensity_p05",
    "intensity_p95",
    "intensity_coverage",
    "n_components",
    "largest_component_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "bbox_x_min_mm",
    "bbox_x_max_mm",
    "bbox_y_min_mm",
    "bbox_y_max_mm",
    "bbox_z_min_mm",
    "bbox_z_max_mm",
    "touches_border",
    "voxel_volume_mm3",
    "spacing_mm",
]
FOUND = ("present", "touches_border", "below_min_size")  # statuses of a structure that has voxels
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def as_label_array(labels: Volume) -> np.ndarray:
    """The label map as integers; a map with fractional or negative values is refused."""
    a = np.asarray(labels.array)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise InputError(
                "label map holds non-integer values; expected integer labels (is this an image?)",
                path=labels.source or None,
            )
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise InputError(
            f"label map holds negative values ({int(a.min())}); expected labels >= 0", path=labels.source or None
        )
    return a


def _shape_stats(mask: np.ndarray, offset: np.ndarray, affine: np.ndarray, voxel_ml: float) -> dict:
    """Components, centroid and bounding box of a non-empty mask cropped at ``offset`` (voxel indices)."""
    from scipy import ndimage

    comp, n_comp = ndimage.label(mask, structure=_CONNECTIVITY_26)
    sizes = np.bincount(comp.ravel())[1:]
    ijk = np.stack(np.nonzero(mask)).astype(np.float64) + offset[:, None]
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]  # (3, n) voxel centres in RAS mm
    lo, hi = world.min(axis=1), world.max(axis=1)
    centroid = world.mean(axis=1)
    out = {"n_components": int(n_comp), "largest_component_ml": float(sizes.max()) * voxel_ml}
    for a, axis in enumerate("xyz"):
        out[f"centroid_{axis}_mm"] = float(centroid[a])
        out[f"bbox_{axis}_min_mm"] = float(lo[a])
        out[f"bbox_{axis}_max_mm"] = float(hi[a])
    return out


def _intensity_stats(vals: np.ndarray, n: int) -> dict:
    finite = vals[np.isfinite(vals)]
    out = {"intensity_coverage": finite.size / n}
    if finite.size:
        p05, med, p95 = np.percentile(finite, [5, 50, 95])
        out.update(
            intensity_mean=float(finite.mean()),
            intensity_std=float(finite.std()),
            intensity_median=float(med),
            intensity_p05=float(p05),
            intensity_p95=float(p95),
        )
    return out


def structure_rows(
    case_id: str,
    labels: Volume,
    table: LabelTable,
    image: Volume | np.ndarray | None = None,
    *,
    min_size_ml: float | None = None,
) -> list[dict]:
    """Rows of ``volumes.csv`` for one case.

    ``image``: a ``Volume`` on the label map's grid (checked), or an array already
    brought onto it (``medseg.reporting.resample.image_on_label_grid``; NaN marks
    voxels outside the image).
    """
    lab = as_label_array(labels)
    intensities = None
    if isinstance(image, Volume):
        require_same_grid(labels, image, what="label map")
        intensities = np.asarray(image.array)
    elif image is not None:
        intensities = np.asarray(image)
        if intensities.shape != lab.shape:
            raise ValueError(f"image array {intensities.shape} is not on the label grid {lab.shape}")
    vv = labels.voxel_volume_mm3
    voxel_ml = vv / 1000.0
    spacing = "x".join(f"{s:.4g}" for s in labels.spacing)
    objects = label_boxes(lab)  # from the values present: bounded whatever the largest value
    present_values = set(objects)
    listed = {lb.index for lb in table.labels}
    entries = [(lb.name, lb.index) for lb in table.labels]
    entries += [(f"unlisted_{v}", v) for v in sorted(present_values - listed)]

    rows = []
    for name, index in entries:
        row = {"case_id": case_id, "structure": name, "label": index, "voxel_volume_mm3": vv, "spacing_mm": spacing}
        sl = objects.get(index)
        if sl is None:
            row.update(status="absent", voxel_count=0, volume_mm3=0.0, volume_ml=0.0, n_components=0)
            rows.append(row)
            continue
        mask = lab[sl] == index
        n = int(np.count_nonzero(mask))
        border = any(s.start == 0 or s.stop == dim for s, dim in zip(sl, lab.shape, strict=False))
        if index not in listed:
            status = "not_in_label_table"
        elif min_size_ml is not None and n * voxel_ml < min_size_ml:
            status = "below_min_size"
        else:
            status = "touches_border" if border else "present"
        row.update(status=status, voxel_count=n, volume_mm3=n * vv, volume_ml=n * vv / 1000.0, touches_border=border)
        row.update(_shape_stats(mask, np.array([s.start for s in sl], dtype=np.float64), labels.affine, voxel_ml))
        if intensities is not None:
            row.update(_intensity_stats(np.asarray(intensities[sl][mask], dtype=np.float64), n))
        rows.append(row)
    return rows


CHUNK_ROWS = 50_000  # rows per intermediate frame when a cohort's rows come case by case


def rows_frame(case_rows: Iterable[list[dict]], chunk_rows: int = CHUNK_ROWS):
    """One DataFrame of the rows of many cases (an iterable of per-case row lists, e.g. read from each case's
    ``volumes.json`` as it is consumed), the same as ``pd.DataFrame`` of all the rows in one list, but holding at
    most ``chunk_rows`` rows as dicts at any time: 1,000,000 rows as dicts take several GB, as columns a few
    hundred MB. None when there is no row."""
    import pandas as pd

    frames, chunk, texts = [], [], {}
    for rows in case_rows:
        for row in rows:  # one object per distinct text: each row's copy of its case id, status, paths and model
            for key, value in row.items():  # checksum would take 0.8 GB over 1,000,000 rows (one str each)
                if type(value) is str:
                    row[key] = texts.setdefault(value, value)
        chunk += rows
        if len(chunk) >= chunk_rows:
            frames.append(pd.DataFrame(chunk))
            chunk = []
    if chunk:
        frames.append(pd.DataFrame(chunk))
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True, sort=False)


def volumes_frame(rows, extra: dict | None = None):
    """A DataFrame with the documented column order (missing values stay empty); ``rows``: a list of row dicts
    or a DataFrame of them (``rows_frame``)."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for key, value in (extra or {}).items():
        df[key] = value
    df["touches_border"] = df["touches_border"].astype("boolean")
    for col in ("voxel_count", "n_components"):
        df[col] = df[col].astype("Int64")
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
