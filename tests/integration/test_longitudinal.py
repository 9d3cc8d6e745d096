"""Changes over time (issue 33): two studies of one synthetic patient with a known change in volume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pydicom
from helpers import label_coded

from medseg.cli import main
from medseg.data.phantoms import PHANTOM_PATIENT_ID, PHANTOM_PATIENT_NAME, make_phantom, write_dicom_series
from medseg.io.readers import write_label_map


def _no_identifiers(folder, *secrets):
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix in (".csv", ".html", ".json", ".log"):
            text = f.read_text(errors="ignore")
            for s in secrets:
                assert s not in text, (f, s)


def test_manifest_subjects_and_dates_give_the_known_change(tmp_path, capsys):
    """Label maps whose volumes are exact (the phantoms' truth): the change and the days are known exactly."""
    cases = {"a_t0": (1, "2026-01-05"), "a_t1": (2, "2026-03-16"), "b_t0": (3, "2025-12-01")}
    truth = {}
    for cid, (seed, _) in cases.items():
        case = make_phantom(seed, case_id=cid, spacing=(3.0, 3.0, 6.0))
        write_label_map(case.labels, tmp_path / "labels" / f"{cid}.nii.gz")
        truth[cid] = case.volumes_ml
    manifest = tmp_path / "visits.csv"
    pd.DataFrame(
        {
            "case_id": list(cases),
            "subject": ["MRN-0042", "MRN-0042", "MRN-0099"],
            "date": [d for _, d in cases.values()],
        }
    ).to_csv(manifest, index=False)
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--labels",
                str(tmp_path / "labels"),
                "--label-table",
                "abdomen_phantom",
                "--out",
                str(out),
                "--longitudinal",
                str(manifest),
            ]
        )
        == 0
    )
    lon = pd.read_csv(out / "longitudinal.csv")
    a = lon[lon["case_id"] == "a_t1"].set_index("structure")
    assert len(lon["patient_key"].unique()) == 2 and set(lon["time_point"]) == {0, 1}
    vols = pd.read_csv(out / "volumes.csv").set_index(["case_id", "structure"])["volume_ml"]
    for structure in ("liver", "spleen", "kidney_left", "kidney_right"):
        change = vols[("a_t1", structure)] - vols[("a_t0", structure)]
        assert abs(a.loc[structure, "change_from_baseline_ml"] - change) < 1e-9
        assert abs(a.loc[structure, "change_from_previous_pct"] - 100 * change / vols[("a_t0", structure)]) < 1e-6
        assert a.loc[structure, "days_from_baseline"] == 70 and a.loc[structure, "days_from_previous"] == 70
        assert abs(change - (truth["a_t1"][structure] - truth["a_t0"][structure])) < 0.02 * truth["a_t0"][structure]
        big = abs(change) > 0.5 and abs(change) > 0.1 * vols[("a_t0", structure)]
        assert bool(a.loc[structure, "flag"]) == big
    b = lon[lon["case_id"] == "b_t0"]
    assert (b["time_point"] == 0).all() and not b["flag"].any()
    assert (out / "longitudinal").is_dir() and len(list((out / "longitudinal").glob("pt*.png"))) == 2
    assert "Changes over time" in (out / "report.html").read_text()
    _no_identifiers(out, "MRN-0042", "MRN-0099", "2026-01-05", "2026-03-16")


def test_dicom_studies_of_one_patient_are_paired_by_a_hashed_id_and_their_dates(oracle_checkpoint, tmp_path, capsys):
    folders = []
    for seed, date in ((11, "20260110"), (12, "20260401")):
        case = make_phantom(seed, case_id=f"s{seed}", spacing=(2.0, 2.0, 4.0))
        folder = write_dicom_series(
            replace(case, image=label_coded(case)), tmp_path / "export" / f"study{seed}", seed=seed
        )
        for f in folder.iterdir():
            ds = pydicom.dcmread(f)
            ds.StudyDate = ds.SeriesDate = date
            ds.save_as(f)
        folders.append(folder)
    assert (
        main(
            [
                "predict",
                "--model",
                str(oracle_checkpoint),
                *map(str, folders),
                "--out",
                str(tmp_path / "preds"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "report"
    assert main(["report", "--labels", str(tmp_path / "preds"), "--out", str(out), "--longitudinal"]) == 0
    lon = pd.read_csv(out / "longitudinal.csv")
    assert lon["patient_key"].nunique() == 1 and lon["patient_key"].iloc[0].startswith("pt")
    later = lon[lon["time_point"] == 1].set_index("structure")
    assert (later["case_id"] == "study12").all() and (later["days_from_baseline"] == 81).all()
    vols = pd.read_csv(out / "volumes.csv").set_index(["case_id", "structure"])["volume_ml"]
    for structure, row in later.iterrows():
        assert np.isclose(row["change_from_baseline_ml"], vols[("study12", structure)] - vols[("study11", structure)])
    _no_identifiers(out, PHANTOM_PATIENT_ID, PHANTOM_PATIENT_NAME, "LEAKCHECK", "20260110", "20260401")
    # the pipeline setting: the same pairing in a run directory
    run = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "dicom_volumetry",
                "--input",
                str(tmp_path / "export"),
                "--out",
                str(run),
                "--no-progress",
                "--set",
                f"predict.model={oracle_checkpoint}",
                "--set",
                "report.longitudinal=dicom",
            ]
        )
        == 0
    )
    in_run = pd.read_csv(run / "longitudinal.csv")
    assert sorted(in_run["days_from_baseline"].unique()) == [0, 81] and in_run["patient_key"].nunique() == 1
    _no_identifiers(run, PHANTOM_PATIENT_ID, "LEAKCHECK", "20260110", "20260401")
