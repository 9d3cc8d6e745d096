"""Hostile DICOM SEG headers are refused from the header, one line each, and a manifest lists them as unpaired.

Issue 34: a FRACTIONAL SEG with MaximumFractionalValue 0 aborted the whole ``medseg manifest from-dicom``
with highdicom's RuntimeError; a SEG declaring 10,000 segments took 40 s for highdicom to index and
minutes to read. Both are refused before highdicom sees the object.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pydicom
import pytest
from helpers import fractional_liver_seg, seg_source_images

from medseg.data.phantoms import make_phantom, write_dicom_series
from medseg.errors import InputError
from medseg.io.dicom.series import read_dicom_series
from medseg.io.objects.seg import write_dicom_seg
from medseg.labels import Label, LabelTable

LIVER = LabelTable("t", (Label(1, "liver"),))


def _series(root, name, seed):
    case = make_phantom(seed, fov_mm=(160.0, 140.0, 60.0), spacing=(2.0, 2.0, 5.0))
    folder = write_dicom_series(case, root / name, seed=seed, series_description=f"series {name}")
    return folder, read_dicom_series(folder)


def _binary_seg(folder, vol, out):
    lab = np.zeros(vol.shape, np.uint8)
    lab[10:20, 10:20, :] = 1
    return write_dicom_seg(vol.with_array(lab), folder, LIVER, out, software_version="test")


def _fractional_seg(folder, out, *, max_value: int, stored: float = 0.8):
    files = seg_source_images(folder)
    pix = np.zeros((len(files), files[0].Rows, files[0].Columns), np.float32)
    pix[:, 10:20, 10:20] = stored
    return fractional_liver_seg(files, pix, out, max_value=max_value)  # frames still hold 0..255


def _many_segments(seg_path, out, n):
    """The same SEG with ``n`` segment descriptions (its frames still belong to segment 1)."""
    ds = pydicom.dcmread(seg_path)
    item = ds.SegmentSequence[0]
    items = []
    for i in range(1, n + 1):
        it = copy.deepcopy(item)
        it.SegmentNumber, it.SegmentLabel = i, f"organ {i}"
        items.append(it)
    ds.SegmentSequence = items
    ds.save_as(out)
    return out


def test_fractional_maximum_zero_is_one_line(tmp_path):
    from medseg.io.objects.seg import read_dicom_seg

    folder, _ = _series(tmp_path, "ct", 2)
    path = _fractional_seg(folder, tmp_path / "frac0.dcm", max_value=0)
    with pytest.raises(InputError, match="MaximumFractionalValue 0: expected a whole number in 1..255") as err:
        read_dicom_seg(path, folder)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_fractional_values_over_the_maximum_are_one_line(tmp_path):
    """A declared maximum of 10 with frames holding 204: highdicom's RuntimeError becomes one InputError."""
    from medseg.io.objects.seg import read_dicom_seg

    folder, _ = _series(tmp_path, "ct", 2)
    path = _fractional_seg(folder, tmp_path / "frac10.dcm", max_value=10)
    with pytest.raises(
        InputError, match=r"segment 1 \('Liver'\) cannot be read \(RuntimeError: .*MaximumFractionalValue"
    ):
        read_dicom_seg(path, folder)


def test_seg_declaring_more_segments_than_allowed_is_refused_from_the_header(tmp_path, monkeypatch):
    """2,000 declared segments over 12 frames: refused before highdicom indexes it (10,000 took 40 s to index and
    58 s to read one segment of; now about a second for the header)."""
    from medseg.io.objects.seg import read_dicom_seg, seg_header

    folder, vol = _series(tmp_path, "ct", 2)
    many = _many_segments(_binary_seg(folder, vol, tmp_path / "one.dcm"), tmp_path / "many.dcm", 2000)
    t = time.monotonic()
    with pytest.raises(
        InputError, match=r"declares 2,000 segments, more than the limit of 1,000 \(MEDSEG_MAX_SEGMENTS\)"
    ):
        read_dicom_seg(many, folder)
    assert time.monotonic() - t < 15
    monkeypatch.setenv("MEDSEG_MAX_SEGMENTS", "5000")
    with pytest.raises(InputError, match=r"declares 2,000 segments but holds \d+ frames"):
        seg_header(many)
    few = _many_segments(tmp_path / "one.dcm", tmp_path / "few.dcm", 3)  # within both bounds: read as before
    res = read_dicom_seg(few, folder)
    assert len(res.rois) == 3 and [r["voxels"] > 0 for r in res.rois] == [True, False, False]


def test_manifest_lists_hostile_segs_as_unpaired_and_keeps_the_good_case(tmp_path):
    from medseg.data.dicom_manifest import manifest_from_dicom

    ex = tmp_path / "EXPORT"
    a, vol_a = _series(ex, "a", 1)
    b, _ = _series(ex, "b", 2)
    c, vol_c = _series(ex, "c", 3)
    _binary_seg(a, vol_a, ex / "SEG_a.dcm")
    _fractional_seg(b, ex / "SEG_b_frac0.dcm", max_value=0)
    _many_segments(_binary_seg(c, vol_c, tmp_path / "c_one.dcm"), ex / "SEG_c_many.dcm", 2000)
    res = manifest_from_dicom(ex, tmp_path / "m.csv")
    assert len(res.cases) == 1
    segs = [u for u in res.unpaired_rows if u["kind"] == "seg"]
    assert len(segs) == 2
    reasons = " | ".join(u["reason"] for u in segs)
    assert "MaximumFractionalValue 0" in reasons and "declares 2,000 segments" in reasons
    assert all("\n" not in u["reason"] for u in segs)
