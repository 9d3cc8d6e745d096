"""``medseg run`` end to end on coarse label-coded phantoms (NIfTI files and DICOM folders) with the oracle network.

The cohort mixes in one DICOM series with a missing slice (refused) and one
'.nii.gz' that is not an image. Checked: failure isolation and exit codes,
the run directory's records, resume after SIGKILL, and that the Ray engine
writes the same CSVs as the local one.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import oracle_child_script

from medseg.cli import main
from medseg.io.atomic import TMP_PREFIX

TESTS_DIR = Path(__file__).resolve().parents[1]
PIPELINE = str(Path(__file__).resolve().parents[2] / "pipelines" / "dicom_volumetry.yaml")
CSVS = ("volumes.csv", "volumes_wide.csv", "summary.csv", "failures.csv")
N_GOOD = 6
BAD = ("bad_nifti", "zz_bad_dicom")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from helpers import ORACLE_ON_4MM, label_coded, oracle_checkpoint

    from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series
    from medseg.io.readers import write_volume

    root = tmp_path_factory.mktemp("run_cohort")
    ckpt = oracle_checkpoint(root / "oracle.pt", **ORACLE_ON_4MM)
    cases, truth = root / "cases", {}
    for i in range(N_GOOD):
        ph = make_phantom(500 + i, case_id=f"case{i}", spacing=(4.0, 4.0, 6.0), noise_hu=0)
        coded = PhantomCase(ph.case_id, label_coded(ph), ph.labels, ph.voxel_counts)
        if i % 2:
            write_dicom_series(coded, cases / ph.case_id, seed=i)
        else:
            write_volume(coded.image, cases / f"{ph.case_id}.nii.gz")
        truth[ph.case_id] = ph
    bad = make_phantom(600, case_id="bad", spacing=(4.0, 4.0, 6.0), noise_hu=0)
    write_dicom_series(
        PhantomCase("bad", label_coded(bad), bad.labels, bad.voxel_counts), cases / "zz_bad_dicom", drop_slices=(8,)
    )
    (cases / "bad_nifti.nii.gz").write_bytes(b"this is not a NIfTI file\n" * 40)
    (cases / "notes.txt").write_text("not a case\n")
    return {"cases": cases, "model": ckpt, "truth": truth}


def _args(cohort, out, *extra):
    return [
        "run",
        PIPELINE,
        "--input",
        str(cohort["cases"]),
        "--out",
        str(out),
        "--set",
        f"predict.model={cohort['model']}",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """One uninterrupted local run (1 worker)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code = main(_args(cohort, out))
    return out, code


def test_failures_are_isolated_and_recorded(cohort, reference, capsys):
    from medseg.data.phantoms import PHANTOM_BIRTH_DATE, PHANTOM_LABELS, PHANTOM_PATIENT_ID, PHANTOM_PATIENT_NAME
    from medseg.io.readers import read_volume

    out, code = reference
    assert code == 1  # done with failures
    fails = pd.read_csv(out / "failures.csv")
    assert sorted(fails["case_id"]) == sorted(BAD)
    reasons = dict(zip(fails["case_id"], fails["error"], strict=False))
    assert "bad_nifti" in reasons["bad_nifti"] and "\n" not in reasons["bad_nifti"]
    assert "slice" in reasons["zz_bad_dicom"].lower() or "spacing" in reasons["zz_bad_dicom"].lower()

    vol = pd.read_csv(out / "volumes.csv")
    good = sorted(cohort["truth"])
    assert sorted(vol["case_id"].unique()) == good
    assert len(vol) == N_GOOD * len(PHANTOM_LABELS.labels)
    for cid, ph in cohort["truth"].items():
        rec = json.loads((out / "state" / f"{cid}.json").read_text())
        assert rec["status"] == "done" and rec["seconds"] > 0 and rec["peak_rss_mb"] > 0
        assert len(rec["input_sha256"]) == 64
        for rel in rec["outputs"].values():
            assert (out / rel).is_file(), rel
        labels, image = read_volume(out / rec["outputs"]["labels"]), read_volume(rec["source"])
        assert labels.shape == image.shape  # on the input's grid (a DICOM series' own slice order)
        np.testing.assert_allclose(labels.affine, image.affine, atol=1e-3)
        liver = vol[(vol.case_id == cid) & (vol.structure == "liver")]["volume_ml"].item()
        assert liver == pytest.approx(ph.volumes_ml["liver"], rel=0.15)
        assert ("dicom_seg" in rec["outputs"]) == (int(cid[-1]) % 2 == 1)
    for cid in BAD:
        rec = json.loads((out / "state" / f"{cid}.json").read_text())
        assert rec["status"] == "failed" and rec["error"]
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["sha256"] == json.loads((out / "state" / "case0.json").read_text())["model_sha256"]
    assert {"medseg", "torch", "monai"} <= set(run["versions"]) and run["state"] == "finished"
    inputs = pd.read_csv(out / "inputs.csv")
    assert sorted(inputs["case_id"]) == sorted(good + list(BAD))  # notes.txt is not a case
    assert (out / "pipeline.yaml").is_file() and (out / "report.html").is_file()
    assert "case1 done" in (out / "run.log").read_text()
    for f in out.rglob("*"):  # no patient identifier outside the DICOM objects (SEG, SR)
        if f.is_file() and f.name not in ("seg.dcm", "sr.dcm"):
            blob = f.read_bytes()
            for secret in (PHANTOM_PATIENT_NAME, PHANTOM_PATIENT_ID, PHANTOM_BIRTH_DATE):
                assert secret.encode() not in blob, (f, secret)


def test_rerun_skips_done_cases_and_retries_failed(cohort, reference, tmp_path, capsys):
    import shutil

    ref, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    before = {c: json.loads((out / "state" / f"{c}.json").read_text()) for c in cohort["truth"]}
    assert main(_args(cohort, out, "--resume")) == 1
    assert "0 done, 6 already done, 2 failed" in capsys.readouterr().out
    for c, rec in before.items():
        assert json.loads((out / "state" / f"{c}.json").read_text())["finished"] == rec["finished"]
    assert json.loads((out / "state" / "bad_nifti.json").read_text())["attempt"] == 2
    # a changed setting redoes the cases it shapes
    assert main(_args(cohort, out, "--set", "report.min_size_ml=0.5", "--set", "report.qc=false")) == 1
    assert "6 done, 0 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_halfway_then_rerun_equals_uninterrupted(cohort, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "run"
    args = _args(cohort, out, "--workers", "2")
    proc = subprocess.Popen(
        [sys.executable, str(oracle_child_script(tmp_path)), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    done_before = set()
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # records only: an atomic write's temporary (.tmp-medseg-*-<case>.json) can be caught half-written
            states = (
                [json.loads(p.read_text()) for p in (out / "state").glob("*.json") if not p.name.startswith(TMP_PREFIX)]
                if (out / "state").is_dir()
                else []
            )
            done_before = {s["case_id"] for s in states if s.get("status") == "done"}
            if len(done_before) >= 2:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= len(done_before) < N_GOOD, "the run was not killed halfway"
    assert not (out / "volumes.csv").exists()  # cohort tables only exist once a run finished
    kept = {c: json.loads((out / "state" / f"{c}.json").read_text()) for c in done_before}

    assert main(_args(cohort, out)) == 1
    for c, rec in kept.items():  # not redone
        now_rec = json.loads((out / "state" / f"{c}.json").read_text())
        assert now_rec["finished"] == rec["finished"] and now_rec["attempt"] == 1
    redone = [json.loads((out / "state" / f"{c}.json").read_text()) for c in cohort["truth"] if c not in done_before]
    assert all(r["status"] == "done" for r in redone)
    assert not list(out.rglob(".tmp-*"))
    for name in CSVS:
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(ref / name), check_exact=True)


@pytest.mark.slow
@pytest.mark.needs_ray
def test_ray_engine_writes_the_same_csvs(cohort, reference, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from medseg.runner import run_pipeline

    ref, _ = reference
    out = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    run = functools.partial(
        run_pipeline, pipeline=PIPELINE, input=cohort["cases"], out=out, overrides=[f"predict.model={cohort['model']}"]
    )
    r = run(
        engine="ray",
        workers=2,
        progress=False,
        ray_init={"runtime_env": {"env_vars": env, "worker_process_setup_hook": "helpers.register_oracle"}},
    )
    assert r.exit_code == 1 and sorted(r.failures) == sorted(BAD)
    import ray

    assert not ray.is_initialized()  # the local instance was shut down
    assert json.loads((out / "state" / "case0.json").read_text())["engine"] == "ray"
    for name in CSVS:
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(ref / name), check_exact=True)
    # the run directory is resumable with the other engine
    r2 = run(engine="local", progress=False)
    assert sorted(r2.skipped) == sorted(cohort["truth"]) and not r2.done
