"""Header-only scan of messy folders, series selection, pseudonymous keys and the MONAI reader."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medseg.data.phantoms import PHANTOM_PATIENT_ID, PHANTOM_PATIENT_NAME, make_phantom, write_dicom_series
from medseg.errors import InputError
from medseg.io.dicom.scan import pseudonym
from medseg.io.dicom.select import SelectionRule
from medseg.io.dicom.series import read_dicom_series, scan_inventory
from medseg.io.geometry import align_to
from medseg.io.readers import read_volume


def make_messy_export(root, big, small):
    """Two studies, a localizer series, SR, RTSTRUCT, a truncated file, text, DICOMDIR, nested folders."""
    write_dicom_series(big, root / "PAT" / "STUDY1" / "SER1", seed=1, series_description="abdomen venous")
    write_dicom_series(
        small, root / "PAT" / "STUDY2" / "x" / "y", seed=2, series_description="low dose", series_number=3
    )
    scout = write_dicom_series(
        small,
        root / "PAT" / "STUDY2" / "scout",
        seed=3,
        series_description="topogram",
        drop_slices=tuple(range(3, small.image.shape[2])),
    )
    for f in scout.iterdir():
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    shutil.copy(get_testdata_file("test-SR.dcm"), root / "PAT" / "sr_object")
    shutil.copy(get_testdata_file("rtstruct.dcm"), root / "PAT" / "RTSTRUCT.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), root / "PAT" / "broken")
    shutil.copy(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    (root / "PAT" / "README.txt").write_text(f"export for {PHANTOM_PATIENT_NAME}\n")
    return root


@pytest.fixture(scope="module")
def phantoms():
    big = make_phantom(31, spacing=(5.0, 5.0, 6.0))
    small = make_phantom(32, spacing=(8.0, 8.0, 10.0))
    return big, small


@pytest.fixture(scope="module")
def messy(tmp_path_factory, phantoms):
    return make_messy_export(tmp_path_factory.mktemp("export"), *phantoms)


def test_scan_finds_every_series_and_lists_every_other_file_with_its_reason(messy, phantoms):
    inv = scan_inventory(messy)
    series, files = inv.tables()
    seg = series[series.segmentable]
    assert sorted(seg.series_description) == ["abdomen venous", "low dose"]
    assert sorted(seg.n_files) == sorted([phantoms[0].image.shape[2], phantoms[1].image.shape[2]])
    scout = series[series.series_description == "topogram"].iloc[0]
    assert not scout.segmentable and "localizer" in scout.reason
    reasons = dict(zip(files.file, files.reason, strict=False))
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    assert reasons["PAT/README.txt"].startswith("not DICOM")
    assert reasons["PAT/broken"].startswith("truncated")
    assert "structured report" in reasons["PAT/sr_object"] and "RT structure set" in reasons["PAT/RTSTRUCT.dcm"]
    assert len(series.study_key.unique()) == 5  # 2 phantom studies + SR + RTSTRUCT + ... each keyed
    text = series.to_csv() + files.to_csv()
    assert PHANTOM_PATIENT_NAME not in text and PHANTOM_PATIENT_ID not in text


def test_identifiers_only_with_the_explicit_flag(messy):
    inv = scan_inventory(messy)
    assert "PatientName" not in inv.tables()[0].columns
    with_ids = inv.tables(with_identifiers=True)[0]
    assert PHANTOM_PATIENT_NAME in set(with_ids.PatientName)


def test_keys_are_stable_salted_hashes():
    assert pseudonym("1.2.3", prefix="se") == pseudonym("1.2.3", prefix="se")
    assert pseudonym("1.2.3", prefix="se", salt="a") != pseudonym("1.2.3", prefix="se", salt="b")
    assert "1.2.3" not in pseudonym("1.2.3", prefix="se")


def test_scan_reads_no_pixel_data(messy, monkeypatch):
    real = pydicom.dcmread

    def headers_only(*args, **kwargs):
        assert kwargs.get("stop_before_pixels"), "the scan must not read pixel data"
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", headers_only)
    assert len(scan_inventory(messy).candidates) == 2


def test_selection_rules_and_the_recorded_choice(messy, phantoms):
    big, small = phantoms
    vol = read_volume(messy)  # predict's path: largest image stack
    np.testing.assert_array_equal(align_to(vol, big.image).array, big.image.array)
    sel = vol.meta["dicom"]["selection"]
    assert sel["rule"] == "any image stack" and "largest of 2" in sel["reason"] and len(sel["candidates"]) == 2
    assert vol.meta["n_image_series_in_folder"] == 2
    low = read_dicom_series(messy, rule=SelectionRule(description="low dose"))
    assert low.shape == small.image.shape
    with pytest.raises(InputError, match="no image series matches"):
        read_dicom_series(messy, rule=SelectionRule(modalities=("MR",)))
    with pytest.raises(InputError, match="no image series matches"):
        read_dicom_series(messy, rule=SelectionRule(min_slices=1000))
    key = low.meta["dicom"]["series_key"]
    assert read_dicom_series(messy, series_uid=key).shape == small.image.shape
    assert PHANTOM_PATIENT_NAME not in repr(vol.meta) + repr(low.meta)


def test_file_without_preamble_is_read(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "nopreamble", ds, enforce_file_format=False)  # old exports: no 128 bytes + DICM
    assert (tmp_path / "nopreamble").read_bytes()[128:132] != b"DICM"
    vol = read_dicom_series(tmp_path)
    hu = ds.pixel_array.T.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[:, :, 0], hu)


def test_monai_loadimaged_reads_dicom_folders_like_nifti(tmp_path, phantoms):
    from monai.transforms import LoadImaged

    from medseg.io.dicom.monai_reader import MedsegDicomReader, register_with_monai
    from medseg.io.readers import write_volume

    big = phantoms[0]
    folder = write_dicom_series(big, tmp_path / "dcm")
    nii = write_volume(big.image, tmp_path / "img.nii.gz")
    register_with_monai()
    load = LoadImaged(keys="image", image_only=True)  # auto-selects the registered reader for folders
    a, b = load({"image": str(folder)})["image"], load({"image": str(nii)})["image"]
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    explicit = LoadImaged(keys="image", reader=MedsegDicomReader(), image_only=True)({"image": str(folder)})["image"]
    assert explicit.shape == big.image.shape
