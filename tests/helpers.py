"""Plain helpers the tests import (fixtures live in conftest.py, which is never imported).

The oracle network reads the label straight from the intensity of a phantom
whose HU encode the label (label * 100 HU, no noise). Any error in orientation,
resampling or the inverse mapping shows up as a lost Dice, and left/right
swaps show up as kidney_right/kidney_left exchanged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def register_oracle():
    """Register ``test_intensity_oracle`` (label = round(intensity / 100 HU)) unless it is there."""
    import torch

    from medseg.models import MODELS

    if "test_intensity_oracle" in MODELS:
        return

    class IntensityOracle(torch.nn.Module):
        def __init__(self, out_channels: int):
            super().__init__()
            self.register_buffer("centres", torch.linspace(0, 1, out_channels))

        def forward(self, x):
            c = self.centres.view(1, -1, *([1] * (x.ndim - 2)))
            return -100.0 * (x - c) ** 2

    @MODELS.register("test_intensity_oracle", description="test only: label = round(intensity)", dims=(2, 3), divisor=1)
    def _oracle(*, spatial_dims: int, in_channels: int, out_channels: int):
        return IntensityOracle(out_channels)


def label_coded(case):
    """A copy of a phantom whose image is label * 100 HU (the oracle's input)."""
    from medseg.io.volume import Volume

    img = case.labels.array.astype(np.float32) * 100.0
    return Volume(img, case.image.affine.copy(), case.case_id)


ORACLE_ON_4MM = {
    "preprocessing": {"spacing": [4.0, 4.0, 4.0]},
    "inference": {"roi_size": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 4},
}
"""Overrides for ``oracle_checkpoint``: a coarse 4 mm grid and one window a patch (the run and PACS tests)."""


def oracle_checkpoint(path, *, preprocessing: dict | None = None, inference: dict | None = None):
    """Save a checkpoint of the intensity oracle at ``path`` and return its path.

    By default it works on a 2 mm grid (window 0-400 HU, 48x48x32 windows, overlap 0.25); ``preprocessing``
    and ``inference`` override single keys of those sections (``**ORACLE_ON_4MM`` for the 4 mm variant).
    The session fixture ``oracle_checkpoint``, the run/PACS kits and child-process scripts all use this.
    """
    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    register_oracle()
    cfg = config_from_dict(
        {
            "model": {"name": "test_intensity_oracle"},
            "preprocessing": {"window": [0, 400], "spacing": [2.0, 2.0, 2.0], **(preprocessing or {})},
            "inference": {"roi_size": [48, 48, 32], "overlap": 0.25, "sw_batch_size": 2, **(inference or {})},
        }
    )
    model = create_model(
        "test_intensity_oracle", spatial_dims=3, in_channels=1, out_channels=PHANTOM_LABELS.num_classes
    )
    return Path(save_checkpoint(Path(path), model, config=cfg, label_table=PHANTOM_LABELS))


# --- small data sets for training tests: tiny volumes, a tiny network, a few epochs ---

TINY_MODEL = {
    "name": "unet",
    "spatial_dims": 3,
    "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
}


def fingerprint(spacing, shape, *, p10=None, modality: str = "MR", foreground: dict | None = None) -> dict:
    """A data set's fingerprint as ``medseg plan`` measures it and ``plan_config`` reads it: median spacing (and its
    10th percentile, ``p10``, the median when not given), median shape, modality and foreground intensities."""
    return {
        "spacing_median": list(spacing),
        "spacing_p10": list(spacing if p10 is None else p10),
        "shape_median": list(shape),
        "modality": modality,
        "foreground": dict(foreground or {}),
    }


def tiny_config(**training) -> dict:
    return {
        "labels": "abdomen_phantom",
        "model": TINY_MODEL,
        "preprocessing": {"spacing": [6.0, 6.0, 6.0], "crop_margin": 2},
        "training": {
            "epochs": 3,
            "iterations_per_epoch": 2,
            "val_every": 1,
            "patch_size": [32, 32, 16],
            "batch_size": 2,
            "samples_per_image": 1,
            "amp": "off",
            **training,
        },
        "inference": {"roi_size": [32, 32, 16], "sw_batch_size": 2},
    }


# --- the ``medseg`` command in a child process ---


def medseg_command(*args) -> list[str]:
    """``[python, -m, medseg, *ARGS]`` (each argument as a string), for ``subprocess``."""
    return [sys.executable, "-m", "medseg", *map(str, args)]


def predict_argv(model, inputs, out, *options) -> list[str]:
    """The arguments of ``medseg predict --model MODEL INPUTS --out OUT --no-progress OPTIONS`` (for ``main``)."""
    return ["predict", "--model", str(model), str(inputs), "--out", str(out), "--no-progress", *map(str, options)]


#: ``medseg demo`` at its smallest (3 training cases, 1 test case, 1 epoch, no Dice bar): ``demo --out DIR *QUICK_DEMO``
QUICK_DEMO = ("--n-train", "3", "--n-test", "1", "--epochs", "1", "--min-dice", "0", "--no-progress")

#: The shortened demo that one session runs once for several tests (``shared_demo`` in conftest.py): 0.920 mean Dice
#: measured (50 epochs: 0.930; 30: 0.875)
SHARED_DEMO = {"n_train": 12, "n_test": 2, "epochs": 40}


TESTS_DIR = Path(__file__).resolve().parent


def oracle_child_script(folder, name: str = "child.py") -> Path:
    """Write ``FOLDER/NAME``, a script that runs ``medseg`` (its argv) with the oracle model registered, for a new
    process: ``subprocess.Popen([sys.executable, str(oracle_child_script(tmp)), "run", ...])``."""
    script = Path(folder) / name
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\nfrom helpers import register_oracle\n"
        "register_oracle()\nfrom medseg.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return script


def medseg_cli(*args, **kw) -> subprocess.CompletedProcess:
    """``python -m medseg ARGS`` run to its end with text output captured; ``kw`` (cwd, env, timeout) go to
    ``subprocess.run``."""
    return subprocess.run(medseg_command(*args), capture_output=True, text=True, **kw)


def run_volumetry(inputs, out, model, **kw):
    """``medseg run dicom_volumetry --input INPUTS --out OUT --set predict.model=MODEL`` (no QC, no HTML) in a child
    process; asserts that it succeeds and returns its ``run.json`` (a dict) and ``volumes.csv`` (a DataFrame)."""
    import json

    import pandas as pd

    sets = (f"predict.model={model}", "report.qc=false", "report.html=false")
    r = medseg_cli("run", "dicom_volumetry", "--input", inputs, "--out", out, *(f"--set={s}" for s in sets), **kw)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((Path(out) / "run.json").read_text()), pd.read_csv(Path(out) / "volumes.csv")


def kill_training_after(cfg, manifest, out, *, rows: int, timeout: float = 300) -> None:
    """Start ``medseg train --config CFG --manifest MANIFEST --out OUT`` and SIGKILL it once ``metrics.csv``
    holds ``rows`` rows (or after ``timeout`` seconds)."""
    import pandas as pd

    cmd = medseg_command("train", "--no-progress", "--config", cfg, "--manifest", manifest, "--out", out)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = Path(out) / "metrics.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(pd.read_csv(metrics)) >= rows:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# --- DICOM SEG objects written by highdicom (as other tools write them) ---


def seg_source_images(folder) -> list:
    """The slices of a phantom DICOM series (sorted by file name), with the Type 2 attributes highdicom copies and
    the phantom series leave out set empty."""
    import pydicom

    files = [pydicom.dcmread(f) for f in sorted(Path(folder).iterdir())]
    for d in files:
        for kw in ("AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyTime"):
            setattr(d, kw, d.get(kw, ""))
    return files


def fractional_liver_seg(files, pixels, out, *, max_value: int | None = None):
    """Save a FRACTIONAL DICOM SEG with one segment (Liver, SNOMED coded) over ``files`` (``seg_source_images``),
    frames ``pixels`` (fractions 0..1, one frame a file), at ``out``. ``max_value`` overwrites its
    MaximumFractionalValue afterwards (what a broken exporter writes; the frames still hold 0..255)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Liver",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=files,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[desc],
        series_instance_uid=hd.UID(),
        series_number=5,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        max_fractional_value=255,
    )
    if max_value is not None:
        seg.MaximumFractionalValue = max_value
    seg.save_as(out)
    return out
