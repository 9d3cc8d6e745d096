"""The two-stage cascade (``cascade:`` config section): its config, the prior channels in training and inference,
one model file that ``medseg predict`` runs on any grid, and a tiny training run of both stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import label_coded, oracle_checkpoint, predict_argv, register_oracle, tiny_config

from medseg.cli import main
from medseg.config import config_from_dict
from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
from medseg.errors import ConfigError
from medseg.inference.cascade import is_cascade_checkpoint, prior_channels
from medseg.inference.load import load_predictor
from medseg.io.readers import read_volume, write_label_map, write_volume
from medseg.io.volume import Volume
from medseg.training.cascade import PriorInputs, _stage2_minutes, corrupt_prior, stage_configs, write_cascade_checkpoint

K = PHANTOM_LABELS.num_classes


def _dice(a, b, label: int) -> float:
    a, b = np.asarray(a) == label, np.asarray(b) == label
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _oblique_flipped(seed: int = 900):
    return make_phantom(
        seed, spacing=(3.0, 3.0, 5.0), flips=(True, False, True), oblique_deg=12, fov_mm=(240, 180, 136)
    )


def test_cascade_config_defaults_validation_and_stage_budgets():
    cfg = config_from_dict({"preprocessing": {"spacing": [2, 2, 3]}, "training": {"max_minutes": 4}, "cascade": {}})
    assert cfg.cascade.lowres_share == 0.5 and cfg.cascade.stage1_spacing([2, 2, 3]) == [4.0, 4.0, 6.0]
    assert "cascade" not in config_from_dict({}).to_dict()  # a plain config's dict (checkpoints, resume) is as before
    s1, s2 = stage_configs(cfg, stage2_minutes=1.5)
    assert s1.preprocessing.spacing == [4.0, 4.0, 6.0] and s2.preprocessing.spacing == [2, 2, 3]
    assert (s1.training.max_minutes, s2.training.max_minutes) == (2.0, 1.5) and s1.cascade is s2.cascade is None
    assert _stage2_minutes(cfg, 150.0) == pytest.approx(1.5)  # 4 min - 2.5 spent
    assert _stage2_minutes(cfg, 239.0) == pytest.approx(0.4)  # never less than 10% of the budget (logged)
    for bad, msg in [
        ({"lowres_spacing": [1, 1, 1]}, "no finer"),
        ({"lowres_spacing": [2, 2, 3]}, "equals"),
        ({"lowres_share": 1.0}, "lowres_share"),
        ({"lowres_spaceing": [4, 4, 4]}, "did you mean 'lowres_spacing'"),
        ({"prior_corruption": 2}, "prior_corruption"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict({"preprocessing": {"spacing": [2, 2, 3]}, "cascade": bad})


def test_prior_channels_follow_the_label_map_through_training_transforms(tmp_path):
    """The prior (here: the true label map itself, on an oblique flipped grid) comes out as one 0/1 channel per
    structure after the image, aligned with the label voxel for voxel, and untouched by the CT window."""
    case = _oblique_flipped()
    write_volume(case.image, tmp_path / "img.nii.gz")
    write_label_map(case.labels, tmp_path / "lab.nii.gz")
    cfg = config_from_dict(tiny_config(augmentation={"affine_prob": 1.0}))  # every patch rotated and scaled
    inputs = PriorInputs({"c": str(tmp_path / "lab.nii.gz")}, K, corruption=0.0)
    recs = inputs.records(
        [{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz"), "case_id": "c"}]
    )
    train_tf, val_tf = inputs.transforms(cfg, ["image"], PHANTOM_LABELS, 0.0)
    val = val_tf(recs[0])
    assert val["image"].shape[0] == 1 + (K - 1) and val["label"].shape[0] == 1
    assert torch.equal(val["image"][1:], prior_channels(val["label"], K))
    assert set(torch.unique(val["image"][1:]).tolist()) == {0.0, 1.0} and float(val["image"][0].max()) <= 1.0
    floored = prior_channels(val["label"], K, absent=-1.5)  # a z-scored CT's floor: "absent" is what padding gives
    assert set(torch.unique(floored).tolist()) == {-1.5, -0.5}
    train_tf.set_random_state(seed=3)
    for patch in train_tf(recs[0]):
        assert patch["image"].shape[0] == K and patch["label"].shape[0] == 1
        assert torch.equal(patch["image"][1:], prior_channels(patch["label"].round(), K))
    with pytest.raises(Exception, match="no stage-1 prediction"):
        inputs.records([{"image": "x", "label": "y", "case_id": "other"}])


def test_corrupt_prior_dilates_erodes_or_drops_each_structure():
    prior = torch.zeros(2, 12, 12, 12)
    prior[:, 4:8, 4:8, 4:8] = 1.0
    sizes = set()
    for seed in range(12):
        out = corrupt_prior(prior, np.random.RandomState(seed))
        assert set(torch.unique(out).tolist()) <= {0.0, 1.0}
        sizes |= {int(out[c].sum()) for c in range(2)}
    assert any(s > 64 for s in sizes) and any(0 < s < 64 for s in sizes) and 0 in sizes  # dilated, eroded, dropped


def _register_prior_copier():
    """``test_prior_copier``: stage 2 that segments by copying its prior channels (image channel ignored)."""
    from medseg.models import MODELS

    if "test_prior_copier" in MODELS:
        return

    class PriorCopier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(10.0))

        def forward(self, x):
            prior = x[:, 1:]
            return self.scale * torch.cat([1.0 - prior.sum(1, keepdim=True), prior], dim=1)

    @MODELS.register("test_prior_copier", description="test only: labels = the prior channels", dims=(3,), divisor=1)
    def _copier(*, spatial_dims: int, in_channels: int, out_channels: int):
        return PriorCopier()


def _oracle_cascade(folder):
    """A cascade file of the intensity oracle (stage 1, at 6 mm) and the prior copier (stage 2, at 3 mm)."""
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    register_oracle()
    _register_prior_copier()
    oracle_checkpoint(folder / "stage1" / "best.pt", preprocessing={"spacing": [6.0, 6.0, 6.0]})
    cfg = config_from_dict(
        {
            "model": {"name": "test_prior_copier"},
            "preprocessing": {"window": [0, 400], "spacing": [3.0, 3.0, 3.0]},
            "inference": {"roi_size": [48, 48, 32], "sw_batch_size": 2},
            "cascade": {"lowres_spacing": [6, 6, 6]},
        }
    )
    copier = create_model("test_prior_copier", spatial_dims=3, in_channels=K, out_channels=K)
    save_checkpoint(folder / "stage2" / "best.pt", copier, config=cfg, label_table=PHANTOM_LABELS, in_channels=K)
    return write_cascade_checkpoint(folder, cfg, 1, {})


def test_the_prior_reaches_stage_2_and_predict_writes_on_the_input_grid(tmp_path):
    """Stage 1 reads the labels off a label-coded phantom; stage 2 only copies its prior: the cascade's labels on an
    oblique, flipped input are then stage 1's, and a wrong prior (kidneys swapped) swaps stage 2's output."""
    from medseg.models import MODELS

    try:
        _prior_reaches_stage_2(tmp_path)
    finally:
        MODELS.unregister("test_prior_copier")


def _prior_reaches_stage_2(tmp_path):
    model = _oracle_cascade(tmp_path / "model")
    assert is_cascade_checkpoint(model) and not is_cascade_checkpoint(tmp_path / "model" / "stage1" / "best.pt")
    case = _oblique_flipped()
    write_volume(label_coded(case), tmp_path / "obl.nii.gz")
    assert main(predict_argv(model, tmp_path / "obl.nii.gz", tmp_path / "pred")) == 0
    out = read_volume(tmp_path / "pred" / "obl.nii.gz")
    assert out.shape == case.labels.shape and np.allclose(out.affine, case.labels.affine, atol=1e-4)
    sidecar = json.loads((tmp_path / "pred" / "obl.json").read_text())
    assert sidecar["model"]["model_name"] == "cascade:test_intensity_oracle+test_prior_copier"
    predictor = load_predictor(model)
    first = predictor.stage1.predict(label_coded(case)).array  # the oracle at 6 mm: coarse, but the organs
    for lab in PHANTOM_LABELS.labels:  # stage 2 at 3 mm copies it: its prior took no voxel off on the way
        assert _dice(first, case.labels.array, lab.index) > 0.6, lab.name
        assert _dice(out.array, first, lab.index) > 0.95, lab.name  # (a voxel off would cost the kidneys ~8%)

    swapped = case.labels.array.copy()
    swapped[case.labels.array == 3], swapped[case.labels.array == 4] = 4, 3
    predictor.stage1.predict = lambda volumes: Volume(swapped, case.labels.affine.copy(), "x", {})
    wrong = predictor.predict(label_coded(case))
    assert _dice(wrong.array, case.labels.array, 3) < 0.1 and _dice(wrong.array, swapped, 3) > 0.9
    with pytest.raises(Exception, match="ensemble"):
        load_predictor([model, tmp_path / "model" / "stage1" / "best.pt"])


@pytest.mark.slow
def test_a_cascade_config_trains_both_stages_into_one_model(tiny_cohort, tmp_path):
    from medseg import api

    cfg = tiny_config(epochs=1, iterations_per_epoch=2)
    cfg["cascade"] = {"lowres_spacing": [12, 12, 12], "lowres_patch_size": [16, 16, 8], "prior_corruption": 0.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    result = api.train(config=tmp_path / "config.yaml", manifest=tiny_cohort, out=run, progress=False)
    assert result.best_checkpoint == run / "best.pt" and is_cascade_checkpoint(run / "best.pt")
    info = json.loads((run / "run.json").read_text())
    stages = info["stages"]
    assert stages["stage1"]["spacing"] == [12.0, 12.0, 12.0] and stages["stage2"]["spacing"] == [6, 6, 6]
    s1 = json.loads((run / "stage1" / "run.json").read_text())
    s2 = json.loads((run / "stage2" / "run.json").read_text())
    assert s1["iterations"] == s2["iterations"] == 2 and s1["val_cases"] == s2["val_cases"] == ["c3"]
    assert len(json.loads((run / "priors" / "priors.json").read_text())) == 4  # training and validation cases
    predictor = load_predictor(run / "best.pt")
    assert predictor.in_channels == 1 and predictor.model.state_dict() is not None
    case = _oblique_flipped(901)
    pred = predictor.predict(case.image)
    assert pred.shape == case.image.shape and np.array_equal(pred.affine, case.image.affine)
    assert pred.meta["cascade"]["stage1_network_grid"] != pred.meta["network_grid"]
    with pytest.raises(ConfigError, match="--resume"):
        api.train(config=tmp_path / "config.yaml", manifest=tiny_cohort, out=run, progress=False)
