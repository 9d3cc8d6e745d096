"""Read any supported input into a ``Volume``; write volumes and label maps.

Inputs: NIfTI (``.nii``, ``.nii.gz``) through nibabel; NRRD/MHA/MHD through
SimpleITK; a folder of DICOM files through ``medseg.io.dicom.series``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.series import read_dicom_series
from medseg.io.limits import MAX_VOXELS, max_voxels  # noqa: F401  (MAX_VOXELS: one limit for every reader)
from medseg.io.volume import LPS_TO_RAS, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def case_id_for(path: str | os.PathLike) -> str:
    """The case id of an input: its file name without image suffixes, or the folder name."""
    p = Path(path)
    name = p.name
    for suf in NIFTI_SUFFIXES[::-1] + ITK_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def read_grid(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """The shape and RAS affine of a NIfTI/NRRD/MHA file from its header alone (no voxels read)."""
    p = Path(path)
    if _has_suffix(p, ITK_SUFFIXES):
        import SimpleITK as sitk

        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
        except Exception as exc:  # noqa: BLE001 -- SimpleITK raises RuntimeError with ITK's text
            raise InputError(f"cannot read image ({_itk_why(exc)})", path=p) from None
        if reader.GetDimension() != 3:
            raise InputError(f"expected a 3D image, found {reader.GetDimension()}D", path=p)
        return tuple(int(n) for n in reader.GetSize()), _ras_affine(reader)
    import nibabel as nib

    try:
        with _quiet_nibabel():
            img = nib.load(str(p))
    except Exception as exc:  # noqa: BLE001 -- a corrupt header makes nibabel raise many types; all are bad input
        raise InputError(f"cannot read as NIfTI, NRRD or MHA ({_why(exc)})", path=p) from None
    affine = np.array(img.affine, dtype=np.float64)
    factor = _UNIT_TO_MM.get(int(img.header["xyzt_units"]) & 0x07) if "xyzt_units" in img.header else None
    if factor is not None:  # as read_volume: the file's units in mm
        affine[:3, :] *= factor
    return tuple(int(n) for n in img.shape[:3]), affine


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI/NRRD/MHA file or a DICOM folder. Bad input raises ``InputError``."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=p)
    if p.is_dir() or p.name.upper() == "DICOMDIR":  # a DICOM folder, or the DICOMDIR index of one
        return read_dicom_series(p)
    if _has_suffix(p, NIFTI_SUFFIXES):
        return _read_nifti(p)
    if _has_suffix(p, ITK_SUFFIXES):
        return _read_itk(p)
    raise InputError(
        "unsupported input; expected a .nii/.nii.gz/.nrrd/.mha file or a folder of DICOM files",
        path=p,
    )


#: Deflate (gzip, zlib) expands at most 1032:1 (RFC 1951: a 258-byte match costs at least 2 bits),
#: so a compressed file of ``n`` bytes holds at most ``n * 1032`` bytes of voxels.
DEFLATE_MAX_RATIO = 1032
#: NIfTI xyzt_units spatial codes other than mm (2) or unknown (0): the factor to mm.
_UNIT_TO_MM = {1: 1000.0, 3: 0.001}
_SLACK_BYTES = 1 << 16  # headers, gzip members, rounding: never what decides a refusal
_CHUNK_BYTES = 1 << 24


def check_claim(
    p: Path,
    shape,
    itemsize: int,
    *,
    stored_bytes: int | None = None,
    max_ratio: float | None = None,
    what: str = "header",
) -> int:
    """Refuse a header whose claimed voxels exceed the voxel limit, or more bytes than the file can
    hold (``stored_bytes * max_ratio``; ``max_ratio`` 1 for raw data, ``DEFLATE_MAX_RATIO`` for
    gzip/zlib, None when unknown). Returns the claimed number of bytes. Nothing is allocated."""
    dims = [int(d) for d in shape]
    n_vox = 1
    for d in dims:
        n_vox *= max(d, 0)
    if n_vox == 0:
        raise InputError(f"the {what} gives shape {tuple(dims)}, which holds no voxels; expected an image", path=p)
    limit = max_voxels()
    if n_vox > limit:
        raise InputError(
            f"the {what} claims shape {tuple(dims)} = {n_vox:,} voxels, over medseg's limit of {limit:,}; "
            "if the image is real, set MEDSEG_MAX_VOXELS to allow it (memory use grows with it)",
            path=p,
        )
    n_bytes = n_vox * int(itemsize)
    if stored_bytes is not None and max_ratio is not None:
        can_hold = int(stored_bytes * max_ratio) + (_SLACK_BYTES if max_ratio > 1 else 0)
        if n_bytes > can_hold:
            how = "raw data" if max_ratio <= 1 else f"data compressed at most {max_ratio:g}:1"
            raise InputError(
                f"the {what} claims shape {tuple(dims)} = {n_bytes:,} bytes of voxels, but {stored_bytes:,} bytes of "
                f"{how} can hold at most {can_hold:,}; the file is truncated or its header is corrupt",
                path=p,
            )
    return n_bytes


def _why(exc: BaseException) -> str:
    """An exception as one short line (library messages often span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _quiet_nibabel():
    """nibabel logs (and silently repairs) bad header fields on load; medseg checks the raw header itself."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def quiet():
        lg = logging.getLogger("nibabel.global")
        was = lg.disabled
        lg.disabled = True
        try:
            yield
        finally:
            lg.disabled = was

    return quiet()


def _raw_nifti_header(p: Path):
    """The header as stored, before nibabel's repairs (which turn a zero pixdim into 1 mm)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(str(p), "rb") as fh:
        head = fh.read(540)
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        n = klass.sizeof_hdr
        if len(head) < n:
            continue
        for order in ("<", ">"):
            if int(np.frombuffer(head[:4], dtype=order + "i4")[0]) == n:
                return klass(binaryblock=head[:n], check=False)
    raise ValueError("no NIfTI-1/NIfTI-2 header (sizeof_hdr is neither 348 nor 540)")


def _check_nifti_geometry(p: Path, raw) -> None:
    """Without an sform the grid comes from pixdim (qform or none): it must be a real voxel size."""
    if int(raw["sform_code"]) > 0:
        return  # the sform gives the grid; Volume checks that affine
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
        return
    has = "a qform but no sform" if int(raw["qform_code"]) > 0 else "neither qform nor sform"
    shown = tuple(float(f"{v:.4g}") for v in pixdim)
    raise GeometryError(
        f"voxel size (pixdim) {shown} mm is zero, negative or not a number and the header has {has}; "
        "medseg does not guess a voxel size (nibabel would invent one): fix the header or re-export the image",
        path=p,
    )


def _read_gz_voxels(p: Path, proxy, n_bytes: int) -> np.ndarray:
    """Decompress the voxel data chunk by chunk into an unfilled buffer: only bytes that are really
    in the file become resident, so a header that over-claims costs no memory before it is refused."""
    from nibabel.openers import ImageOpener
    from nibabel.volumeutils import apply_read_scaling

    buf = np.empty(n_bytes, dtype=np.uint8)
    view = buf.data  # a memoryview of the buffer
    got = 0
    with ImageOpener(str(p), "rb") as fh:
        fh.seek(int(proxy.offset))
        while got < n_bytes:
            n = fh.readinto(view[got : got + _CHUNK_BYTES])
            if not n:
                break
            got += n
    if got < n_bytes:
        raise InputError(f"truncated: the header claims {n_bytes:,} bytes of voxels, the file holds {got:,}", path=p)
    raw = buf.view(proxy.dtype).reshape(proxy.shape, order=proxy.order)
    return apply_read_scaling(raw, np.asanyarray(proxy.slope), np.asanyarray(proxy.inter))


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    try:
        raw = _raw_nifti_header(p)
        with _quiet_nibabel():
            img = nib.load(str(p))
        shape, dtype, offset = img.shape, img.get_data_dtype(), int(img.dataobj.offset)
    except Exception as exc:  # noqa: BLE001 -- a corrupt header makes nibabel raise many types; all are bad input
        raise InputError(f"cannot read as NIfTI ({_why(exc)})", path=p) from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"expected a 3D image, found shape {tuple(shape)}", path=p)
    compressed = p.name.lower().endswith(".gz")
    size = p.stat().st_size
    n_bytes = check_claim(
        p,
        img.shape,
        dtype.itemsize,
        stored_bytes=size if compressed else max(size - offset, 0),
        max_ratio=DEFLATE_MAX_RATIO if compressed else 1,
    )
    _check_nifti_geometry(p, raw)
    try:
        with _quiet_nibabel():
            array = _read_gz_voxels(p, img.dataobj, n_bytes) if compressed else np.asanyarray(img.dataobj)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 -- corrupt deflate data, short files: bad input, one line
        raise InputError(f"cannot read as NIfTI ({_why(exc)})", path=p) from None
    if array.ndim == 4:
        array = array[..., 0]
    affine, meta = np.array(img.affine, dtype=np.float64), {"format": "nifti"}
    factor = _UNIT_TO_MM.get(int(raw["xyzt_units"]) & 0x07)
    if factor is not None:  # nibabel keeps the file's units; medseg measures in mm (as ITK reads it)
        affine[:3, :] *= factor
        meta["units"] = f"{'metres' if factor > 1 else 'micrometres'} in the header, converted to mm"
    return Volume(array, affine, str(p), meta)


def _sitk_component_bytes(pixel_id: int) -> int:
    import SimpleITK as sitk

    try:
        return int(sitk.Image([1, 1, 1], pixel_id).GetSizeOfPixelComponent())
    except Exception:  # noqa: BLE001 -- unknown pixel type: count the largest scalar
        return 8  # the largest scalar: the claim is over-counted, never under


def _itk_stored_data(p: Path) -> tuple[int | None, float | None]:
    """Bytes of voxel data on disk and the most they can expand (MetaImage/NRRD headers, read as text).

    ``(None, None)`` when it cannot be told (a list of data files, bzip2...): then only the voxel limit applies."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(1 << 16).decode("latin-1")
    except OSError:
        return None, None
    name = p.name.lower()
    data_file: str | None = None
    ratio: float | None = 1.0
    if name.endswith((".mha", ".mhd")):
        for line in head.splitlines():
            key, _, value = line.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "compresseddata" and value.lower() == "true":
                ratio = DEFLATE_MAX_RATIO
            if key == "elementdatafile":
                data_file = None if value.upper() == "LOCAL" else value
                break
    else:  # NRRD: "field: value" lines up to a blank line
        for line in head.splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip().lstrip("=").strip()
            if key == "encoding":
                enc = value.lower()
                ratio = {
                    "raw": 1.0,
                    "gzip": DEFLATE_MAX_RATIO,
                    "gz": DEFLATE_MAX_RATIO,
                    "hex": 1.0,
                    "ascii": 8.0,
                    "text": 8.0,
                    "txt": 8.0,
                }.get(enc)
            if key in ("data file", "datafile"):
                data_file = value
    if ratio is None:
        return None, None
    if data_file is None:
        return p.stat().st_size, ratio
    if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        return None, None
    target = p.parent / data_file
    return (target.stat().st_size, ratio) if target.is_file() else (None, None)


def _itk_why(exc: BaseException) -> str:
    """ITK's exception text is several lines of source locations; its last line says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[-1].split())[:200]}" if lines else type(exc).__name__


def _read_itk(p: Path) -> Volume:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        dim, size = reader.GetDimension(), reader.GetSize()
        comp_bytes = _sitk_component_bytes(reader.GetPixelID()) * max(1, int(reader.GetNumberOfComponents()))
    except Exception as exc:  # noqa: BLE001 -- SimpleITK raises RuntimeError with ITK's text; any failure is bad input
        raise InputError(f"cannot read image ({_itk_why(exc)})", path=p) from None
    if dim != 3:
        raise InputError(f"expected a 3D image, found {dim}D", path=p)
    stored, ratio = _itk_stored_data(p)
    check_claim(p, size, comp_bytes, stored_bytes=stored, max_ratio=ratio)
    try:
        img = reader.Execute()
    except Exception as exc:  # noqa: BLE001 -- as above
        raise InputError(f"cannot read image ({_itk_why(exc)})", path=p) from None
    if img.GetDimension() != 3:
        raise InputError(f"expected a 3D image, found {img.GetDimension()}D", path=p)
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    return Volume(array, _ras_affine(img), str(p), {"format": "itk"})


def _ras_affine(itk) -> np.ndarray:
    """The RAS affine of a SimpleITK image or of a reader's header (ITK's geometry is LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = np.array(itk.GetDirection()).reshape(3, 3) * np.array(itk.GetSpacing())
    lps[:3, 3] = itk.GetOrigin()
    return LPS_TO_RAS @ lps


def write_volume(volume: Volume, path: str | os.PathLike, *, dtype=None) -> Path:
    """Write a volume as NIfTI, atomically. The affine is written as both qform and sform."""
    import nibabel as nib

    p = Path(path)
    if not _has_suffix(p, NIFTI_SUFFIXES):
        raise InputError("output must end in .nii or .nii.gz", path=p)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    img = nib.Nifti1Image(array, volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(p) as tmp:
        nib.save(img, str(tmp))
    return p


def write_label_map(labels: Volume, path: str | os.PathLike) -> Path:
    """Write a label map with the smallest unsigned integer type that holds it."""
    top = int(labels.array.max()) if labels.array.size else 0
    dtype = np.uint8 if top < 256 else np.uint16
    return write_volume(labels, path, dtype=dtype)
