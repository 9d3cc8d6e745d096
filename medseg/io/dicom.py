"""DICOM series -> Volume.

Slices are sorted by their position along the slice normal (not by
InstanceNumber or file name), the slice spacing comes from those positions (not
from SliceThickness), RescaleSlope/Intercept are applied, and the affine is built
from ImageOrientationPatient/ImagePositionPatient. Geometry that cannot be
stacked into one regular grid is refused with the reason; nothing is guessed.

Patient identifiers are never copied into the volume's metadata or messages.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.io.volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

#: Relative deviation of a slice gap from the median that is still one regular grid.
SPACING_TOLERANCE = 0.01

_IMAGE_TAGS = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns")


def is_dicom_folder(path: Path) -> bool:
    """A folder holding at least one file that starts with the DICOM preamble."""
    if not path.is_dir():
        return False
    for f in _iter_files(path):
        if _has_dicom_magic(f):
            return True
    return False


def _iter_files(folder: Path):
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            yield Path(root) / name


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom_series(folder: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read the image series in ``folder`` (the largest one when there are several)."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder; expected a folder of DICOM files", path=folder)

    series: dict[str, list] = defaultdict(list)
    skipped = 0
    for f in _iter_files(folder):
        if not _has_dicom_magic(f):
            skipped += 1
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on corrupt files
            log.warning("skipping unreadable DICOM file %s (%s)", f.name, type(exc).__name__)
            skipped += 1
            continue
        if not all(hasattr(ds, t) for t in _IMAGE_TAGS):
            skipped += 1  # localizers without geometry, SR, RTSTRUCT, ...
            continue
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((f, ds))

    if not series:
        raise InputError(
            f"no DICOM image slices with geometry found ({skipped} other files); "
            "expected a folder holding one CT/MR series",
            path=folder,
        )
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"series {series_uid!r} not found; {len(series)} image series present", path=folder)
        chosen = series_uid
    else:
        chosen = max(series, key=lambda uid: len(series[uid]))
        if len(series) > 1:
            log.warning(
                "%s holds %d image series; segmenting the largest (%d slices)",
                folder.name, len(series), len(series[chosen]),
            )
    return _stack(series[chosen], folder, n_series=len(series))


def _stack(items: list, folder: Path, *, n_series: int) -> Volume:
    first = items[0][1]
    iop = np.array(first.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    rows, cols = int(first.Rows), int(first.Columns)
    for f, ds in items:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise GeometryError("slices with different orientations in one series; expected one stack", path=folder)
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise GeometryError("slices with different sizes in one series; expected one stack", path=folder)

    positions = np.array([np.array(ds.ImagePositionPatient, dtype=np.float64) for _, ds in items])
    order = np.argsort(positions @ normal, kind="stable")
    items = [items[i] for i in order]
    positions = positions[order]
    dist = positions @ normal

    if len(items) > 1:
        gaps = np.diff(dist)
        if np.any(gaps < 1e-3):
            raise GeometryError("two or more slices share a position; expected one slice per position", path=folder)
        step = float(np.median(gaps))
        if np.any(np.abs(gaps - step) > SPACING_TOLERANCE * step):
            raise GeometryError(
                f"uneven slice spacing (gaps {gaps.min():.3f}-{gaps.max():.3f} mm); "
                "expected a regular stack (missing slices?)",
                path=folder,
            )
        # The in-plane offset between slices must follow the normal (no gantry tilt).
        along = (positions[-1] - positions[0]) / (len(items) - 1)
        if np.linalg.norm(along - step * normal) > SPACING_TOLERANCE * step + 1e-3:
            raise GeometryError("slices are not stacked along their normal (gantry tilt?)", path=folder)
        slice_vec = along
    else:
        thickness = float(getattr(first, "SliceThickness", 1.0) or 1.0)
        slice_vec = normal * thickness

    dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing, column spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc  # i: along a row (column index)
    lps[:3, 1] = col_cos * dr  # j: down a column (row index)
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[0]

    array = np.empty((cols, rows, len(items)), dtype=np.float32)
    import pydicom

    for k, (f, _) in enumerate(items):
        try:
            ds = pydicom.dcmread(f)
            pixels = ds.pixel_array
        except Exception as exc:
            raise InputError(f"cannot decode pixel data ({type(exc).__name__}: {exc})", path=f) from None
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        array[:, :, k] = pixels.T.astype(np.float32) * slope + intercept

    meta = {
        "format": "dicom",
        "modality": str(getattr(first, "Modality", "")),
        "n_slices": len(items),
        "n_image_series_in_folder": n_series,
    }
    return Volume(array, LPS_TO_RAS @ lps, str(folder), meta)
