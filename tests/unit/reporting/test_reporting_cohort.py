"""Cohort tables: outlier flags (robust z, reference ranges), wide table and summary."""

import numpy as np
import pandas as pd
import pytest

from medseg.reporting.cohort import add_outlier_flags, read_reference_ranges, summary_frame, wide_frame

LIVER = [1500.0, 1620.0, 1480.0, 1550.0, 1700.0, 1580.0, 4200.0]


def _long():
    rows = []
    for i, v in enumerate(LIVER):
        rows.append({"case_id": f"c{i}", "structure": "liver", "status": "present", "volume_ml": v})
        status = {0: "absent", 1: "touches_border"}.get(i, "present")
        rows.append(
            {
                "case_id": f"c{i}",
                "structure": "spleen",
                "status": status,
                "volume_ml": 0.0 if status == "absent" else 150.0 + i,
            }
        )
    return pd.DataFrame(rows)


def test_robust_z_flags_the_outlier_only():
    df = add_outlier_flags(_long())
    liver = df[df.structure == "liver"].set_index("case_id")
    med = np.median(LIVER)
    mad = np.median(np.abs(np.array(LIVER) - med))
    assert liver.loc["c6", "robust_z"] == pytest.approx(0.6745 * (4200 - med) / mad)
    assert liver["outlier"].tolist() == [False] * 6 + [True]
    assert set(liver["outlier_basis"]) == {"robust_z"}
    spleen = df[df.structure == "spleen"].set_index("case_id")
    assert pd.isna(spleen.loc["c0", "outlier"]) and pd.isna(spleen.loc["c0", "robust_z"])  # absent: not judged
    assert not pd.isna(spleen.loc["c1", "robust_z"])  # a lower bound is still compared


def test_too_few_cases_are_not_judged_and_reference_ranges_win(tmp_path):
    few = add_outlier_flags(_long()[lambda d: d.case_id.isin(["c0", "c1", "c2", "c6"])])
    assert few["outlier"].isna().all()
    ranges_csv = tmp_path / "ranges.csv"
    ranges_csv.write_text("structure,low_ml,high_ml\nliver,1000,1600\n")
    ranges = read_reference_ranges(ranges_csv)
    assert ranges == {"liver": (1000.0, 1600.0)}
    df = add_outlier_flags(_long(), ranges)
    liver = df[df.structure == "liver"].set_index("case_id")
    assert liver["outlier"].tolist() == [False, True, False, False, True, False, True]
    assert set(liver["outlier_basis"]) == {"reference_range"}
    y = tmp_path / "ranges.yaml"
    y.write_text("liver: [1000, null]\n")
    assert read_reference_ranges(y) == {"liver": (1000.0, np.inf)}


def test_wide_and_summary_tables():
    df = add_outlier_flags(_long())
    wide = wide_frame(df, ["liver", "spleen", "kidney"])
    assert list(wide.columns) == [
        "case_id",
        "liver_ml",
        "spleen_ml",
        "kidney_ml",
        "liver_status",
        "spleen_status",
        "kidney_status",
    ]
    assert wide["liver_ml"].tolist() == LIVER
    assert pd.isna(wide.loc[0, "spleen_ml"]) and wide.loc[0, "spleen_status"] == "absent"  # empty, not 0
    assert wide.loc[1, "spleen_status"] == "touches_border" and wide.loc[1, "spleen_ml"] == 151.0
    summary = summary_frame(df, ["liver", "spleen"]).set_index("structure")
    v = np.array(LIVER)
    assert summary.loc["liver", "n_present"] == 7 and summary.loc["liver", "n_outliers"] == 1
    assert summary.loc["liver", "mean_ml"] == pytest.approx(v.mean())
    assert summary.loc["liver", "sd_ml"] == pytest.approx(v.std(ddof=1))
    assert summary.loc["liver", "iqr_ml"] == pytest.approx(np.percentile(v, 75) - np.percentile(v, 25))
    assert (
        summary.loc["spleen", "n_present"] == 5
        and summary.loc["spleen", "n_absent"] == 1
        and summary.loc["spleen", "n_touches_border"] == 1
    )
    assert summary.loc["spleen", "min_ml"] == 152.0  # present cases only: the lower bound (151) is left out
