"""Fixtures shared by the tests of models trained elsewhere: the tiny nnU-Net models, built once per session.

They live here, not in one test module, so that every module that needs them gets the same build (a module's
own session fixture is visible to that module only: a second module re-building it cost about 75 s a run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import medseg.adapters  # noqa: F401  (registers the model-folder formats with medseg.inference.load)

FIXTURE = Path(__file__).with_name("nnunet_fixture.py")


@pytest.fixture(scope="session")
def nnunet_model(tmp_path_factory):
    """Built once per session (about 2 min on 2 cores). ``MEDSEG_NNUNET_FIXTURE=DIR`` reuses (or builds once
    into) ``DIR`` across sessions."""
    import os

    cached = os.environ.get("MEDSEG_NNUNET_FIXTURE")
    if cached:
        from importlib.util import module_from_spec, spec_from_file_location

        spec = spec_from_file_location("nnunet_fixture", FIXTURE)
        fx = module_from_spec(spec)
        spec.loader.exec_module(fx)
        folder = Path(cached) / "results" / fx.MODEL_DIR
        if (folder / "fold_1" / "checkpoint_final.pth").is_file() and (
            Path(cached) / "results" / fx.MODEL_DIR_2D / "fold_0" / "checkpoint_final.pth"
        ).is_file():
            return folder, Path(cached) / "test" / "case_0000.nii.gz"
    root = Path(cached) if cached else tmp_path_factory.mktemp("nnunet")
    r = subprocess.run([sys.executable, str(FIXTURE), str(root), "0", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file() and (
        folder / "fold_1" / "checkpoint_final.pth"
    ).is_file()
    return folder, root / "test" / "case_0000.nii.gz"


@pytest.fixture(scope="session")
def nnunet_mr_model(tmp_path_factory):
    """Two MR-like channels with zero background and region labels (nnunet_fixture.build_mr), fold 'all'."""
    import os

    cached = os.environ.get("MEDSEG_NNUNET_FIXTURE")
    root = Path(cached) if cached else tmp_path_factory.mktemp("nnunet_mr")
    folder = root / "results" / "Dataset502_PhantomMR" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if not (folder / "fold_all" / "checkpoint_final.pth").is_file():
        r = subprocess.run([sys.executable, str(FIXTURE), str(root), "mr"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    return folder, [root / "test_mr" / f"case_{c:04d}.nii.gz" for c in (0, 1)]
