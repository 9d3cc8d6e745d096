"""The DICOM reader against SimpleITK's ImageSeriesReader and against the phantom truth.

Clean series (axial, sagittal-ordered, reversed, oblique; the CT/MR files pydicom
ships; compressed transfer syntaxes) must give the same shape, spacing,
direction, origin (within 1e-3 mm) and identical voxel values.
"""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series
from medseg.io.dicom.series import read_dicom_series
from medseg.io.geometry import align_to
from medseg.io.volume import LPS_TO_RAS, Volume

sitk = pytest.importorskip("SimpleITK")


def sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_as_sitk(vol: Volume, img, *, slice_spacing: bool = True) -> None:
    lps = LPS_TO_RAS @ vol.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    assert vol.shape == img.GetSize()
    n = 3 if slice_spacing else 2
    np.testing.assert_allclose(spacing[:n], img.GetSpacing()[:n], atol=1e-3)
    np.testing.assert_allclose(lps[:3, :3] / spacing, np.array(img.GetDirection()).reshape(3, 3), atol=1e-5)
    np.testing.assert_allclose(lps[:3, 3], img.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32))


def permuted(case: PhantomCase, axes) -> PhantomCase:
    """The same phantom stored with array axes permuted (e.g. slices along x: a sagittal series)."""
    aff = case.image.affine.copy()
    aff[:3, :3] = aff[:3, list(axes)]
    img = Volume(np.ascontiguousarray(case.image.array.transpose(axes)), aff, case.case_id)
    return PhantomCase(case.case_id, img, img, {})


@pytest.fixture(scope="module")
def small_case():
    return make_phantom(7, spacing=(4.0, 4.0, 6.0), flips=(True, False, True))


@pytest.mark.parametrize("variant", ["axial", "sagittal", "reversed", "oblique"])
def test_clean_series_equal_simpleitk_and_truth(tmp_path, small_case, variant):
    case, kw = small_case, {}
    if variant == "sagittal":
        case = permuted(small_case, (1, 2, 0))
    elif variant == "reversed":
        kw = dict(instance_order="reversed")
    elif variant == "oblique":
        case = make_phantom(8, spacing=(4.0, 4.0, 6.0), oblique_deg=25.0)
    folder = write_dicom_series(case, tmp_path / variant, **kw)
    vol = read_dicom_series(folder)
    assert_same_as_sitk(vol, sitk_series(folder))
    np.testing.assert_array_equal(align_to(vol, case.image).array, case.image.array)  # same points, same HU
    if variant == "sagittal":
        assert vol.meta["dicom"]["orientation"] == "sagittal"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_files_pydicom_ships_equal_simpleitk(tmp_path, name):
    shutil.copy(get_testdata_file(name), tmp_path / "slice")
    vol = read_dicom_series(tmp_path)
    # One slice has no step: medseg takes SliceThickness, GDCM 1 mm unless SpacingBetweenSlices is set.
    assert_same_as_sitk(vol, sitk.ReadImage(str(tmp_path / "slice")), slice_spacing=False)
    assert vol.spacing[2] == pytest.approx(float(pydicom.dcmread(tmp_path / "slice").SliceThickness))
    assert vol.meta["dicom"]["findings"][0]["kind"] == "single_slice"


def _mr_series(tmp_path, name: str, n: int = 3):
    """``n`` slices of pydicom's MR_small (encoded as ``name`` is), stacked 2 mm apart in reverse file order."""
    folder = tmp_path / name.replace(".dcm", "")
    folder.mkdir()
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(name))
        ipp = np.array(ds.ImagePositionPatient, float)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + np.array([0, 0, 2.0 * k])]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = n - k
        ds.save_as(folder / f"f{n - k}")
    return folder


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_real_encoded_mr_series_match_uncompressed_and_simpleitk(tmp_path, name):
    ref = read_dicom_series(_mr_series(tmp_path, "MR_small.dcm"))
    folder = _mr_series(tmp_path, name)
    vol = read_dicom_series(folder)
    assert_same_as_sitk(vol, sitk_series(folder))
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)
    assert vol.spacing[2] == pytest.approx(2.0)  # from positions; SliceThickness says 0.8


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "deflate", "jpeg-lossless", "jpeg2000"])
def test_compressed_phantom_ct_decodes_to_the_exact_hu(tmp_path, small_case, syntax):
    folder = write_dicom_series(small_case, tmp_path / syntax, transfer_syntax=syntax)
    ts = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert ts != pydicom.uid.ExplicitVRLittleEndian
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.array, small_case.image.array)
    np.testing.assert_allclose(vol.affine, small_case.image.affine, atol=1e-3)


def test_enhanced_multiframe_ct_uses_per_frame_positions(tmp_path, small_case):
    folder = write_dicom_series(small_case, tmp_path / "enh", enhanced=True)
    assert len(list(folder.iterdir())) == 1
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.array, small_case.image.array)  # frames stored shuffled
    np.testing.assert_allclose(vol.affine, small_case.image.affine, atol=1e-3)
    assert vol.meta["dicom"]["sop_class"] == "Enhanced CT Image Storage"
