import os

import numpy as np
import pytest

from medseg.data.phantoms import PHANTOM_PATIENT_ID, PHANTOM_PATIENT_NAME, make_phantom, write_dicom_series
from medseg.errors import GeometryError, InputError
from medseg.io.geometry import align_to
from medseg.io.readers import read_volume, write_volume


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory, coarse_phantom):
    folder = write_dicom_series(coarse_phantom, tmp_path_factory.mktemp("dcm") / "series")
    return coarse_phantom, folder


def test_dicom_series_reads_back_to_the_same_hu_on_the_same_points(dicom_case):
    case, folder = dicom_case
    vol = read_volume(folder)
    assert vol.meta["format"] == "dicom" and vol.meta["n_slices"] == case.image.shape[2]
    np.testing.assert_allclose(vol.spacing, case.image.spacing, atol=1e-4)
    aligned = align_to(vol, case.image)  # raises unless the grids are the same points
    np.testing.assert_array_equal(aligned.array, case.image.array)


@pytest.mark.parametrize("kw", [dict(oblique_deg=20.0), dict(flips=(False, True, False))])
def test_oblique_and_flipped_series_keep_their_geometry(tmp_path, kw):
    case = make_phantom(5, spacing=(2.0, 2.0, 5.0), **kw)
    vol = read_volume(write_dicom_series(case, tmp_path / "s"))
    np.testing.assert_array_equal(align_to(vol, case.image).array, case.image.array)


def test_no_patient_identifiers_in_volume_metadata(dicom_case):
    vol = read_volume(dicom_case[1])
    text = repr(vol.meta) + vol.source
    assert PHANTOM_PATIENT_NAME not in text and PHANTOM_PATIENT_ID not in text


def test_missing_slice_is_refused_with_the_reason(tmp_path, coarse_phantom):
    folder = write_dicom_series(coarse_phantom, tmp_path / "gap")
    import pydicom

    files = sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )
    os.remove(files[len(files) // 2])
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        read_volume(folder)


def test_folder_without_dicom_and_unknown_files_give_input_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM image slices"):
        read_volume(tmp_path)
    with pytest.raises(InputError, match="unsupported input"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")


def test_corrupt_nifti_is_an_input_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="broken.nii.gz"):
        read_volume(bad)


def test_nifti_round_trip_keeps_affine(tmp_path, coarse_phantom):
    p = write_volume(coarse_phantom.labels, tmp_path / "lab.nii.gz")
    back = read_volume(p)
    np.testing.assert_allclose(back.affine, coarse_phantom.labels.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, coarse_phantom.labels.array)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp file
