"""Every geometry finding, on a series that shows it, with the action recorded."""

import shutil

import numpy as np
import pydicom
import pytest

from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series
from medseg.errors import GeometryError
from medseg.io.dicom.geometry import GeometryPolicy
from medseg.io.dicom.series import read_dicom_series, scan_inventory
from medseg.io.geometry import align_to
from medseg.io.volume import Volume

RESAMPLE = GeometryPolicy(irregular="resample")


@pytest.fixture(scope="module")
def case():
    return make_phantom(21, spacing=(5.0, 5.0, 6.0), flips=(False, False, True))


def findings(vol_or_folder, policy=None):
    if isinstance(vol_or_folder, Volume):
        return {f["kind"]: f for f in vol_or_folder.meta["dicom"]["findings"]}
    inv = scan_inventory(vol_or_folder, policy=policy)
    return {f.kind: f for e in inv.entries for p in e.plans for f in p.findings}


def by_position(folder):
    """Files sorted along z (the phantom's slices are axial)."""
    return sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )


def edit(path, **tags):
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_clean_series_has_no_findings(tmp_path, case):
    vol = read_dicom_series(write_dicom_series(case, tmp_path / "s"))
    assert vol.meta["dicom"]["findings"] == []


def test_slice_thickness_other_than_the_step_gives_the_step(tmp_path, case):
    vol = read_dicom_series(write_dicom_series(case, tmp_path / "s", slice_thickness=2.5))
    assert vol.spacing[2] == pytest.approx(6.0, abs=1e-4)
    f = findings(vol)["thickness_differs_from_step"]
    assert f["action"] == "accepted" and "2.5" in f["detail"]


def test_missing_slice_refused_or_resampled_onto_the_regular_grid(tmp_path, case):
    folder = write_dicom_series(case, tmp_path / "gap", drop_slices=(9,))
    assert findings(folder)["missing_slices"].action == "refused"
    with pytest.raises(GeometryError, match="missing slice"):
        read_dicom_series(folder)
    vol = read_dicom_series(folder, policy=RESAMPLE)
    assert findings(vol)["missing_slices"]["action"] == "resampled"
    truth = case.image.array
    got = align_to(vol, case.image).array  # the full grid again, slice 9 interpolated from 8 and 10
    keep = [k for k in range(truth.shape[2]) if k != 9]
    np.testing.assert_array_equal(got[:, :, keep], truth[:, :, keep])
    np.testing.assert_allclose(got[:, :, 9], (truth[:, :, 8] + truth[:, :, 10]) / 2, atol=1e-3)


def test_uneven_spacing_refused_or_resampled(tmp_path, case):
    folder = write_dicom_series(case, tmp_path / "uneven", position_jitter_mm=1.5)
    assert findings(folder)["uneven_spacing"].action == "refused"
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        read_dicom_series(folder)
    vol = read_dicom_series(folder, policy=RESAMPLE)
    assert findings(vol)["uneven_spacing"]["action"] == "resampled"
    gaps = np.diff(
        np.sort((vol.affine @ np.c_[np.zeros((vol.shape[2], 2)), np.arange(vol.shape[2]), np.ones(vol.shape[2])].T)[2])
    )
    np.testing.assert_allclose(gaps, gaps[0], atol=1e-6)  # a regular grid


def test_small_jitter_is_accepted_with_a_warning(tmp_path, case):
    vol = read_dicom_series(write_dicom_series(case, tmp_path / "j", position_jitter_mm=0.02))
    assert findings(vol)["spacing_jitter"]["action"] == "accepted_with_warning"


def test_duplicate_position_with_new_uid_refused_same_file_twice_dropped(tmp_path, case):
    folder = write_dicom_series(case, tmp_path / "dup", duplicate_slices=(4,))
    with pytest.raises(GeometryError, match="share a position"):
        read_dicom_series(folder)
    copy = write_dicom_series(case, tmp_path / "copy")
    sub = copy / "again"
    sub.mkdir()
    shutil.copy(next(f for f in copy.iterdir() if f.is_file()), sub / "same_instance")
    vol = read_dicom_series(copy)
    assert findings(vol)["duplicate_instance"]["action"] == "dropped"
    np.testing.assert_array_equal(align_to(vol, case.image).array, case.image.array)


def test_two_echoes_in_one_series_are_split(tmp_path, case):
    folder = tmp_path / "echo"
    write_dicom_series(case, folder / "e1", study_uid="1.2.3.4", series_uid="1.2.3.4.5")
    write_dicom_series(case, folder / "e2", study_uid="1.2.3.4", series_uid="1.2.3.4.5")
    for echo in ("e1", "e2"):
        for f in (folder / echo).iterdir():
            edit(f, EchoNumbers=echo[1])
    inv = scan_inventory(folder)
    (entry,) = inv.entries
    assert len(entry.plans) == 2 and {p.label for p in entry.plans} == {"echo1", "echo2"}
    assert entry.plans[0].findings[0].kind == "duplicate_positions" and entry.plans[0].findings[0].action == "split"
    vol = read_dicom_series(folder)
    np.testing.assert_array_equal(align_to(vol, case.image).array, case.image.array)


def test_gantry_tilt_resampled_onto_an_orthogonal_grid(tmp_path):
    # Intensity is a ramp along the column direction (j), so the tilt-corrected values are known exactly.
    shape, ramp = (12, 16, 8), 10.0
    arr = np.broadcast_to(np.arange(shape[1], dtype=np.float32)[None, :, None] * ramp, shape).copy()
    aff = np.diag([-2.0, -2.0, 3.0, 1.0])  # LPS identity directions
    img = Volume(arr, aff, "ramp")
    tilt = 12.0
    folder = write_dicom_series(PhantomCase("ramp", img, img, {}), tmp_path / "tilt", tilt_deg=tilt)
    with pytest.raises(GeometryError, match="gantry tilt"):
        read_dicom_series(folder, policy=GeometryPolicy(tilt="refuse"))
    vol = read_dicom_series(folder)
    f = findings(vol)["gantry_tilt"]
    assert f["action"] == "resampled" and f"{tilt:.2f} deg" in f["detail"]
    assert np.allclose(vol.affine[:3, :3], aff[:3, :3])  # orthogonal, same spacing
    shift = np.arange(shape[2]) * 3.0 * np.tan(np.deg2rad(tilt)) / 2.0  # voxels along j per slice
    expected = (np.arange(shape[1])[None, :, None] - shift[None, None, :]) * ramp
    inside = np.arange(shape[1])[:, None] >= shift[None, :] + 1  # j where the source covers the point
    got = vol.array[0]
    np.testing.assert_allclose(got[inside], np.broadcast_to(expected[0], got.shape)[inside], atol=1e-3)


def test_positions_off_one_line_are_refused(tmp_path, case):
    folder = write_dicom_series(case, tmp_path / "bent")
    f = by_position(folder)[7]
    ipp = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
    edit(f, ImagePositionPatient=[f"{ipp[0] + 8.0:.6f}", f"{ipp[1]:.6f}", f"{ipp[2]:.6f}"])
    assert findings(folder)["non_collinear"].action == "refused"
    with pytest.raises(GeometryError, match="one line"):
        read_dicom_series(folder)


def test_localizer_inside_the_series_is_excluded(tmp_path, case):
    folder = write_dicom_series(case, tmp_path / "loc")
    loc = by_position(folder)[3]
    shutil.copy(loc, folder / "scout")
    edit(
        folder / "scout",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        SOPInstanceUID=pydicom.uid.generate_uid(),
        ImageOrientationPatient=["0", "1", "0", "0", "0", "-1"],
    )
    vol = read_dicom_series(folder)
    assert findings(vol)["localizer"]["action"] == "excluded"
    np.testing.assert_array_equal(align_to(vol, case.image).array, case.image.array)


def test_mixed_sizes_and_orientations_are_split(tmp_path, case):
    folder = write_dicom_series(case, tmp_path / "mixed")
    files = by_position(folder)
    small = pydicom.dcmread(files[0])
    small.PixelData = small.pixel_array[:10, :10].copy().tobytes()
    small.Rows = small.Columns = 10
    small.save_as(files[0])
    edit(files[1], ImageOrientationPatient=["0", "1", "0", "0", "0", "-1"])  # a sagittal slice, not a localizer
    inv = scan_inventory(folder)
    kinds = {f.kind: f.action for f in inv.entries[0].findings}
    assert kinds == {"mixed_orientation": "split", "mixed_size": "split"}
    assert sorted(p.n_slices for p in inv.entries[0].plans) == [1, 1, case.image.shape[2] - 2]
    vol = read_dicom_series(folder)  # the largest stack: every slice but the two lowest, which were changed
    assert vol.shape[2] == case.image.shape[2] - 2
    assert vol.meta["dicom"]["selection"]["reason"].startswith("largest of 3")


def test_frames_without_geometry_are_not_segmentable(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("examples_palette.dcm"), tmp_path / "us")  # ultrasound: no patient geometry
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), tmp_path / "sc")
    inv = scan_inventory(tmp_path)
    assert not any(e.segmentable for e in inv.entries)
    reasons = " ".join(e.reason for e in inv.entries)
    assert "no frames with patient geometry" in reasons and "colour image" in reasons
