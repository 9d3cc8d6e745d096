"""Outputs and run directories under careless and hostile use (issue 17): nothing of the user's is lost or touched.

Every test builds its inputs, hashes the tree outside ``--out`` before and
after, and checks the documented answer: one line on stderr and exit 2 for a
refusal, a finding (not a lost label map) for an optional output that fails.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import oracle_child_script

from medseg.cli import main

PIPELINE = str(Path(__file__).resolve().parents[2] / "pipelines" / "dicom_volumetry.yaml")


# -- helpers ---------------------------------------------------------------------------------------


def tree(root: Path, exclude: Path | None = None) -> dict:
    """rel path -> sha256 (files), link target (symlinks), "dir" (folders), excluding ``exclude``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        if exclude is not None and (d == exclude or exclude in d.parents):
            dirs[:] = []
            continue
        for name in dirs + files:
            p = d / name
            if exclude is not None and p == exclude:
                continue
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(capsys, argv, needle: str = "") -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg: error:") and needle in err, err
    return err


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """An oracle checkpoint on a 4 mm grid and a few label-coded phantoms (NIfTI and DICOM) to copy from."""
    from helpers import ORACLE_ON_4MM, label_coded, oracle_checkpoint

    from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series
    from medseg.io.readers import write_volume

    root = tmp_path_factory.mktemp("hostile_kit")
    ckpt = oracle_checkpoint(root / "oracle.pt", **ORACLE_ON_4MM)
    niftis = []
    for i in range(3):
        ph = make_phantom(700 + i, case_id=f"n{i}", spacing=(4.0, 4.0, 6.0), noise_hu=0)
        niftis.append(write_volume(label_coded(ph), root / "src" / f"n{i}.nii.gz"))
    ph = make_phantom(710, case_id="d", spacing=(4.0, 4.0, 6.0), noise_hu=0)
    dicom = write_dicom_series(PhantomCase("d", label_coded(ph), ph.labels, ph.voxel_counts), root / "src" / "dicom")
    return {"model": str(ckpt), "niftis": niftis, "dicom": dicom}


def cases_folder(kit, folder: Path, names=("n0", "n1"), dicom: str | None = None) -> Path:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for src, name in zip(kit["niftis"], names, strict=False):
        shutil.copy(src, folder / f"{name}.nii.gz")
    if dicom:
        shutil.copytree(kit["dicom"], folder / dicom)
    return folder


def run_args(kit, cases: Path, out: Path, *extra) -> list:
    return [
        "run",
        PIPELINE,
        "--input",
        str(cases),
        "--out",
        str(out),
        "--set",
        f"predict.model={kit['model']}",
        "--no-progress",
        *extra,
    ]


def multi_valued_patient_name(folder: Path) -> None:
    """PatientName ``A^B\\C^D``: a legal multi-valued PN that highdicom refuses to copy into a SEG."""
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientName = "DOE^JOHN\\SMITH^J"
        ds.save_as(f)


# -- 1. label map first; an optional output that fails is a finding ---------------------------------


def test_seg_failure_keeps_label_map_and_becomes_a_finding_in_predict(kit, tmp_path):
    import shutil

    series = tmp_path / "in" / "series"
    shutil.copytree(kit["dicom"], series)
    multi_valued_patient_name(series)
    before = tree(tmp_path / "in")
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            str(oracle_child_script(tmp_path)),
            "predict",
            "--no-progress",
            "--model",
            kit["model"],
            str(series),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "dicom seg not written" in lines[0] and "series" in lines[0], r.stderr
    side = json.loads((out / "series.json").read_text())
    assert (out / "series.nii.gz").is_file() and side["outputs"] == {"label_map": "series.nii.gz"}
    assert [f["output"] for f in side["findings"] if f["kind"] == "output_not_written"] == ["dicom_seg"]
    assert not (out / "series.seg.dcm").exists()
    assert tree(tmp_path / "in") == before


def test_seg_failure_keeps_label_map_in_a_run_with_the_same_sidecar_schema(kit, tmp_path, capsys):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0",), dicom="dcm")
    multi_valued_patient_name(cases / "dcm")
    before = tree(cases)
    out = tmp_path / "run"
    assert main(run_args(kit, cases, out)) == 0, capsys.readouterr().err
    rec = json.loads((out / "state" / "dcm.json").read_text())
    assert rec["status"] == "done" and "dicom_seg" not in rec["outputs"]
    assert [f["output"] for f in rec["findings"]] == ["dicom_seg"]
    side = json.loads((out / rec["outputs"]["labels_sidecar"]).read_text())
    assert side["outputs"] == {"label_map": "labels.nii.gz"} and side["findings"] == rec["findings"]
    # one sidecar schema for predict and run
    pred = tmp_path / "pred"
    assert (
        main(["predict", "--no-progress", "--model", kit["model"], str(cases / "n0.nii.gz"), "--out", str(pred)]) == 0
    )
    run_side = json.loads((out / "cases" / "n0" / "labels.json").read_text())
    pred_side = json.loads((pred / "n0.json").read_text())
    assert set(run_side) == set(pred_side) and run_side["schema"] == pred_side["schema"] == "medseg.case/1"
    assert tree(cases) == before


def test_a_seg_error_quoting_the_patient_name_is_recorded_without_it(kit, tmp_path, monkeypatch, caplog):
    import medseg.io.objects.seg
    from medseg.data.phantoms import PHANTOM_PATIENT_ID, PHANTOM_PATIENT_NAME

    def refuse(*args, **kwargs):
        raise ValueError(f"value {PHANTOM_PATIENT_NAME!r} of PatientName (patient {PHANTOM_PATIENT_ID}) is invalid")

    monkeypatch.setattr(medseg.io.objects.seg, "write_dicom_seg", refuse)
    out = tmp_path / "out"
    assert main(["predict", "--no-progress", "--model", kit["model"], str(kit["dicom"]), "--out", str(out)]) == 0
    finding = json.loads((out / "dicom.json").read_text())["findings"][-1]
    assert finding["output"] == "dicom_seg" and "ValueError" in finding["error"] and "<redacted>" in finding["error"]
    for secret in (PHANTOM_PATIENT_NAME, PHANTOM_PATIENT_ID, "LEAKCHECK"):
        assert secret not in json.dumps(finding) and secret not in caplog.text


# -- 2. outputs never overwrite an input -----------------------------------------------------------


def test_predict_refuses_to_write_over_its_input(kit, tmp_path, capsys):
    import shutil

    folder = tmp_path / "dir"
    folder.mkdir()
    scan = Path(shutil.copy(kit["niftis"][0], folder / "scan.nii.gz"))
    before = tree(tmp_path)
    one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(scan), "--out", str(folder)],
        "would overwrite input",
    )
    # through another spelling of the same folder, and into a DICOM input folder
    one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(scan), "--out", str(folder / ".." / "dir")],
        "would overwrite input",
    )
    series = Path(shutil.copytree(kit["dicom"], tmp_path / "series"))
    before = tree(tmp_path)
    one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(series), "--out", str(series)],
        "inside input folder",
    )
    assert tree(tmp_path) == before


# -- 3. never delete what medseg did not write ------------------------------------------------------


def test_run_refuses_a_foreign_folder_and_touches_nothing_in_it(kit, tmp_path, capsys):
    cases = cases_folder(kit, tmp_path / "cases")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    for name in ("metrics.csv", "report.html", "volumes.csv", "status.csv"):
        (mine / name).write_text(f"the user's own {name}\n")
    (mine / ".tmp-notes.txt").write_text("keep me\n")
    (mine / "sub" / ".tmp-draft.docx").write_text("keep me too\n")
    before = tree(tmp_path)
    one_line(capsys, run_args(kit, cases, mine), "not a medseg run directory")
    assert tree(tmp_path) == before


def test_cleanup_removes_only_medseg_temporaries(kit, tmp_path, capsys):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0",))
    out = tmp_path / "run"
    assert main(run_args(kit, cases, out)) == 0
    assert (out / ".medseg-run").is_file()
    (out / "cases" / "n0" / ".tmp-medseg-0badcafe-labels.nii.gz").write_bytes(b"half a file")
    (out / "cases" / "n0" / ".tmp-user-notes.txt").write_text("not medseg's\n")
    (out / "notes").mkdir()
    (out / "notes" / ".tmp-x.txt").write_text("not medseg's either\n")
    capsys.readouterr()
    assert main(run_args(kit, cases, out)) == 0
    assert not list(out.rglob(".tmp-medseg-*"))
    assert (out / "cases" / "n0" / ".tmp-user-notes.txt").read_text() == "not medseg's\n"
    assert (out / "notes" / ".tmp-x.txt").is_file()


# -- 4. one run at a time per run directory; a stale lock is taken over ------------------------------


def test_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(kit, tmp_path, capsys):
    from medseg.runner.rundir import RunDir

    cases = cases_folder(kit, tmp_path / "cases", names=("n0",))
    out = tmp_path / "run"
    holder = RunDir(out)
    holder.claim()  # as a concurrent `medseg run` would hold it
    try:
        before = tree(tmp_path)
        err = one_line(capsys, run_args(kit, cases, out), "another medseg run is using this run directory")
        assert f"pid {os.getpid()}" in err
        assert tree(tmp_path) == before
    finally:
        holder.release()
    # a process that holds the lock and is killed: its lock dies with it
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        from medseg.runner.rundir import RunDir
        RunDir({str(out)!r}).claim()
        print("locked", flush=True)
        time.sleep(600)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        one_line(capsys, run_args(kit, cases, out), f"pid {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((out / ".medseg-lock").read_text())["pid"] == proc.pid  # the stale record is still there
    assert main(run_args(kit, cases, out)) == 0
    assert len(json.loads((out / "run.json").read_text())["invocations"]) == 1


@pytest.mark.slow  # two processes each load torch and a model: ~25 s
def test_two_concurrent_runs_one_is_refused(kit, tmp_path):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0", "n1", "n2"))
    out = tmp_path / "run"
    child = oracle_child_script(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, str(child), *run_args(kit, cases, out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = [err for rc, err in results if rc == 2][0].strip().splitlines()
    assert len(refused) == 1 and "another medseg run is using this run directory" in refused[0], refused
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 1 and run["state"] == "finished"
    assert all(json.loads((out / "state" / f"n{i}.json").read_text())["attempt"] == 1 for i in range(3))


# -- 5. OS errors on outputs: one line naming the path, exit 2 -------------------------------------------


def test_out_naming_an_existing_file_or_below_one(kit, tmp_path, capsys):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0",))
    afile = tmp_path / "afile.txt"
    afile.write_text("precious\n")
    before = tree(tmp_path)
    one_line(capsys, run_args(kit, cases, afile), str(afile))
    one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(cases / "n0.nii.gz"), "--out", str(afile)],
        str(afile),
    )
    one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(cases / "n0.nii.gz"), "--out", str(afile / "sub")],
        "afile.txt",
    )
    one_line(capsys, run_args(kit, cases, afile / "sub"), "afile.txt")
    assert tree(tmp_path) == before


def test_read_only_file_system_is_one_line(kit, tmp_path, capsys, monkeypatch):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0",))

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    out = tmp_path / "pred"
    err = one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(cases / "n0.nii.gz"), "--out", str(out)],
        "Read-only file system",
    )
    assert str(out) in err
    one_line(capsys, run_args(kit, cases, tmp_path / "run"), "Read-only file system")


def test_disk_full_mid_run_is_one_line_and_the_rerun_is_correct(kit, tmp_path, capsys, monkeypatch):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0", "n1", "n2"), dicom="d3")
    ref = tmp_path / "ref"
    assert main(run_args(kit, cases, ref)) == 0
    real_replace = os.replace

    def full_after_first_case(src, dst):
        if "/cases/n1/" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst)

    out = tmp_path / "run"
    capsys.readouterr()
    monkeypatch.setattr(os, "replace", full_after_first_case)
    err = one_line(capsys, run_args(kit, cases, out), "No space left on device")
    assert "Traceback" not in err and "Logging error" not in err
    monkeypatch.setattr(os, "replace", real_replace)
    assert [json.loads((out / "state" / f"{c}.json").read_text())["status"] for c in ("d3", "n0")] == ["done", "done"]
    stopped = json.loads((out / "run.json").read_text())
    assert stopped["state"] == "stopped" and "No space left on device" in stopped["error"]
    assert main(run_args(kit, cases, out)) == 0
    assert "2 already done" in capsys.readouterr().out
    for name in ("volumes.csv", "volumes_wide.csv", "summary.csv", "failures.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(ref / name), check_exact=True)
    assert not list(out.rglob(".tmp-medseg-*"))


def test_run_log_on_a_full_disk_prints_no_logging_traceback(tmp_path, capsys):
    import logging

    from medseg.runner.rundir import RUN_LOG, RunDir

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    rd = RunDir(tmp_path / "run")
    rd.prepare()
    handler = rd.open_log()
    handler.stream = Full()
    handler._medseg_warn.stream = Full()
    old = logging.raiseExceptions
    logging.raiseExceptions = True  # Python's default: a failing handler prints '--- Logging error ---' + traceback
    try:
        logging.getLogger(RUN_LOG).info("case n0 done")
        logging.getLogger("medseg.test").warning("a warning")
    finally:
        logging.raiseExceptions = old
        RunDir.close_log(handler)
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err


# -- 6. case ids: bounded, no control characters, unique file names ---------------------------------------


def test_safe_name_is_injective_and_bounded():
    from medseg.io.paths import MAX_CASE_ID, safe_name

    ids = [
        "a b",
        "a_b",
        "a-b",
        "a/b",
        "a\\b",
        "ä_b",
        "a_b-" + "0" * 10,
        ".hidden",
        "_hidden",
        "x" * MAX_CASE_ID,
        "CASE",
        "case",
        "a.b",
        "a..b",
        "..",
        "a b" + " ",
    ]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(ids), names
    assert safe_name("a_b") == "a_b" and safe_name("case01.v2") == "case01.v2"  # plain ids keep their name
    assert all(len(n.encode()) <= MAX_CASE_ID + 11 and "/" not in n and not n.startswith(".") for n in names)


def test_ids_that_sanitise_alike_get_their_own_qc_picture(kit, tmp_path, capsys):
    import shutil

    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(kit["niftis"][0], cases / "a b.nii.gz")
    shutil.copy(kit["niftis"][1], cases / "a_b.nii.gz")
    out = tmp_path / "run"
    assert main(run_args(kit, cases, out)) == 0, capsys.readouterr().err
    qc = {
        cid: json.loads((out / "state" / f"{name}.json").read_text())["outputs"]["qc"]
        for cid, name in (("a b", [p.stem for p in (out / "state").glob("a_b-*.json")][0]), ("a_b", "a_b"))
    }
    assert qc["a b"] != qc["a_b"]
    assert (out / qc["a b"]).read_bytes() != (out / qc["a_b"]).read_bytes()
    assert len(list((out / "qc").glob("*.png"))) == 2
    vol = pd.read_csv(out / "volumes.csv")
    assert sorted(vol["case_id"].unique()) == ["a b", "a_b"]


def test_case_ids_with_control_characters_or_too_long_are_refused(kit, tmp_path, capsys):
    import shutil

    nl = tmp_path / "nl"
    nl.mkdir()
    shutil.copy(kit["niftis"][0], nl / "x\n2026-01-01 INFO forged done.nii.gz")
    before = tree(tmp_path)
    one_line(capsys, run_args(kit, nl, tmp_path / "run1"), "control characters")
    one_line(
        capsys,
        ["predict", "--no-progress", "--model", kit["model"], str(next(nl.iterdir())), "--out", str(tmp_path / "p")],
        "control characters",
    )
    long = tmp_path / "long"
    long.mkdir()
    shutil.copy(kit["niftis"][0], long / ("y" * 200 + ".nii.gz"))
    one_line(capsys, run_args(kit, long, tmp_path / "run2"), "at most 128")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case_id,image\n{'z' * 260},{kit['niftis'][0]}\n")
    before = tree(tmp_path)
    one_line(capsys, run_args(kit, manifest, tmp_path / "run3"), "at most 128")
    assert tree(tmp_path) == before


# -- 7. a bad entry inside one case folder is that case's business ----------------------------------------


def test_symlink_loop_and_dangling_link_in_a_case_folder_do_not_stop_the_run(kit, tmp_path, capsys):
    cases = cases_folder(kit, tmp_path / "cases", names=("n0",), dicom="dcm")
    os.symlink("loop", cases / "dcm" / "loop")
    os.symlink(tmp_path / "nowhere.dcm", cases / "dcm" / "dangling.dcm")
    before = tree(cases)
    out = tmp_path / "run"
    rc = main(run_args(kit, cases, out))
    err = capsys.readouterr().err
    assert rc in (0, 1) and "Traceback" not in err, err
    assert json.loads((out / "state" / "n0.json").read_text())["status"] == "done"
    dcm = json.loads((out / "state" / "dcm.json").read_text())
    assert dcm["status"] in ("done", "failed") and "\n" not in dcm.get("error", "")
    # predict copes with the same folder; the run must do as well
    assert dcm["status"] == "done", dcm
    assert tree(cases) == before


def test_run_refuses_non_finite_voxels_per_case_or_replaces_them_when_asked(kit, tmp_path, capsys):
    import numpy as np

    from medseg.io.readers import read_volume, write_volume

    cases = cases_folder(kit, tmp_path / "cases", names=("n0",))
    vol = read_volume(kit["niftis"][1])
    arr = np.asarray(vol.array, dtype=np.float32).copy()
    arr.flat[::97] = np.nan
    write_volume(vol.with_array(arr), cases / "nan.nii.gz")
    assert main(run_args(kit, cases, tmp_path / "refused")) == 1
    rec = json.loads((tmp_path / "refused" / "state" / "nan.json").read_text())
    assert rec["status"] == "failed" and "\n" not in rec["error"]
    assert main(run_args(kit, cases, tmp_path / "replaced", "--set", "predict.inference.nonfinite=replace")) == 0
    side = json.loads((tmp_path / "replaced" / "cases" / "nan" / "labels.json").read_text())
    assert [f["kind"] for f in side["findings"]] == ["nonfinite_voxels"]
    capsys.readouterr()
    one_line(capsys, run_args(kit, cases, tmp_path / "bad", "--set", "predict.inference.nonfinite=zero"), "nonfinite")


# -- 8. YAML: no aliases, bounded size --------------------------------------------------------------------

BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=False)
)


def test_alias_bombs_are_refused_in_pipelines_configs_and_set_values(kit, tmp_path, capsys):
    import tracemalloc

    cases = cases_folder(kit, tmp_path / "cases", names=("n0",))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + "stages:\n  predict: {model: " + kit["model"] + "}\n")
    assert len(bomb.read_bytes()) < 1200
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        one_line(
            capsys, ["run", str(bomb), "--input", str(cases), "--out", str(tmp_path / "r1"), "--no-progress"], "aliases"
        )
        set_bomb = "[" + ",".join(["&a [x,x,x,x,x,x,x,x,x,x]"] + ["*a"] * 100) + "]"
        one_line(capsys, run_args(kit, cases, tmp_path / "r2", "--set", f"predict.device={set_bomb}"), "aliases")
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(BOMB)
        manifest = tmp_path / "m.csv"
        manifest.write_text("case_id,image,label,split\n")
        one_line(
            capsys,
            ["train", "--config", str(cfg), "--manifest", str(manifest), "--out", str(tmp_path / "t")],
            "aliases",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20 and time.monotonic() - t0 < 60
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_report_and_evaluate_never_write_into_their_inputs(tmp_path):
    from medseg.cli import main
    from medseg.data.phantoms import make_phantom, write_dicom_series
    from medseg.io.readers import write_label_map

    ph = make_phantom(41, case_id="r", spacing=(4.0, 4.0, 6.0))
    series = write_dicom_series(ph, tmp_path / "series", seed=1)
    write_label_map(ph.labels, tmp_path / "r.nii.gz")
    before = {f.name: f.read_bytes() for f in series.iterdir()}
    # --out is the DICOM folder given as the image: volumes.csv and qc/ would land among the user's files
    assert (
        main(
            [
                "report",
                "--labels",
                str(tmp_path / "r.nii.gz"),
                "--images",
                str(series),
                "--label-table",
                "abdomen_phantom",
                "--out",
                str(series),
            ]
        )
        == 2
    )
    assert {f.name: f.read_bytes() for f in series.iterdir()} == before
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "r.nii.gz"),
                "--ref",
                str(tmp_path / "r.nii.gz"),
                "--label-table",
                "abdomen_phantom",
                "--out",
                str(tmp_path / "r.nii.gz"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "report",
                "--labels",
                str(tmp_path / "r.nii.gz"),
                "--label-table",
                "abdomen_phantom",
                "--out",
                str(tmp_path / "rep"),
                "--no-qc",
            ]
        )
        == 0
    )
