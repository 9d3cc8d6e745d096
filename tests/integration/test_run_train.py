"""``pipelines/train_and_evaluate.yaml`` on a tiny coarse cohort: plan -> train -> predict (test split) -> evaluate ->
report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medseg.cli import main

PIPELINE = str(Path(__file__).resolve().parents[2] / "pipelines" / "train_and_evaluate.yaml")


def _one_epoch_run(tmp_path, *settings) -> list[str]:
    """``run PIPELINE`` on ``TMP/manifest.csv`` into ``TMP/run``: one epoch, validated; then ``--set`` each setting."""
    sets = ("train.overrides.training.epochs=1", "train.overrides.training.val_every=1", *settings)
    io = ["--input", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "run"), "--no-progress"]
    return ["run", PIPELINE, *io, *(a for s in sets for a in ("--set", s))]


@pytest.mark.slow
def test_train_and_evaluate_pipeline_trains_once(tmp_path, capsys):
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
    from medseg.io.readers import write_label_map, write_volume

    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        ph = make_phantom(800 + i, case_id=f"p{i}", spacing=(3.0, 3.0, 5.0))
        write_volume(ph.image, tmp_path / "img" / f"p{i}.nii.gz")
        write_label_map(ph.labels, tmp_path / "lab" / f"p{i}.nii.gz")
        rows.append({"case_id": f"p{i}", "image": f"img/p{i}.nii.gz", "label": f"lab/p{i}.nii.gz", "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    # the data set's own table (as from-folder writes it) names the values otherwise than the recipe (phantom_demo's
    # abdomen_phantom): outputs must carry the data's names, never the recipe's
    ours = [{"index": lab.index, "name": f"structure_{lab.index}"} for lab in PHANTOM_LABELS.labels]
    (tmp_path / "manifest_labels.yaml").write_text(yaml.safe_dump({"name": "ours", "labels": ours}))
    args = _one_epoch_run(tmp_path, "plan.spacing=median", "report.qc=false")
    assert main(args) == 0
    run = tmp_path / "run"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["n_training_images"] == 2 and plan["median_spacing_mm"] == [
        3.0,
        3.0,
        5.0,
    ]  # split=train, as medseg plan
    assert json.loads((run / "fingerprint.json").read_text())["modality"] == "CT"
    assert (run / "train" / "best.pt").is_file()
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["case_id"].unique()) == ["p3"] and len(metrics) == len(PHANTOM_LABELS.labels)
    assert sorted(metrics["structure"]) == sorted(d["name"] for d in ours)
    assert (
        "liver" not in (run / "train" / "config.yaml").read_text()
        and "structure_1" in (run / "train" / "metrics.csv").read_text()
    )
    assert metrics["dice"].between(0, 1).all()
    assert len(pd.read_csv(run / "volumes.csv")) == len(PHANTOM_LABELS.labels)
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["model"]["path"] == str(run / "train" / "best.pt")
    trained = json.loads((run / "state" / "_train.json").read_text())["finished"]
    capsys.readouterr()
    assert main(args) == 0  # rerun: neither training nor the test case is redone
    assert json.loads((run / "state" / "_train.json").read_text())["finished"] == trained
    assert "0 done, 1 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_train_and_evaluate_on_a_multichannel_manifest(tmp_path):
    """Training stacks image, image_1...; the pipeline's predict stage must give the network the same channels."""
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
    from medseg.io.readers import write_label_map, write_volume
    from medseg.io.volume import Volume

    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        ph = make_phantom(820 + i, case_id=f"m{i}", spacing=(3.0, 3.0, 5.0))
        write_volume(ph.image, tmp_path / f"t1_{i}.nii.gz")
        write_volume(Volume(-ph.image.array, ph.image.affine), tmp_path / f"t2_{i}.nii.gz")  # a second contrast
        write_label_map(ph.labels, tmp_path / f"lab_{i}.nii.gz")
        rows.append(
            {
                "case_id": f"m{i}",
                "image": f"t1_{i}.nii.gz",
                "image_1": f"t2_{i}.nii.gz",
                "label": f"lab_{i}.nii.gz",
                "split": split,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    args = _one_epoch_run(tmp_path, "report.qc=false", "report.intensities=false")
    assert main(args) == 0
    run = tmp_path / "run"
    assert json.loads((run / "train" / "run.json").read_text())["image_channels"] == ["image", "image_1"]
    assert pd.read_csv(run / "failures.csv").empty
    assert pd.read_csv(run / "inputs.csv").set_index("case_id").loc["m3", "channels"] == str(tmp_path / "t2_3.nii.gz")
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["case_id"].unique()) == ["m3"] and len(metrics) == len(PHANTOM_LABELS.labels)
