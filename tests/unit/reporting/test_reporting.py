import numpy as np
import pytest

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
from medseg.io.volume import Volume
from medseg.reporting.metrics import dice, metric_rows
from medseg.reporting.volumes import structure_rows, volumes_frame


@pytest.mark.parametrize(
    "kw", [dict(spacing=(1.6, 1.6, 4.0), flips=(True, False, True)), dict(spacing=(2.0, 2.0, 3.0), oblique_deg=30.0)]
)
def test_volume_equals_voxel_count_times_voxel_volume_on_any_grid(kw):
    case = make_phantom(21, **kw)
    df = volumes_frame(structure_rows(case.case_id, case.labels, PHANTOM_LABELS, case.image))
    voxel_mm3 = float(np.prod(case.image.spacing))  # orthogonal grid: product of spacings
    for lab in PHANTOM_LABELS.labels:
        row = df[df.structure == lab.name].iloc[0]
        assert row.status == "present"
        assert row.voxel_count == case.voxel_counts[lab.name]
        assert row.volume_mm3 == pytest.approx(case.voxel_counts[lab.name] * voxel_mm3, rel=1e-9)
        assert row.volume_ml == pytest.approx(case.volumes_ml[lab.name], rel=1e-9)
        vals = case.image.array[case.labels.array == lab.index]
        assert row.intensity_mean == pytest.approx(vals.mean(), rel=1e-6)
        assert row.intensity_std == pytest.approx(vals.std(), rel=1e-6)


def test_status_distinguishes_absent_border_and_unlisted():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0:3, 4:6, 4:6] = 1  # touches the border
    lab[4:6, 4:6, 4:6] = 9  # not in the table
    vol = Volume(lab, np.diag([2.0, 2.0, 2.0, 1.0]), "x")
    df = volumes_frame(structure_rows("c", vol, PHANTOM_LABELS)).set_index("structure")
    assert df.loc["liver", "status"] == "touches_border"
    assert df.loc["spleen", "status"] == "absent" and df.loc["spleen", "volume_ml"] == 0
    assert np.isnan(df.loc["spleen", "intensity_mean"])  # empty cell, not 0
    assert df.loc["unlisted_9", "status"] == "not_in_label_table" and df.loc["unlisted_9", "voxel_count"] == 8
    assert df.loc["liver", "volume_mm3"] == pytest.approx(12 * 8.0)


def test_dice_and_empty_cases_are_explicit():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    assert np.isnan(dice(a, b))
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    ref = Volume(np.where(a, 1, 0).astype(np.uint8), np.eye(4), "r")
    pred = Volume(np.where(b, 1, 0).astype(np.uint8), np.eye(4), "p")
    rows = {r["structure"]: r for r in metric_rows("c", pred, ref, PHANTOM_LABELS)}
    assert rows["liver"]["status"] == "both_present" and rows["liver"]["dice"] == pytest.approx(0.5)
    assert rows["spleen"]["status"] == "both_empty" and np.isnan(rows["spleen"]["dice"])
    assert rows["liver"]["volume_error_ml"] == pytest.approx(0.0)
