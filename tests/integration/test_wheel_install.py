"""The built wheel, installed (not editable) in a fresh virtual environment, works from a folder outside the checkout:
``medseg demo``, ``medseg run`` with a pipeline given by name, and a label table given by name."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import QUICK_DEMO

REPO = Path(__file__).resolve().parents[2]


def _sh(cmd, cwd, env=None, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels = tmp_path / "dist"
    _sh(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        tmp_path,
    )
    wheel = next(wheels.glob("medseg-*.whl"))
    venv = tmp_path / "venv"
    _sh([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    site = Path(_sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    # The dependencies come from this environment's site-packages (no network); its editable medseg is not seen,
    # because the path is added without processing that folder's .pth files.
    (site / "_medseg_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _sh([str(py), "-c", "import medseg; print(medseg.__file__)"], work, env).strip()
    assert where.startswith(str(site)), f"medseg imported from {where}, not from the installed wheel"
    medseg = str(venv / "bin" / "medseg")
    out = _sh(
        [medseg, "demo", "--out", "X", *QUICK_DEMO],
        work,
        env,
    )
    assert "mean Dice" in out and (work / "X" / "report" / "volumes.csv").is_file()
    dicom = next((work / "X" / "data" / "test" / "dicom").iterdir())
    _sh(
        [
            medseg,
            "run",
            "dicom_volumetry",
            "--input",
            str(dicom.parent),
            "--out",
            "run",
            "--set",
            f"predict.model={work / 'X' / 'model' / 'best.pt'}",
            "--set",
            "report.qc=false",
            "--no-progress",
        ],
        work,
        env,
    )
    assert (work / "run" / "volumes.csv").is_file()
    preds = sorted(str(p) for p in (work / "X" / "predictions").glob("*.nii.gz"))
    _sh(
        [medseg, "report", "--labels", *preds, "--label-table", "abdomen_phantom", "--out", "rep", "--no-qc"], work, env
    )
    assert "liver" in (work / "rep" / "volumes.csv").read_text()
