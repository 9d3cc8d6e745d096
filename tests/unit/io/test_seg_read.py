"""DICOM SEG (binary and fractional) read back onto the referenced series' grid."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import fractional_liver_seg, seg_source_images
from test_rtstruct import phantom_series  # same folder (pytest puts it on sys.path)

from medseg.data.phantoms import PHANTOM_LABELS
from medseg.io.objects.seg import read_dicom_seg, write_dicom_seg
from medseg.labels import Label, LabelTable


@pytest.mark.parametrize("grid", ["flipped", "oblique"])
def test_binary_seg_round_trip_by_label_and_by_code(tmp_path, grid):
    case, folder, vol, truth = phantom_series(tmp_path, grid)
    path = write_dicom_seg(truth, folder, PHANTOM_LABELS, tmp_path / "x.seg.dcm", software_version="test")
    res = read_dicom_seg(path, folder, table=PHANTOM_LABELS)
    assert np.allclose(res.labels.affine, vol.affine)
    assert np.array_equal(res.labels.array, truth.array)
    assert {r["structure"] for r in res.rois} == set(PHANTOM_LABELS.names) and res.unmapped == []
    # other names, same SNOMED codes: matched by coded concept, in this table's own indices
    other = LabelTable(
        "other", tuple(Label(10 + lab.index, f"organ_{lab.index}", None, lab.snomed) for lab in PHANTOM_LABELS.labels)
    )
    res = read_dicom_seg(path, folder, table=other)
    assert all(r["matched_by"] == "code" for r in res.rois)
    for lab in PHANTOM_LABELS.labels:
        assert np.array_equal(res.labels.array == 10 + lab.index, truth.array == lab.index)
    # a table missing a structure: its segment is listed, not guessed
    partial = LabelTable("p", (Label(1, "liver"),))
    res = read_dicom_seg(path, folder, table=partial)
    assert sorted(res.unmapped) == ["kidney_left", "kidney_right", "spleen"]
    assert any(f["kind"] == "unmapped_segment" for f in res.findings)


def test_fractional_seg_thresholded(tmp_path):
    case, folder, vol, truth = phantom_series(tmp_path, "axial")
    files = seg_source_images(folder)
    inv = np.linalg.inv(vol.affine)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    ks = [
        int(round((inv[:3, :3] @ (lps_to_ras @ np.asarray(d.ImagePositionPatient, float)) + inv[:3, 3])[2]))
        for d in files
    ]
    liver = truth.array == 1
    # fraction 0.8 inside the liver, 0.3 in a shell one voxel around it (below the 0.5 threshold)
    from scipy.ndimage import binary_dilation

    shell = binary_dilation(liver, iterations=1) & ~liver
    frac = np.where(liver, 0.8, np.where(shell, 0.3, 0.0)).astype(np.float32)
    pixels = np.stack([frac[:, :, k].T for k in ks])
    fractional_liver_seg(files, pixels, tmp_path / "frac.dcm")
    res = read_dicom_seg(tmp_path / "frac.dcm", folder)
    assert res.table.names == ["liver"]
    assert np.array_equal(res.labels.array == 1, liver)
    res = read_dicom_seg(tmp_path / "frac.dcm", folder, fraction_threshold=0.2)
    assert np.array_equal(res.labels.array == 1, liver | shell)
