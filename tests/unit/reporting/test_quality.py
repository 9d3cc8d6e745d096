"""Quality verdicts without ground truth (medseg.reporting.quality) on cases whose answer is known."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
from medseg.io.volume import Volume
from medseg.labels import Label, LabelTable
from medseg.reporting import cohort, quality
from medseg.reporting.volumes import structure_rows

SPACING = (4.0, 4.0, 5.0)
CT_CHECKPOINT = {"preprocessing": {"intensity": "ct_window", "spacing": [5.0, 5.0, 5.0]}}
SURE = {lab.name: 0.97 for lab in PHANTOM_LABELS.labels}


@pytest.fixture(scope="module")
def profile():
    """The input profile of six training phantoms, as a checkpoint would carry it."""
    cases = [make_phantom(s, spacing=SPACING) for s in range(11, 17)]
    expected = quality.expected_from_checkpoint(
        {
            **CT_CHECKPOINT,
            "input_profile": quality.training_profile(((c.image, c.labels) for c in cases), PHANTOM_LABELS),
        }
    )
    return expected


@pytest.fixture(scope="module")
def held_out():
    return make_phantom(21, spacing=SPACING)


def assess(case, labels=None, image=None, expected=None, confidence=SURE):
    labels = labels if labels is not None else case.labels
    image = image if image is not None else case.image
    rows = structure_rows(case.case_id, labels, PHANTOM_LABELS, image)
    return {
        r["structure"]: r
        for r in quality.assess_case(rows, image=image, labels=labels, confidence=confidence, expected=expected)
    }


def test_ras_convention_right_kidney_lies_at_positive_x(held_out):
    rows = assess(held_out)
    mid = rows["liver"]["midline_x_mm"]
    assert rows["kidney_right"]["centroid_x_mm"] - mid > 20  # RAS+: +x is the patient's right
    assert rows["kidney_left"]["centroid_x_mm"] - mid < -20


def test_clean_phantom_passes(held_out, profile):
    rows = assess(held_out, expected=profile)
    assert {s: (r["qc"], r["qc_reasons"]) for s, r in rows.items()} == {s: ("pass", "") for s in rows}


def test_swapped_kidneys_are_wrong_side(held_out, profile):
    a = held_out.labels.array.copy()
    a[held_out.labels.array == 3], a[held_out.labels.array == 4] = 4, 3
    rows = assess(held_out, labels=Volume(a, held_out.labels.affine), expected=profile)
    for side in ("kidney_left", "kidney_right"):
        assert rows[side]["qc"] == "fail"
        assert "wrong_side" in rows[side]["qc_reasons"]
    assert rows["liver"]["qc"] == "pass"


def test_swapped_kidneys_without_image_use_the_labels_centroid(held_out):
    a = held_out.labels.array.copy()
    a[held_out.labels.array == 3], a[held_out.labels.array == 4] = 4, 3
    lab = Volume(a, held_out.labels.affine)
    rows = {r["structure"]: r for r in quality.assess_case(structure_rows("c", lab, PHANTOM_LABELS), labels=lab)}
    assert "wrong_side" in rows["kidney_left"]["qc_reasons"] and "wrong_side" in rows["kidney_right"]["qc_reasons"]


def test_fragmented_mask_is_flagged(held_out, profile):
    a = held_out.labels.array.copy()
    liver = np.nonzero(a == 1)
    ax = int(np.argmax(np.ptp(np.stack(liver), axis=1)))
    cut = int(np.median(liver[ax]))
    sl = [slice(None)] * 3
    sl[ax] = slice(cut - 1, cut + 2)  # a 3-voxel gap splits the liver in two halves
    a[tuple(sl)][a[tuple(sl)] == 1] = 0
    rows = assess(held_out, labels=Volume(a, held_out.labels.affine), expected=profile)
    assert rows["liver"]["qc"] == "fail"
    assert "fragmented(largest" in rows["liver"]["qc_reasons"]
    assert rows["spleen"]["qc"] == "pass"


def test_mr_like_input_to_a_ct_checkpoint_fails_every_row(held_out, profile):
    mr = Volume(
        np.interp(held_out.image.array, [-1024, -120, 0, 60, 3071], [0, 900, 300, 500, 100]).astype(np.float32),
        held_out.image.affine,
    )
    for expected in (quality.expected_from_checkpoint(CT_CHECKPOINT), profile):  # without and with a stored profile
        rows = assess(held_out, image=mr, expected=expected)
        assert all(r["qc"] == "fail" and "not_ct(min" in r["qc_reasons"] for r in rows.values())


def test_head_sized_field_of_view_is_flagged(held_out, profile):
    # the same phantom cut to a 60 mm slab: far less than any training field of view
    sl = (slice(None), slice(None), slice(0, 12))
    img, lab = (
        Volume(held_out.image.array[sl], held_out.image.affine),
        Volume(held_out.labels.array[sl], held_out.labels.affine),
    )
    rows = assess(held_out, labels=lab, image=img, expected=profile)
    assert all(r["qc"] == "fail" and "fov(fov_z_mm" in r["qc_reasons"] for r in rows.values())


def test_mirrored_image_flags_sided_structures(held_out, profile):
    ax = int(np.argmax(np.abs(held_out.image.affine[0, :3])))
    img = Volume(np.flip(held_out.image.array, ax).copy(), held_out.image.affine)
    lab = Volume(np.flip(held_out.labels.array, ax).copy(), held_out.labels.affine)
    rows = assess(held_out, labels=lab, image=img, expected=profile)
    assert "position_unusual" in rows["liver"]["qc_reasons"]
    assert "mirrored_anatomy(liver, spleen" in rows["kidney_left"]["qc_reasons"]


@pytest.mark.parametrize("conf,verdict", [(0.95, "pass"), (0.7, "review"), (0.5, "fail")])
def test_confidence_thresholds(held_out, conf, verdict):
    rows = assess(held_out, confidence={"liver": conf})
    assert rows["liver"]["qc"] == verdict
    assert rows["liver"]["confidence"] == conf
    assert ("low_confidence" in rows["liver"]["qc_reasons"]) == (verdict != "pass")


def test_pass_agreement_thresholds():
    row = {"structure": "liver", "status": "present", "volume_ml": 10.0, "largest_component_ml": 10.0}
    assert quality._verdict(quality.row_reasons({**row, "pass_agreement": 0.95}))[0] == "pass"
    assert quality._verdict(quality.row_reasons({**row, "pass_agreement": 0.85}))[0] == "review"
    qc, why = quality._verdict(quality.row_reasons({**row, "pass_agreement": 0.5}))
    assert qc == "fail" and why == "pass_disagreement(dice 0.50<0.75)"


def test_pass_dice_between_label_grids():
    import torch

    from medseg.inference.predictor import _pass_dice

    a = torch.tensor([0, 1, 1, 1, 2, 2])
    b = torch.tensor([0, 1, 1, 2, 2, 0])
    d = _pass_dice(a, b, 4)
    assert d[1] == pytest.approx(2 * 2 / 5) and d[2] == pytest.approx(2 * 1 / 4) and np.isnan(d[3])


def test_cohort_outliers_and_absent_structures():
    table = LabelTable("t", (Label(1, "organ"),))
    rows = []
    for i, ml in enumerate([100, 102, 98, 101, 99, 103, 400]):
        rows.append(
            {
                "case_id": f"c{i}",
                "structure": "organ",
                "label": 1,
                "status": "present",
                "volume_ml": ml,
                "largest_component_ml": ml,
                "n_components": 1,
                "touches_border": False,
            }
        )
    rows.append(
        {"case_id": "c7", "structure": "organ", "label": 1, "status": "absent", "volume_ml": 0.0, "n_components": 0}
    )
    df = quality.add_cohort_verdicts(cohort.add_outlier_flags(pd.DataFrame(rows)))
    by_case = dict(zip(df["case_id"], zip(df["qc"], df["qc_reasons"], strict=False), strict=False))
    assert by_case["c0"] == ("pass", "")
    assert by_case["c6"][0] == "fail" and by_case["c6"][1].startswith("volume_outlier(z=")
    assert by_case["c7"] == ("review", "absent_usually_present(88% of cases)")
    assert table.names == ["organ"]


def test_cohort_keeps_case_reasons_and_verdicts_by_structure():
    rows = [
        {"case_id": "a", "structure": "liver", "status": "present", "qc": "fail", "qc_reasons": "wrong_side(x)"},
        {"case_id": "b", "structure": "liver", "status": "present", "qc": "pass", "qc_reasons": ""},
        {
            "case_id": "a",
            "structure": "spleen",
            "status": "present",
            "volume_ml": 10.0,
            "largest_component_ml": 5.0,
            "n_components": 2,
        },
    ]
    df = quality.add_cohort_verdicts(pd.DataFrame(rows))
    assert list(df["qc"]) == ["fail", "pass", "fail"]
    assert df["qc_reasons"].iloc[0] == "wrong_side(x)"
    assert quality.verdicts_by_structure(df) == {"liver": "fail", "spleen": "fail"}
    assert quality.verdicts_by_structure(rows[1:2]) == {"liver": "pass"}


@pytest.mark.parametrize(
    "name,side",
    [
        ("kidney_left", "left"),
        ("Lt_Lung", "left"),
        ("lung_r", "right"),
        ("adrenal_gland_right", "right"),
        ("liver", None),
        ("rectum", None),
    ],
)
def test_side_of(name, side):
    assert quality.side_of(name) == side


def test_thresholds_live_in_one_dataclass():
    d = quality.thresholds_dict()
    assert d["confidence_review"] == 0.80 and d["largest_share_fail"] == 0.60
    with pytest.raises(dataclasses.FrozenInstanceError):
        quality.THRESHOLDS.confidence_review = 0.5  # frozen


def test_volumes_csv_and_html_carry_the_verdicts_fail_first(tmp_path, held_out):
    from medseg.reporting.report import write_cohort

    a = held_out.labels.array.copy()
    a[held_out.labels.array == 3], a[held_out.labels.array == 4] = 4, 3  # kidneys swapped: fail
    lab = Volume(a, held_out.labels.affine)
    rows = quality.assess_case(
        structure_rows("case_a", lab, PHANTOM_LABELS, held_out.image),
        image=held_out.image,
        labels=lab,
        confidence={**SURE, "spleen": 0.7},
    )  # spleen unsure: review
    path = write_cohort(tmp_path, rows, PHANTOM_LABELS, montages={"case_a": None})
    df = pd.read_csv(path)
    assert dict(zip(df["structure"], df["qc"], strict=False)) == {
        "liver": "pass",
        "spleen": "review",
        "kidney_right": "fail",
        "kidney_left": "fail",
    }
    page = (tmp_path / "report.html").read_text()
    assert page.index("FAIL: wrong_side") < page.index("REVIEW: low_confidence(0.70&lt;0.80)")
    assert "2 fail, 1 review" in page


def test_ct_given_to_an_mr_checkpoint_fails(held_out):
    expected = quality.expected_from_checkpoint({"preprocessing": {"intensity": "zscore", "spacing": [1.0, 1.0, 1.0]}})
    rows = assess(held_out, expected=expected)
    assert all(r["qc"] == "fail" and "not_mr(p01" in r["qc_reasons"] for r in rows.values())


@pytest.mark.slow
def test_bench_quick_runs_and_no_other_anatomy_passes(tmp_path):
    """benchmarks/bench_qc.py --quick (about a minute): a freshly trained model; images of another anatomy or
    modality never get ``pass``; the exchanged kidneys are caught."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_qc.py"
    spec = importlib.util.spec_from_file_location("bench_qc", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "qc.txt"
    assert bench.main(["--quick", "--out", str(out), "--csv", str(tmp_path / "rows.csv")]) == 0
    text = out.read_text()
    assert "other images passing 0 (target 0)" in text
    rows = pd.read_csv(tmp_path / "rows.csv")
    swapped = rows[rows["group"] == "kidneys_swapped"].set_index("structure")
    for side in ("kidney_left", "kidney_right"):
        if (
            swapped.loc[side, "status"] != "absent"
            and abs(swapped.loc[side, "centroid_x_mm"] - swapped.loc[side, "midline_x_mm"]) > 15
        ):
            assert "wrong_side" in swapped.loc[side, "qc_reasons"]
    assert set(rows.loc[rows["group"] == "mr_like", "qc"]) == {"fail"}
