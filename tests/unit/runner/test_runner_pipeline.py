"""Pipeline files, input lists and run-directory records of ``medseg run`` (no model is run)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from medseg.cli import main
from medseg.errors import ConfigError, InputError, OptionalDependencyError
from medseg.runner.settings import load_pipeline, pipeline_from_dict

ROOT = Path(__file__).resolve().parents[3]
VOLUMETRY = ROOT / "pipelines" / "dicom_volumetry.yaml"


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"x")
    return p


def test_shipped_pipelines_load(model_file):
    pipe = load_pipeline(VOLUMETRY, overrides=[f"predict.model={model_file}", "input.column=dicom"])
    assert list(pipe.stages) == ["scan", "select", "convert", "predict", "report"]
    assert pipe.stages["predict"].model == str(model_file.resolve()) and pipe.input.column == "dicom"
    train = load_pipeline(
        ROOT / "pipelines" / "train_and_evaluate.yaml", overrides=["train.overrides.training.epochs=2"]
    )
    assert list(train.stages) == ["plan", "train", "predict", "evaluate", "report"]
    assert train.stages["train"].overrides == {"training": {"epochs": 2}}
    assert Path(train.stages["train"].config).is_file()


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        ({"stages": {"predcit": {}}}, [], "unknown stage 'predcit'; did you mean 'predict'"),
        ({"stages": {"predict": {"modle": "m.pt"}}}, [], "unknown key 'modle'; did you mean 'model'"),
        ({"stages": {"predict": {"model": "MODEL"}}, "inputs": {}}, [], "unknown key 'inputs'; did you mean 'input'"),
        ({"stages": {"predict": {"model": "MODEL", "inference": {"overlapp": 0.5}}}}, [], "did you mean 'overlap'"),
        ({"stages": {"predict": {"model": "MODEL"}}}, ["report.qc=false"], "no stage 'report'"),
        ({"stages": {"predict": {"model": "MODEL"}, "scan": {}}}, [], "'scan' must come before 'predict'"),
        ({"stages": {"predict": {}}}, [], "no checkpoint given"),
        (
            {"stages": {"predict": {"model": "missing.pt"}}},
            [],
            "missing.pt: stages.predict.model: checkpoint file not found",
        ),
        ({"stages": {"report": {}}}, [], "'report' needs a 'predict' stage"),
        ({"stages": {"predict": {"model": "MODEL", "device": 3}}}, [], "expected str"),
        ({"stages": {}}, [], "non-empty mapping"),
    ],
)
def test_config_errors_are_one_line_with_a_hint(data, overrides, message, model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {
        **data,
        "stages": {
            k: {kk: (str(model_file) if vv == "MODEL" else vv) for kk, vv in v.items()}
            for k, v in data["stages"].items()
        },
    }
    with pytest.raises(ConfigError) as exc:
        pipeline_from_dict(data, source="p.yaml", overrides=overrides)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_cli_config_error_before_any_case(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "a.nii.gz").write_bytes(b"x")
    out = tmp_path / "run"
    code = main(["run", str(VOLUMETRY), "--input", str(cases), "--out", str(out), "--set", "predict.model=nope.pt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nope.pt" in err and "Traceback" not in err
    assert not out.exists()  # nothing started


def test_resume_needs_an_existing_run(tmp_path, model_file, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "a.nii.gz").write_bytes(b"x")
    code = main(
        [
            "run",
            str(VOLUMETRY),
            "--input",
            str(cases),
            "--out",
            str(tmp_path / "run"),
            "--resume",
            "--set",
            f"predict.model={model_file}",
        ]
    )
    assert code == 2 and "no run to resume" in capsys.readouterr().err


def test_ray_engine_without_ray_says_how_to_install(tmp_path, model_file, monkeypatch):
    from medseg.runner import run_pipeline

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(OptionalDependencyError, match=r"pip install 'medseg\[ray\]'"):
        run_pipeline(
            pipeline=VOLUMETRY,
            input=tmp_path,
            out=tmp_path / "run",
            engine="ray",
            overrides=[f"predict.model={model_file}"],
        )
    assert not (tmp_path / "run").exists()


def test_inputs_from_folder_and_manifest(tmp_path):
    from medseg.runner.inputs import discover

    (tmp_path / "m.pt").write_bytes(b"x")
    pipe = pipeline_from_dict({"stages": {"predict": {"model": str(tmp_path / "m.pt")}}})
    folder = tmp_path / "cases"
    (folder / "ser1").mkdir(parents=True)
    (folder / "ser1" / "x.dcm").write_bytes(b"x")
    (folder / "b.nii.gz").write_bytes(b"x")
    (folder / "README.txt").write_text("x")
    cases, ignored = discover(folder, pipe)
    assert [(c.case_id, c.kind) for c in cases] == [("b", "image"), ("ser1", "dicom")] and ignored == ["README.txt"]
    fp = cases[1].fingerprint
    os.utime(folder / "ser1" / "x.dcm", ns=(1, 1))
    assert discover(folder, pipe)[0][1].fingerprint != fp  # a touched file changes the fingerprint

    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,dicom,split\nc1,cases/ser1,test\nc2,cases/b.nii.gz,train\n")
    with pytest.raises(ConfigError, match="no column 'image'"):
        discover(manifest, pipe)
    pipe.input.column, pipe.input.split = "dicom", "test"
    cases, _ = discover(manifest, pipe)
    assert [(c.case_id, c.kind, c.source) for c in cases] == [("c1", "dicom", str((folder / "ser1").resolve()))]
    manifest.write_text("case_id,dicom\n../evil,cases/ser1\n")
    pipe.input.split = ""
    with pytest.raises(InputError, match="cannot name files"):
        discover(manifest, pipe)


def test_done_record_is_current_only_for_same_inputs_config_and_outputs(tmp_path):
    from medseg.runner.inputs import Case
    from medseg.runner.run import RunResult
    from medseg.runner.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.prepare()
    (rd.root / "cases" / "a").mkdir()
    (rd.root / "cases" / "a" / "labels.nii.gz").write_bytes(b"x")
    case = Case("a", "/in/a.nii.gz", "image", fingerprint="f1")
    rd.write_state(
        "a",
        {"status": "done", "fingerprint": "f1", "config_sha256": "c1", "outputs": {"labels": "cases/a/labels.nii.gz"}},
    )
    assert rd.is_current(case, "c1")
    assert not rd.is_current(case, "c2")
    assert not rd.is_current(Case("a", "/in/a.nii.gz", "image", fingerprint="f2"), "c1")
    (rd.root / "cases" / "a" / "labels.nii.gz").unlink()
    assert not rd.is_current(case, "c1")
    rd.write_state("a", {"status": "running", "fingerprint": "f1", "config_sha256": "c1", "outputs": {}})
    assert not rd.is_current(case, "c1")
    rd.state_path("a").write_text('{"status": "do')  # a torn record reads as not done
    assert not rd.is_current(case, "c1")
    # a killed run's temporaries and stale cohort tables are removed when a run starts
    (rd.root / "cases" / "a" / ".tmp-medseg-1234-labels.nii.gz").write_bytes(b"half")
    (rd.root / "volumes.csv").write_text("stale")
    rd.prepare()
    assert not list(rd.root.rglob(".tmp-medseg-*")) and not (rd.root / "volumes.csv").exists()

    assert RunResult(rd.root, 2, done=["a"], skipped=["b"]).exit_code == 0
    assert RunResult(rd.root, 2, done=["a"], failures={"b": "x"}).exit_code == 1
    assert RunResult(rd.root, 2, skipped=["a"], failures={"b": "x"}).exit_code == 1
    assert RunResult(rd.root, 2, failures={"a": "x", "b": "y"}).exit_code == 2
