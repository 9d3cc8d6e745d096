"""A long manifest: ``medseg run`` creates a case's state record when the case starts, not one per row up front.

Issue 34: a manifest of 1,000,000 rows wrote 633,845 state files (2.6 GB) in 150 s before the first case
ran. Here 20,000 rows point at missing files; the run is interrupted as its first case starts, and the
state folder then holds no more records than cases started.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipelines" / "dicom_volumetry.yaml"
N_ROWS = 20_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("many_model")
    cfg = config_from_dict(
        {
            "model": {"name": "unet", "kwargs": {"channels": [4, 8], "strides": [2]}},
            "preprocessing": {"window": [0, 400], "spacing": [4.0, 4.0, 4.0]},
            "inference": {"roi_size": [16, 16, 16], "overlap": 0.0},
        }
    )
    net = create_model(
        "unet", spatial_dims=3, in_channels=1, out_channels=PHANTOM_LABELS.num_classes, channels=[4, 8], strides=[2]
    )
    return save_checkpoint(root / "tiny.pt", net, config=cfg, label_table=PHANTOM_LABELS)


def _manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "manifest.csv"
    pd.DataFrame(
        {"case_id": [f"c{i:06d}" for i in range(n)], "image": [f"missing/c{i:06d}.nii.gz" for i in range(n)]}
    ).to_csv(path, index=False)
    return path


class _Stop(KeyboardInterrupt):
    pass


def test_state_records_are_created_as_cases_start(tmp_path, model, monkeypatch, caplog):
    from medseg.runner import local, run

    seen = {}
    real = local.mark_running

    def first_start(ctx, case):
        seen["state_files"] = sum(1 for _ in (tmp_path / "run" / "state").iterdir())
        seen["seconds"] = time.monotonic() - t0
        real(ctx, case)
        raise _Stop  # interrupted as the first case starts

    monkeypatch.setattr(local, "mark_running", first_start)
    manifest = _manifest(tmp_path, N_ROWS)
    t0 = time.monotonic()
    with pytest.raises(_Stop):
        run.run_pipeline(
            pipeline=PIPELINE,
            input=manifest,
            out=tmp_path / "run",
            progress=False,
            overrides=[f"predict.model={model}"],
        )
    assert seen["state_files"] == 0, seen  # was 20,000: one "pending" record per row before any case ran
    assert sum(1 for _ in (tmp_path / "run" / "state").iterdir()) == 1
    assert seen["seconds"] < 120, seen
    print(f"first case started after {seen['seconds']:.1f} s with {seen['state_files']} state files")


def test_a_run_says_how_many_cases_it_found_and_retries_failures(tmp_path, model, capsys):
    """One line on stdout before the first case (stderr keeps one line for a refusal); a second invocation takes
    up the earlier records (all 5 missing files fail alone, twice)."""
    from medseg.runner import run

    manifest = _manifest(tmp_path, 5)
    r = run.run_pipeline(
        pipeline=PIPELINE, input=manifest, out=tmp_path / "run", progress=False, overrides=[f"predict.model={model}"]
    )
    said = capsys.readouterr().out
    assert "medseg run: 5 cases found in " in said and str(manifest) in said, said
    assert len(r.failures) == 5 and len(list((tmp_path / "run" / "state").iterdir())) == 5
    status = pd.read_csv(tmp_path / "run" / "status.csv")
    assert list(status["status"]) == ["failed"] * 5
    # the second invocation finds the earlier records: the failed cases run again (attempt 2), no new files
    r = run.run_pipeline(
        pipeline=PIPELINE, input=manifest, out=tmp_path / "run", progress=False, overrides=[f"predict.model={model}"]
    )
    assert len(r.failures) == 5 and len(list((tmp_path / "run" / "state").iterdir())) == 5
    assert list(pd.read_csv(tmp_path / "run" / "status.csv")["attempt"]) == [2] * 5
