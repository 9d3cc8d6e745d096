"""TotalSegmentator's ``statistics.json`` from a label map and its image, so the two tools compare on the same data.

TotalSegmentator (``totalsegmentator/statistics.py``, ``get_basic_statistics``, default arguments as
``TotalSegmentator --statistics`` calls it) writes, for every structure of its class map in label order:

    {"<structure>": {"volume": <mm3>, "intensity": <mean>}, ...}     (json.dump, indent=4)

- the image is read as ``get_fdata().astype(np.int16)`` (truncated toward zero), on the label map's grid;
- ``volume`` = voxel count x the product of the header zooms (NIfTI stores them as float32: the product
  is taken in float32, as nibabel's ``get_zooms()`` gives them), not rounded;
- ``intensity`` = the mean of the int16 image over the structure (``np.average(ct, weights=mask)``),
  rounded to 5 decimals; 0.0 for a structure with no voxel;
- a structure that has a voxel within 3 voxels of any face of the volume (``touches_border``, on by
  default: ``statistics_exclude_masks_at_border=True``) gets volume 0.0 and intensity 0.0.

medseg reads the label map with its own readers and label checks (``medseg.reporting.volumes.as_label_array``),
brings the image onto the label grid as ``medseg report`` does (``medseg.reporting.resample``: as is when
the grids match, else reoriented or resampled; the whole label map must lie inside the image), and computes
these numbers per structure in its bounding box (the sums of integers are exact in float64, so the order
of summation does not change the mean). TotalSegmentator's ``--fast`` mode computes its statistics on its
3 mm grid instead; this module always uses the label map's own grid.
"""

from __future__ import annotations

import json

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import write_text
from medseg.io.paths import safe_name
from medseg.io.readers import read_volume
from medseg.io.volume import Volume, label_boxes, same_grid
from medseg.labels import LabelTable
from medseg.reporting.resample import image_on_label_grid
from medseg.reporting.volumes import as_label_array

BORDER = 3  # statistics.touches_border: the first and last three voxels of each axis


def voxel_volume_mm3(affine) -> float:
    """The product of the zooms as nibabel gives them for a NIfTI header (float32), in float32."""
    z = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0).astype(np.float32)
    return z[0] * z[1] * z[2]


def statistics(
    labels: Volume, table: LabelTable, image: Volume | np.ndarray, *, exclude_masks_at_border: bool = True
) -> dict:
    """``{structure: {"volume": mm3, "intensity": mean}}`` for every structure of ``table``, as
    TotalSegmentator's ``get_basic_statistics`` computes them. ``image``: a ``Volume`` (brought onto the
    label grid) or an array already on it."""
    lab = as_label_array(labels)
    if isinstance(image, Volume):
        ct = np.asarray(image.array) if same_grid(image, labels) else image_on_label_grid(image, labels, order=1)[0]
    else:
        ct = np.asarray(image)
    if ct.shape != lab.shape:
        raise InputError(f"image {ct.shape} is not on the label map's grid {lab.shape}", path=labels.source or None)
    if np.issubdtype(ct.dtype, np.floating) and not np.all(np.isfinite(ct)):
        raise InputError(
            "the image does not cover the whole label map (or holds NaN/Inf); TotalSegmentator's "
            "statistics need an intensity under every voxel",
            path=labels.source or None,
        )
    vox_vol = voxel_volume_mm3(labels.affine)
    objects = label_boxes(lab)  # from the values present, whatever the largest
    shape = lab.shape
    out: dict = {}
    for entry in table.labels:
        k = entry.index
        sl = objects.get(k)
        if sl is None:  # no voxel: volume 0 * voxel volume, intensity 0.0
            out[entry.name] = {"volume": float(np.int64(0) * vox_vol), "intensity": 0.0}
            continue
        touches = any(s.start < BORDER or s.stop > n - BORDER for s, n in zip(sl, shape, strict=False))
        if touches and exclude_masks_at_border:
            out[entry.name] = {"volume": 0.0, "intensity": 0.0}
            continue
        mask = lab[sl] == k
        n = np.int64(np.count_nonzero(mask))
        total = np.asarray(ct[sl][mask]).astype(np.int16).astype(np.float64).sum()
        out[entry.name] = {"volume": float(n * vox_vol), "intensity": float(np.round(total / float(n), 5))}
    return out


def write_statistics(path, stats: dict):
    """``json.dump(stats, f, indent=4)`` as TotalSegmentator writes it (atomically)."""
    return write_text(path, json.dumps(stats, indent=4))


def write_cases(label_paths, image_paths, out_dir, table: LabelTable, case_ids) -> list:
    """``OUT/statistics/<case>.json`` for each label map and its image; returns the paths written."""
    from pathlib import Path

    written = []
    for cid, lab_path, img_path in zip(case_ids, label_paths, image_paths, strict=False):
        lab = read_volume(lab_path)
        stats = statistics(lab, table, read_volume(img_path))
        written.append(write_statistics(Path(out_dir) / "statistics" / f"{safe_name(cid)}.json", stats))
    return written
