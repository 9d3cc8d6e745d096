"""metrics.csv: overlap and surface distances on known answers, MONAI as an independent reference, empty cases."""

import numpy as np
import pytest

from medseg.io.volume import Volume
from medseg.labels import Label, LabelTable
from medseg.reporting.metrics import metric_rows
from medseg.reporting.surface import assd, hd95, nsd, surface_distances

TABLE = LabelTable("t", (Label(1, "a"), Label(2, "b"), Label(3, "c"), Label(4, "d")))


def _rows(pred, ref, spacing, **kw):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [5.0, -7.0, 11.0]
    return {r["structure"]: r for r in metric_rows("c", Volume(pred, aff), Volume(ref, aff), TABLE, **kw)}


def test_cube_shifted_along_z_has_known_dice_iou_and_hd95():
    spacing = (0.8, 1.0, 2.5)
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[10:30, 10:30, 10:30] = 1
    pred = np.zeros_like(ref)
    pred[10:30, 10:30, 13:33] = 1  # shifted 3 slices = 7.5 mm
    r = _rows(pred, ref, spacing)["a"]
    assert r["status"] == "both_present"
    assert r["dice"] == pytest.approx(17 / 20)
    assert r["iou"] == pytest.approx(17 / 23)
    # Both z-faces of each cube lie 3 slices from the other cube's; they are > 5% of the surface.
    assert r["hd95_mm"] == pytest.approx(7.5)
    assert r["volume_error_ml"] == pytest.approx(0.0)
    assert r["nsd"] < 1.0 and r["nsd_tolerance_mm"] == 2.0
    loose = _rows(pred, ref, spacing, nsd_tolerance_mm=7.5)["a"]
    assert loose["nsd"] == pytest.approx(1.0)


def test_surface_distances_match_brute_force():
    from scipy.ndimage import binary_erosion
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    spacing = (0.7, 1.3, 2.1)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in (30, 28, 20)], indexing="ij")
    a = ((zz - 14) * 0.7) ** 2 + ((yy - 13) * 1.3) ** 2 + ((xx - 9) * 2.1) ** 2 <= 9.0**2
    b = (((zz - 16) * 0.7) / 1.2) ** 2 + ((yy - 12) * 1.3) ** 2 + ((xx - 10) * 2.1) ** 2 <= 8.0**2
    b |= rng.random(b.shape) > 0.998  # a few stray voxels
    d_ab, d_ba = surface_distances(a, b, spacing)

    def surf(m):
        s = m & ~binary_erosion(
            m,
            structure=np.array(
                [
                    [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                    [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                ],
                bool,
            ),
            border_value=0,
        )  # noqa: E501
        return np.argwhere(s) * np.asarray(spacing)

    pa, pb = surf(a), surf(b)
    brute_ab = cKDTree(pb).query(pa)[0]
    brute_ba = cKDTree(pa).query(pb)[0]
    np.testing.assert_allclose(np.sort(d_ab), np.sort(brute_ab), atol=1e-9)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(brute_ba), atol=1e-9)
    assert hd95(d_ab, d_ba) == pytest.approx(max(np.percentile(brute_ab, 95), np.percentile(brute_ba, 95)))
    assert assd(d_ab, d_ba) == pytest.approx(np.concatenate([brute_ab, brute_ba]).mean())
    assert nsd(d_ab, d_ba, 1.0) == pytest.approx(np.mean(np.concatenate([brute_ab, brute_ba]) <= 1.0))


def test_hd95_assd_nsd_agree_with_monai():
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    spacing = (0.9, 1.1, 3.0)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in (50, 44, 24)], indexing="ij")
    ref = (((zz - 25) * 0.9) / 18) ** 2 + (((yy - 22) * 1.1) / 15) ** 2 + (((xx - 12) * 3.0) / 25) ** 2 <= 1
    pred = (((zz - 27) * 0.9) / 16) ** 2 + (((yy - 21) * 1.1) / 17) ** 2 + (((xx - 11) * 3.0) / 27) ** 2 <= 1
    r = _rows(pred.astype(np.uint8), ref.astype(np.uint8), spacing, nsd_tolerance_mm=1.5)["a"]

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    p, g = onehot(pred), onehot(ref)
    hd = float(compute_hausdorff_distance(p, g, percentile=95, spacing=spacing)[0, 0])
    asd = float(compute_average_surface_distance(p, g, symmetric=True, spacing=spacing)[0, 0])
    sd = float(compute_surface_dice(p, g, class_thresholds=[1.5], spacing=spacing)[0, 0])
    assert r["hd95_mm"] == pytest.approx(hd, rel=1e-6)
    assert r["assd_mm"] == pytest.approx(asd, rel=1e-6)
    assert r["nsd"] == pytest.approx(sd, rel=1e-6)
    assert 1.0 < r["hd95_mm"] < 10.0


def test_empty_cases_are_explicit():
    ref = np.zeros((12, 12, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1  # a: both present
    pred[2:6, 2:6, 3:7] = 1
    ref[8:10, 8:10, 8:10] = 2  # b: missed by the prediction
    pred[0:2, 8:10, 8:10] = 3  # c: predicted, not in the reference; d: in neither
    rows = _rows(pred, ref, (1.0, 1.0, 1.0))
    assert (
        rows["a"]["status"] == "both_present"
        and rows["a"]["dice"] == pytest.approx(0.75)
        and rows["a"]["hd95_mm"] == pytest.approx(1.0)
    )
    b, c, d = rows["b"], rows["c"], rows["d"]
    assert b["status"] == "pred_empty" and b["dice"] == 0 and b["iou"] == 0 and b["nsd"] == 0
    assert np.isnan(b["hd95_mm"]) and np.isnan(b["assd_mm"]) and b["volume_error_pct"] == pytest.approx(-100.0)
    assert c["status"] == "ref_empty" and c["dice"] == 0 and np.isnan(c["hd95_mm"]) and np.isnan(c["volume_error_pct"])
    assert c["volume_error_ml"] == pytest.approx(0.008) and c["abs_volume_error_ml"] == pytest.approx(0.008)
    assert d["status"] == "both_empty"
    for key in ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "volume_error_pct"):
        assert np.isnan(d[key]), key
    assert d["volume_error_ml"] == 0


def test_evaluate_pairs_references_by_case_name_not_by_glob_order(tmp_path):
    """Predictions of nnU-Net-named inputs (case_10_0000 sorts before case_1_0000) meet references named
    case_1, case_10: each case's Dice must come from its own reference, whatever order the globs gave."""
    import glob

    import nibabel as nib
    import pandas as pd

    from medseg.api import evaluate

    (tmp_path / "pred").mkdir(), (tmp_path / "ref").mkdir()
    for case, size in (
        ("case_1", 4),
        ("case_10", 8),
    ):  # the same cube in prediction and reference: Dice 1 when paired right
        lab = np.zeros((16, 16, 16), np.uint8)
        lab[2 : 2 + size, 2 : 2 + size, 2 : 2 + size] = 1
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "pred" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "ref" / f"{case}.nii.gz"))
    pred, ref = sorted(glob.glob(str(tmp_path / "pred" / "*"))), sorted(glob.glob(str(tmp_path / "ref" / "*")))
    assert [p.split("/")[-1][:7] for p in pred] != [r.split("/")[-1][:7] for r in ref]  # the orders differ
    table = LabelTable(name="t", labels=[Label(1, "cube")])
    out = evaluate(pred=pred, ref=ref, out=tmp_path / "m.csv", label_table=table, surface=False)
    rows = pd.read_csv(out)
    assert sorted(rows["case_id"]) == ["case_10_0000", "case_1_0000"]
    assert rows["dice"].tolist() == [1.0, 1.0]
    # references named otherwise keep the documented rule: paired in the order given
    (tmp_path / "ref" / "case_1.nii.gz").rename(tmp_path / "ref" / "truth_a.nii.gz")
    (tmp_path / "ref" / "case_10.nii.gz").rename(tmp_path / "ref" / "truth_b.nii.gz")
    out = evaluate(
        pred=pred,
        ref=[tmp_path / "ref" / "truth_b.nii.gz", tmp_path / "ref" / "truth_a.nii.gz"],
        out=tmp_path / "m2.csv",
        label_table=table,
        surface=False,
    )
    assert pd.read_csv(out)["dice"].tolist() == [1.0, 1.0]


def test_report_pairs_images_with_label_maps_by_case_name(tmp_path):
    """labelsTr/case_1 + imagesTr/case_1_0000: each structure's intensity comes from its own case's image."""
    import glob

    import nibabel as nib
    import pandas as pd

    from medseg.api import report

    (tmp_path / "labels").mkdir(), (tmp_path / "images").mkdir()
    for case, value in (("case_1", 10.0), ("case_10", 100.0)):
        lab = np.zeros((12, 12, 12), np.uint8)
        lab[3:9, 3:9, 3:9] = 1
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "labels" / f"{case}.nii.gz"))
        nib.save(
            nib.Nifti1Image(np.full((12, 12, 12), value, np.float32), np.eye(4)),
            str(tmp_path / "images" / f"{case}_0000.nii.gz"),
        )
    labels, images = (
        sorted(glob.glob(str(tmp_path / "labels" / "*"))),
        sorted(glob.glob(str(tmp_path / "images" / "*"))),
    )
    out = report(
        labels=labels,
        images=images,
        out=tmp_path / "rep",
        label_table=LabelTable(name="t", labels=[Label(1, "cube")]),
        qc=False,
        html=False,
    )
    rows = pd.read_csv(out).set_index("case_id")
    assert rows.loc["case_1", "intensity_mean"] == 10.0 and rows.loc["case_10", "intensity_mean"] == 100.0
