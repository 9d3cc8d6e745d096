"""Per-structure volume and intensity table (``volumes.csv``).

One row per case x structure in the label table, present or not, in tidy long
form. ``status`` says what a row means so that no value means two things:

- ``present``        found, not touching the image border
- ``touches_border`` found and cut by the image border: the volume is a lower bound
- ``absent``         no voxel has this label (volume 0; intensity cells empty)
- ``not_in_label_table`` a label value found in the map that the table does not name

Volumes are counted on the label map's own grid: voxel count x |det(affine)|,
exact for any orientation, anisotropic or oblique spacing. Intensities are read
from the image on the same grid (an image on another grid is refused for now).
A value that does not apply is an empty cell, never 0.
"""

from __future__ import annotations

import numpy as np

from medseg.errors import InputError
from medseg.io.volume import Volume
from medseg.labels import LabelTable

COLUMNS = [
    "case_id", "structure", "label", "status", "voxel_count", "volume_mm3", "volume_ml",
    "intensity_mean", "intensity_std", "intensity_median", "intensity_p05", "intensity_p95",
    "touches_border", "voxel_volume_mm3", "spacing_mm",
]


def as_label_array(labels: Volume) -> np.ndarray:
    """The label map as integers; a map with fractional or negative values is refused."""
    a = np.asarray(labels.array)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise InputError("label map holds non-integer values; expected integer labels (is this an image?)", path=labels.source or None)
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise InputError(f"label map holds negative values ({int(a.min())}); expected labels >= 0", path=labels.source or None)
    return a


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(i, axis=ax).any() for ax in range(mask.ndim) for i in (0, -1))


def structure_rows(case_id: str, labels: Volume, table: LabelTable, image: Volume | None = None) -> list[dict]:
    """Rows of ``volumes.csv`` for one case."""
    from medseg.io.volume import require_same_grid

    lab = as_label_array(labels)
    if image is not None:
        require_same_grid(labels, image, what="label map")
        intensities = np.asarray(image.array, dtype=np.float64)
    vv = labels.voxel_volume_mm3
    spacing = "x".join(f"{s:.4g}" for s in labels.spacing)
    present_values = set(np.unique(lab).tolist()) - {0}
    entries = [(lb.name, lb.index) for lb in table.labels]
    entries += [(f"unlisted_{v}", v) for v in sorted(present_values - {lb.index for lb in table.labels})]
    listed = {lb.index for lb in table.labels}

    rows = []
    for name, index in entries:
        mask = lab == index
        n = int(np.count_nonzero(mask))
        row = {"case_id": case_id, "structure": name, "label": index, "voxel_count": n,
               "volume_mm3": n * vv, "volume_ml": n * vv / 1000.0,
               "voxel_volume_mm3": vv, "spacing_mm": spacing}
        if index not in listed:
            row["status"] = "not_in_label_table"
        elif n == 0:
            row["status"] = "absent"
        else:
            border = _touches_border(mask)
            row["status"] = "touches_border" if border else "present"
            row["touches_border"] = border
        if n and image is not None:
            vals = intensities[mask]
            p05, med, p95 = np.percentile(vals, [5, 50, 95])
            row.update(intensity_mean=float(vals.mean()), intensity_std=float(vals.std()), intensity_median=float(med),
                       intensity_p05=float(p05), intensity_p95=float(p95))
        rows.append(row)
    return rows


def volumes_frame(rows: list[dict], extra: dict | None = None):
    """A DataFrame with the documented column order (missing values stay empty)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for key, value in (extra or {}).items():
        df[key] = value
    df["touches_border"] = df["touches_border"].astype("boolean")
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
