"""An independent RTSTRUCT implementation (rt-utils, test-only) reads medseg's files and writes files medseg reads.

rt-utils quirks handled here, not in medseg:
- its read-back masks are allocated (Columns, Rows, slices) but filled as [row, column] (OpenCV), which is wrong
  for non-square images; the test patches the allocation to (Rows, Columns) and transposes to medseg's
  (columns, rows) axes;
- its slices are sorted by position along the normal; each is mapped to medseg's slice index by its position;
- ``create_new`` needs StudyTime/StudyID/SeriesDate/SeriesTime, which the phantom series lack: added here.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.data.phantoms import PHANTOM_LABELS
from medseg.io.objects.rtstruct import read_rtstruct, write_rtstruct
from medseg.io.volume import LPS_TO_RAS

rt_utils = pytest.importorskip("rt_utils")

from test_rtstruct import dice, phantom_series  # noqa: E402  (same folder; pytest puts it on sys.path)


@pytest.fixture
def rtutils_rows_cols(monkeypatch):
    import rt_utils.image_helper as ih

    monkeypatch.setattr(
        ih, "create_empty_series_mask", lambda sd: np.zeros((int(sd[0].Rows), int(sd[0].Columns), len(sd)), bool)
    )
    monkeypatch.setattr(ih, "create_empty_slice_mask", lambda s: np.zeros((int(s.Rows), int(s.Columns)), bool))


def _slice_indices(series_data, vol) -> list[int]:
    inv = np.linalg.inv(vol.affine)
    out = []
    for s in series_data:
        ijk = inv[:3, :3] @ (LPS_TO_RAS[:3, :3] @ np.asarray(s.ImagePositionPatient, float)) + inv[:3, 3]
        out.append(int(round(ijk[2])))
    return out


@pytest.mark.parametrize("grid", ["axial", "oblique"])
def test_rtutils_and_medseg_read_each_other(tmp_path, grid, rtutils_rows_cols):
    from rt_utils import RTStructBuilder

    case, folder, vol, truth = phantom_series(tmp_path, grid)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.StudyTime, ds.StudyID, ds.SeriesDate, ds.SeriesTime = "120000", "1", "20260101", "120000"
        ds.save_as(f)

    # rt-utils reads medseg's RTSTRUCT
    path = write_rtstruct(truth, folder, PHANTOM_LABELS, tmp_path / "medseg_rs.dcm")
    rs = RTStructBuilder.create_from(str(folder), str(path))
    assert rs.get_roi_names() == PHANTOM_LABELS.names
    ks = _slice_indices(rs.series_data, vol)
    assert sorted(ks) == list(range(vol.shape[2]))
    for lab in PHANTOM_LABELS.labels:
        m = rs.get_roi_mask_by_name(lab.name)  # (rows, columns, slices) with the patch
        got = np.zeros(vol.shape, bool)
        for i, k in enumerate(ks):
            got[:, :, k] = m[:, :, i].T
        want = truth.array == lab.index
        assert dice(got, want) >= 0.98, (lab.name, dice(got, want))

    # medseg reads rt-utils' RTSTRUCT
    new = RTStructBuilder.create_new(str(folder))
    ks = _slice_indices(new.series_data, vol)
    for lab in PHANTOM_LABELS.labels:
        want = truth.array == lab.index
        m = np.stack([want[:, :, k].T for k in ks], axis=-1)
        new.add_roi(mask=m, name=lab.name, color=list(lab.color))
    new.save(str(tmp_path / "rtutils_rs.dcm"))
    res = read_rtstruct(tmp_path / "rtutils_rs.dcm", folder, table=PHANTOM_LABELS)
    for lab in PHANTOM_LABELS.labels:
        got, want = res.labels.array == lab.index, truth.array == lab.index
        assert dice(got, want) >= 0.98, (lab.name, dice(got, want))
