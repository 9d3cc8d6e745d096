"""Read any supported input into a ``Volume``; write volumes and label maps.

Inputs: NIfTI (``.nii``, ``.nii.gz``) through nibabel; NRRD/MHA/MHD through
SimpleITK; a folder of DICOM files through ``medseg.io.dicom``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
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


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI/NRRD/MHA file or a DICOM folder. Bad input raises ``InputError``."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=p)
    if p.is_dir():
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(p)
    if _has_suffix(p, NIFTI_SUFFIXES):
        return _read_nifti(p)
    if _has_suffix(p, ITK_SUFFIXES):
        return _read_itk(p)
    raise InputError(
        "unsupported input; expected a .nii/.nii.gz/.nrrd/.mha file or a folder of DICOM files",
        path=p,
    )


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(p))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"cannot read as NIfTI ({type(exc).__name__}: {exc})", path=p) from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"expected a 3D image, found shape {array.shape}", path=p)
    return Volume(array, img.affine, str(p), {"format": "nifti"})


def _read_itk(p: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except Exception as exc:
        raise InputError(f"cannot read image ({exc})", path=p) from None
    if img.GetDimension() != 3:
        raise InputError(f"expected a 3D image, found {img.GetDimension()}D", path=p)
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return Volume(array, LPS_TO_RAS @ lps, str(p), {"format": "itk"})


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
