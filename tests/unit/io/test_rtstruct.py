"""RTSTRUCT in and out: names, filling rules, findings, and label map -> RTSTRUCT -> label map round trips."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.data.phantoms import (
    PHANTOM_BIRTH_DATE,
    PHANTOM_LABELS,
    PHANTOM_PATIENT_NAME,
    make_phantom,
    write_dicom_series,
)
from medseg.errors import InputError
from medseg.io.dicom.series import read_dicom_series
from medseg.io.objects.contours import fill_polygons, mask_contours
from medseg.io.objects.roi_names import NameMatcher, canonical_name, table_from_names
from medseg.io.objects.rtstruct import read_rtstruct, write_rtstruct
from medseg.labels import Label, LabelTable

# Typical CT grids (in-plane 0.7-1 mm, slices 1.5-5 mm), every one non-square (columns != rows).
GRIDS = {
    "axial": dict(spacing=(0.8, 0.8, 3.0), flips=(False, False, False)),
    "flipped": dict(spacing=(0.7, 0.7, 1.5), flips=(True, True, True)),
    "oblique": dict(spacing=(0.95, 0.95, 5.0), flips=(False, True, False), oblique_deg=20.0),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def labels_on_grid(case, vol):
    """The phantom's true labels on the grid medseg reads from its DICOM series (that grid may flip axes)."""
    m = np.linalg.inv(vol.affine) @ case.labels.affine
    assert np.allclose(np.abs(m[:3, :3]), np.diag(np.abs(np.diag(m[:3, :3]))), atol=1e-3), "axes permuted"
    a = case.labels.array
    for ax in range(3):
        if m[ax, ax] < 0:
            a = np.flip(a, ax)
    out = vol.with_array(np.ascontiguousarray(a))
    assert np.allclose(np.linalg.inv(vol.affine) @ case.labels.affine @ [0, 0, 0, 1], m @ [0, 0, 0, 1])
    return out


def phantom_series(tmp_path, grid: str, seed: int = 3):
    case = make_phantom(seed, fov_mm=(240.0, 190.0, 140.0), **GRIDS[grid])
    folder = write_dicom_series(case, tmp_path / grid / "ct", instance_order="reversed")
    vol = read_dicom_series(folder)
    assert vol.shape[0] != vol.shape[1]
    return case, folder, vol, labels_on_grid(case, vol)


# ---- names ---------------------------------------------------------------------------------------------


def test_roi_names_match_variants_and_synonyms():
    table = LabelTable("t", (Label(1, "lung_left"), Label(2, "lung_right"), Label(3, "body"), Label(4, "spinal_cord")))
    m = NameMatcher(table)
    for name in ("Lt Lung", "Lung_L", "LUNG LEFT", "lung left", "Left Lung", "LungLeft"):
        assert m.match(name).name == "lung_left", name
    for name in ("Rt Lung", "Lung_R", "RIGHT LUNG"):
        assert m.match(name).name == "lung_right", name
    assert m.match("External").name == "body"  # from the synonyms file
    assert m.match("SpinalCord").name == "spinal_cord"
    assert m.match("GTV 1") is None and m.match("Lung") is None
    assert canonical_name("Lung_L") == "lung_left" and canonical_name("GTV 1") == "gtv_1"
    t = table_from_names(["Lung_L", "LUNG LEFT", "External", "GTV 1"], colors={"Lung_L": (1, 2, 3)})
    assert t.names == ["body", "gtv_1", "lung_left"]
    assert t.by_name("lung_left").color == (1, 2, 3)


# ---- filling and tracing -------------------------------------------------------------------------------


def square(a0, a1, b0, b1):
    return np.array([[a0, b0], [a1, b0], [a1, b1], [a0, b1]], dtype=float)


def test_fill_even_odd_holes_and_islands():
    outer, hole, island = square(1.5, 18.5, 1.5, 18.5), square(5.5, 14.5, 5.5, 14.5), square(8.5, 11.5, 8.5, 11.5)
    m = fill_polygons([outer, hole, island], (20, 20))
    want = np.zeros((20, 20), bool)
    want[2:19, 2:19] = True
    want[6:15, 6:15] = False
    want[9:12, 9:12] = True
    assert np.array_equal(m, want)
    # contours through edge voxel centres (as OpenCV traces them) keep the edge voxels
    assert np.array_equal(
        fill_polygons([square(2, 18, 2, 18)], (20, 20)), np.pad(np.ones((17, 17), bool), ((2, 1), (2, 1)))
    )


def test_traced_contours_fill_back_exactly():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    for level in (0.5, 0.55):
        for _ in range(5):
            m = gaussian_filter(rng.random((70, 45)), 3) > 0.5
            assert np.array_equal(fill_polygons(mask_contours(m, level=level), m.shape), m)


# ---- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", list(GRIDS))
def test_round_trip_keeps_every_structure(tmp_path, grid):
    case, folder, vol, truth = phantom_series(tmp_path, grid)
    found: list = []
    path = write_rtstruct(truth, folder, PHANTOM_LABELS, tmp_path / "rs.dcm", findings=found)
    res = read_rtstruct(path, folder, table=PHANTOM_LABELS)
    assert np.allclose(res.labels.affine, vol.affine) and res.labels.shape == vol.shape
    for lab in PHANTOM_LABELS.labels:
        a, b = truth.array == lab.index, res.labels.array == lab.index
        assert a.sum() > 5000
        assert dice(a, b) >= 0.98, lab.name
        assert abs(b.sum() / a.sum() - 1) <= 0.02, lab.name
        roi = next(r for r in res.rois if r["structure"] == lab.name)
        voxel_ml = a.sum() * vol.voxel_volume_mm3 / 1000
        # contour-based volume: a little smaller (corner cuts, 0.05 voxel inset), within 2 %
        assert 0.98 * voxel_ml <= roi["contour_volume_ml"] <= voxel_ml, lab.name
    assert res.unmapped == [] and not [f for f in res.findings if f["kind"] == "overlap"]
    # the object carries the patient and study modules (for the planning system) and nothing else of the patient's
    ds = pydicom.dcmread(path)
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert ds.Modality == "RTSTRUCT" and str(ds.PatientName) == PHANTOM_PATIENT_NAME
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert (
        ds.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .SeriesInstanceUID
        == src.SeriesInstanceUID
    )
    assert [r.ROIName for r in ds.StructureSetROISequence] == PHANTOM_LABELS.names
    # the table's colours, except that kidney_left (the atlas gives both kidneys one colour) gets a distinct one
    colours = [tuple(c.ROIDisplayColor) for c in ds.ROIContourSequence]
    assert colours[:3] == [lab.color for lab in PHANTOM_LABELS.labels[:3]] and len(set(colours)) == 4
    assert ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0].CodeValue == "10200004"
    assert "SeriesDescription" in ds and ds.SeriesDescription != src.SeriesDescription
    for kw in ("InstitutionName", "OtherPatientIDs", "PatientAddress"):
        assert kw not in ds
    # nothing identifying in what the reader returns
    text = repr(res.findings) + repr(res.rois) + repr(res.labels.meta)
    assert PHANTOM_PATIENT_NAME not in text and PHANTOM_BIRTH_DATE not in text


# ---- findings: synonyms, overlaps, skipped contours, unmapped ROIs ----------------------------------------


def _merge(base, extra, number: int, name: str):
    """Append ``extra``'s first ROI to ``base`` as ROI ``number`` named ``name``."""
    roi = extra.StructureSetROISequence[0]
    roi.ROINumber, roi.ROIName = number, name
    con = extra.ROIContourSequence[0]
    con.ReferencedROINumber = number
    obs = extra.RTROIObservationsSequence[0]
    obs.ReferencedROINumber = obs.ObservationNumber = number
    base.StructureSetROISequence.append(roi)
    base.ROIContourSequence.append(con)
    base.RTROIObservationsSequence.append(obs)


def test_reader_findings_and_overlap_rule(tmp_path):
    case, folder, vol, _ = phantom_series(tmp_path, "axial", seed=5)
    table = LabelTable("t", (Label(1, "body"), Label(2, "lung_left")))
    big, small = np.zeros(vol.shape, np.uint8), np.zeros(vol.shape, np.uint8)
    big[40:200, 30:180, 10:30] = 1
    small[90:130, 80:120, 15:25] = 2
    big_ds = pydicom.dcmread(write_rtstruct(vol.with_array(big), folder, table, tmp_path / "a.dcm"))
    small_ds = pydicom.dcmread(write_rtstruct(vol.with_array(small), folder, table, tmp_path / "b.dcm"))
    couch_ds = pydicom.dcmread(write_rtstruct(vol.with_array(small), folder, table, tmp_path / "c.dcm"))
    big_ds.StructureSetROISequence[0].ROIName = "External"
    _merge(big_ds, small_ds, 2, "LUNG LEFT")
    _merge(big_ds, couch_ds, 3, "Couch")
    contours = big_ds.ROIContourSequence[0].ContourSequence
    template = contours[0]
    point, line, off = (pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset())
    for c, kind, n in ((point, "POINT", 1), (line, "OPEN_PLANAR", 2)):
        c.ContourGeometricType, c.NumberOfContourPoints, c.ContourData = kind, n, list(template.ContourData)[: 3 * n]
        contours.append(c)
    normal = vol.affine[:3, 2] * np.array([-1, -1, 1])  # one slice step, LPS
    pts = np.asarray(template.ContourData, float).reshape(-1, 3) + 0.4 * normal  # 0.4 slice off its slice
    off.ContourGeometricType, off.NumberOfContourPoints, off.ContourData = (
        "CLOSED_PLANAR",
        len(pts),
        [f"{v:.4f}" for v in pts.ravel()],
    )
    contours.append(off)
    # a marker ROI (one POINT contour) and a declared ROI without contours: listed, not "unmapped"
    marker = pydicom.Dataset()
    marker.ROINumber, marker.ROIName = 4, "Iso"
    big_ds.StructureSetROISequence.append(marker)
    big_ds.ROIContourSequence.append(pydicom.Dataset())
    big_ds.ROIContourSequence[-1].ReferencedROINumber = 4
    mark = pydicom.Dataset()
    mark.ContourGeometricType, mark.NumberOfContourPoints, mark.ContourData = "POINT", 1, list(template.ContourData)[:3]
    big_ds.ROIContourSequence[-1].ContourSequence = pydicom.Sequence([mark])
    empty = pydicom.Dataset()
    empty.ROINumber, empty.ROIName = 5, "Planned"
    big_ds.StructureSetROISequence.append(empty)
    path = tmp_path / "merged.dcm"
    big_ds.save_as(path)

    res = read_rtstruct(path, folder, table=table, slice_tolerance=0.25)
    kinds = {f["kind"]: f for f in res.findings}
    assert res.unmapped == ["Couch"] and "unmapped_roi" in kinds
    assert {"point_contour", "open_contour", "contour_off_slice", "overlap"} <= set(kinds)
    assert kinds["point_contour"]["action"] == "skipped" and kinds["point_contour"]["detail"].startswith("2 ")
    assert "'Planned' has no contours" in kinds["empty_roi"]["detail"]
    n_small = int((small == 2).sum())
    assert kinds["overlap"]["detail"].startswith(f"{n_small} voxels")  # every small-box voxel was in both
    assert np.array_equal(res.labels.array == 2, small == 2)  # the smaller structure wins
    assert np.array_equal(res.labels.array == 1, (big == 1) & (small == 0))
    assert {r["name"]: r["status"] for r in res.rois} == {
        "External": "mapped",
        "LUNG LEFT": "mapped",
        "Couch": "unmapped",
        "Iso": "no_closed_contours",
        "Planned": "no_contours",
    }
    assert {r["name"]: r["structure"] for r in res.rois if r["structure"]} == {
        "External": "body",
        "LUNG LEFT": "lung_left",
    }
    # the other rule: the later table entry wins (here also lung_left); and with a 0.5 tolerance the off contour is kept
    res2 = read_rtstruct(path, folder, table=table, overlap="table")
    assert np.array_equal(res2.labels.array == 2, small == 2)
    assert "contour_between_slices" in {f["kind"] for f in res2.findings}
    # no table: one from the ROI names, synonyms applied
    res3 = read_rtstruct(path, folder)
    assert res3.table.names == ["body", "couch", "lung_left"]


def test_reader_matches_series_by_uid_not_folder(tmp_path):
    case, folder, vol, truth = phantom_series(tmp_path, "axial")
    rs = write_rtstruct(truth, folder, PHANTOM_LABELS, tmp_path / "rs.dcm")
    # another series in the same folder: the RTSTRUCT's series is still found
    other = make_phantom(9, fov_mm=(240.0, 190.0, 140.0), spacing=(1.0, 1.0, 4.0))
    write_dicom_series(other, folder / "other", series_description="other")
    res = read_rtstruct(rs, folder, table=PHANTOM_LABELS)
    assert np.count_nonzero(res.labels.array != truth.array) <= 5  # lone voxels dropped as fragments
    # a list of files works too
    res = read_rtstruct(rs, sorted(p for p in folder.iterdir() if p.is_file()), table=PHANTOM_LABELS)
    assert np.count_nonzero(res.labels.array != truth.array) <= 5
    with pytest.raises(InputError, match="references image series se"):
        read_rtstruct(rs, folder / "other")
    # an export that names no series and no instance: the one stack on its frame of reference
    ds = pydicom.dcmread(rs)
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    for item in ds.ROIContourSequence:
        for c in item.ContourSequence:
            del c.ContourImageSequence
    ds.save_as(tmp_path / "bare.dcm")
    res = read_rtstruct(tmp_path / "bare.dcm", folder, table=PHANTOM_LABELS)
    assert np.count_nonzero(res.labels.array != truth.array) <= 5
    with pytest.raises(InputError, match="names no series"):
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3"
        ds.save_as(tmp_path / "bare.dcm")
        read_rtstruct(tmp_path / "bare.dcm", folder)


def test_writer_holes_as_contours_and_small_fragments_dropped(tmp_path):
    case, folder, vol, _ = phantom_series(tmp_path, "oblique", seed=7)
    table = LabelTable("t", (Label(1, "ring", (10, 20, 30)), Label(2, "absent")))
    arr = np.zeros(vol.shape, np.uint8)
    arr[50:120, 40:110, 5] = 1
    arr[70:100, 60:90, 5] = 0  # a hole
    arr[80:85, 70:75, 5] = 1  # an island inside the hole
    arr[150, 150, 5] = 1  # a lone voxel: a fragment below one voxel face
    found: list = []
    path = write_rtstruct(vol.with_array(arr), folder, table, tmp_path / "ring.dcm", findings=found)
    ds = pydicom.dcmread(path)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["ring"]  # no ROI for an absent structure
    assert len(ds.ROIContourSequence[0].ContourSequence) == 3  # outer, hole, island
    kinds = {f["kind"]: f for f in found}
    assert kinds["small_fragment"]["detail"].startswith("1 contour") and "absent" in kinds["absent_structure"]["detail"]
    res = read_rtstruct(path, folder, table=table)
    want = arr.copy()
    want[150, 150, 5] = 0
    assert np.array_equal(res.labels.array, want)
