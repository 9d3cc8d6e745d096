"""Memory of the per-label measurements follows the values present, never the largest value (issue 34).

A label map of a few bytes with one voxel of 2**31 - 1 used to end in a MemoryError from
``scipy.ndimage.find_objects`` (a box per value from 1 to the largest); 4e7 took 2.2 GB.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from medseg.io.volume import Volume
from medseg.labels import Label, LabelTable

HUGE = (2**31 - 1, 40_000_000)
TABLE = LabelTable("t", (Label(1, "cube"), Label(7, "dot")))


def _hostile(dtype=np.int64) -> Volume:
    lab = np.zeros((6, 6, 6), dtype)
    lab[1:3, 1:3, 1:3] = 1
    lab[4, 4, 4] = HUGE[0]
    lab[5, 0, 5] = HUGE[1]
    lab[0, 5, 0] = 7
    return Volume(lab, np.diag([2.0, 2.0, 2.0, 1.0]), "hostile")


def _peak_mb(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def test_label_boxes_from_the_values_present():
    from medseg.io.volume import label_boxes

    vol = _hostile()
    boxes, peak = _peak_mb(lambda: label_boxes(vol.array))
    assert peak < 5, f"{peak:.1f} MB for a 216-voxel map"
    assert sorted(boxes) == [1, 7, *sorted(HUGE)]
    assert boxes[HUGE[0]] == (slice(4, 5), slice(4, 5), slice(4, 5))
    assert boxes[1] == (slice(1, 3), slice(1, 3), slice(1, 3))
    dense = np.zeros((3, 3, 3), np.uint8)
    dense[0, 0, 0], dense[2, 2, 2] = 2, 5  # the small-value path agrees: absent values have no box
    assert label_boxes(dense) == {2: (slice(0, 1),) * 3, 5: (slice(2, 3),) * 3}
    assert label_boxes(np.zeros((2, 2, 2), np.int32)) == {}


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_volumes_rows_report_huge_values_as_unlisted_in_bounded_memory(dtype):
    from medseg.reporting.volumes import structure_rows

    vol = _hostile(dtype)
    rows, peak = _peak_mb(lambda: structure_rows("c", vol, TABLE))
    assert peak < 20, f"{peak:.1f} MB"
    by_label = {r["label"]: r for r in rows}
    assert by_label[1]["voxel_count"] == 8 and by_label[7]["voxel_count"] == 1
    for v in HUGE:
        assert by_label[v]["status"] == "not_in_label_table" and by_label[v]["structure"] == f"unlisted_{v}"
        assert by_label[v]["voxel_count"] == 1


def test_metrics_and_totalseg_statistics_in_bounded_memory():
    from medseg.reporting.metrics import metric_rows
    from medseg.reporting.totalseg_stats import statistics

    vol = _hostile()
    rows, peak = _peak_mb(lambda: metric_rows("c", vol, vol, TABLE, surface=False))
    assert peak < 20, f"metrics: {peak:.1f} MB"
    assert [r["dice"] for r in rows] == [1.0, 1.0]
    image = np.full(vol.array.shape, 50.0, np.float32)
    stats, peak = _peak_mb(lambda: statistics(vol, TABLE, image, exclude_masks_at_border=False))
    assert peak < 20, f"statistics: {peak:.1f} MB"
    assert stats["cube"]["volume"] == 64.0 and stats["cube"]["intensity"] == 50.0


def test_report_of_a_tiny_map_with_huge_values(tmp_path):
    import nibabel as nib
    import pandas as pd

    from medseg.api import report

    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(_hostile(np.int32).array, np.eye(4)), str(path))
    assert path.stat().st_size < 300
    out, peak = _peak_mb(lambda: report(labels=[path], out=tmp_path / "rep", label_table=TABLE, qc=False, html=False))
    assert peak < 50, f"{peak:.1f} MB"
    rows = pd.read_csv(out)
    assert set(rows.loc[rows["status"] == "not_in_label_table", "label"]) == set(HUGE)
