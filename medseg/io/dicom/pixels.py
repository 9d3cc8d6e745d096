"""Decode the frames a ``StackPlan`` names and build the volume's voxel array.

Pixel data is decoded by pydicom's handlers (native, RLE, deflate, big endian;
JPEG baseline/extended and JPEG 2000 through Pillow, JPEG-LS through pyjpegls)
and, when pydicom has no decoder for a file (JPEG lossless process 14, 12-bit
JPEG, ...), by SimpleITK's GDCM; GDCM is not tried on native (uncompressed)
pixel data pydicom failed on, as it may misparse a corrupt file into a huge
allocation. MONOCHROME1 frames (lowest value displayed
white) are inverted over their stored range, ``2**BitsStored - 1 - v`` unsigned
and ``-1 - v`` signed, before the rescale: GDCM's (and so SimpleITK's) rule,
which leaves every frame in MONOCHROME2 sense (pydicom's ``pixel_array`` and
``apply_voi_lut`` do not invert). RescaleSlope/Intercept are applied per frame
(GDCM applies them itself). Gantry-tilt and irregular-spacing resampling from
the plan are applied last. The stack's voxel count is checked against
``max_voxels()`` before any buffer is allocated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.limits import max_voxels

log = logging.getLogger(__name__)


def _decode_pydicom(path: Path):
    import pydicom

    ds = pydicom.dcmread(path, force=True)  # as the scan read it (old exports lack the preamble)
    _fill_transfer_syntax(ds)
    arr = ds.pixel_array
    if (int(ds.get("NumberOfFrames", 1) or 1)) == 1:
        arr = arr[None]
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        arr = invert_monochrome1(
            arr,
            int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16),
            signed=int(ds.get("PixelRepresentation") or 0) == 1,
        )
    return arr, False  # stored values: rescale still to apply


def _fill_transfer_syntax(ds) -> None:
    """A file without (0002,0010) is decoded in the encoding its dataset was read in."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _is_compressed(path: Path) -> bool:
    """Whether the file's pixel data is encapsulated (compressed): only then may GDCM try after pydicom failed."""
    import pydicom

    try:
        ts = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.get("TransferSyntaxUID")
        return bool(ts) and pydicom.uid.UID(ts).is_encapsulated
    except Exception:  # pydicom raises many types on corrupt files
        return False


def invert_monochrome1(stored: np.ndarray, bits_stored: int, *, signed: bool) -> np.ndarray:
    """MONOCHROME1 stored values in MONOCHROME2 sense: mirrored within the stored range (GDCM's rule)."""
    if signed:
        return (-1 - stored.astype(np.int64)).astype(np.int32)
    top = (1 << max(1, min(int(bits_stored), 32))) - 1
    return (top - stored.astype(np.int64)).astype(np.int64 if top > 2**31 - 1 else np.int32)


def _decode_sitk(path: Path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
    arr = sitk.GetArrayFromImage(img)  # (frames, rows, cols), already rescaled by GDCM
    if arr.ndim == 2:
        arr = arr[None]
    return arr, True


def decode_file(path: Path):
    """All frames of one file as ``(frames, rows, cols)`` and whether rescale was already applied."""
    try:
        return _decode_pydicom(path)
    except Exception as first:  # no pydicom decoder for this transfer syntax, or a codec error
        try:
            if not _is_compressed(path):  # native pixel data pydicom cannot read is broken; GDCM would misread it
                raise first
            arr, rescaled = _decode_sitk(path)
        except Exception:
            raise InputError(
                f"cannot decode pixel data ({type(first).__name__}: {' '.join(str(first).split())[:200]}); expected "
                "pixel data pydicom or SimpleITK/GDCM can decode: the file may be truncated or use a rare "
                "transfer syntax (install pylibjpeg, or re-export uncompressed)",
                path=path,
            ) from None
        log.info("decoded %s with SimpleITK/GDCM (pydicom: %s)", path.name, type(first).__name__)
        return arr, rescaled


def build_array(plan) -> np.ndarray:
    """The float32 voxel array ``(columns, rows, slices)`` of a stack plan, in HU for CT.

    Frames are filled into a ``(slices, rows, columns)`` C-ordered buffer (each frame one
    contiguous block) and returned as its transposed view, which is Fortran-ordered: the
    layout NIfTI stores, with no copy.
    """
    n_src = len(plan.slices)
    cols, rows = plan.shape[0], plan.shape[1]
    voxels = max(n_src, plan.n_slices) * rows * cols
    if voxels > max_voxels():
        raise InputError(
            f"the stack of {n_src} frame(s) of {cols} x {rows} pixels ({voxels:,} voxels) is larger than "
            f"the limit of {max_voxels():,} voxels (MEDSEG_MAX_VOXELS); expected one CT/MR series: "
            "raise the limit if the series is real",
            path=plan.slices[0].path.parent,
        )
    src = np.empty((n_src, rows, cols), dtype=np.float32)
    cache: dict = {}
    for k, s in enumerate(plan.slices):
        if s.path not in cache:
            cache.clear()  # keep one multi-frame file decoded at a time
            cache[s.path] = decode_file(s.path)
        frames, rescaled = cache[s.path]
        frame = frames[s.frame or 0]
        if frame.shape != (rows, cols):
            raise InputError(f"pixel matrix {frame.shape} differs from Rows x Columns {(rows, cols)}", path=s.path)
        src[k] = frame
        if not rescaled and (s.slope != 1.0 or s.intercept != 0.0):
            src[k] *= np.float32(s.slope)
            src[k] += np.float32(s.intercept)
    if plan.inplane_shift is not None:
        from scipy.ndimage import shift as nd_shift

        fill = float(src.min())
        for k in range(n_src):
            di, dj = plan.inplane_shift[k]
            if abs(di) > 1e-6 or abs(dj) > 1e-6:
                src[k] = nd_shift(src[k], (dj, di), order=1, mode="constant", cval=fill)
    if plan.interp is not None:
        lo, hi, w = plan.interp
        w = w.astype(np.float32)[:, None, None]
        src = src[lo] * (1 - w) + src[hi] * w
    return src.transpose(2, 1, 0)
