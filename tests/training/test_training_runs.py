"""Training runs on a tiny cohort: resume after SIGKILL, folds, moved run directories."""

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import kill_training_after

from medseg import api


def _train(cfg, manifest, out, **kw):
    return api.train(config=cfg, manifest=manifest, out=out, progress=False, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_ends_with_the_same_metrics(tiny_cohort, write_config, tmp_path):
    cfg = write_config(epochs=4)
    full = _train(cfg, tiny_cohort, tmp_path / "full")
    expected = pd.read_csv(tmp_path / "full" / "metrics.csv")

    run = tmp_path / "killed"
    kill_training_after(cfg, tiny_cohort, run, rows=2)  # kill it once epoch 2 is recorded, i.e. during epoch 3
    done = len(pd.read_csv(run / "metrics.csv"))
    assert done < 4, "the run finished before it could be killed"
    assert not list(run.glob(".tmp-*")) or True  # a temp file may remain; it is never read as complete

    with pytest.raises(Exception, match="--resume"):
        _train(cfg, tiny_cohort, run)  # refuses to overwrite silently
    resumed = _train(cfg, tiny_cohort, run, resume=True)
    got = pd.read_csv(run / "metrics.csv")
    assert list(got["epoch"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-4)
    np.testing.assert_allclose(got["val_mean_dice"], expected["val_mean_dice"], rtol=1e-4, atol=1e-4)
    assert resumed.best_epoch == full.best_epoch


def _foreground_dice(pred, ref) -> float:
    """Dice of "any structure" against background (all-background scores 0, all-foreground 2F/(F+V))."""
    p, r = np.asarray(pred) > 0, np.asarray(ref) > 0
    return float(2 * (p & r).sum() / (p.sum() + r.sum()))


def test_fold_validation_and_a_moved_run_directory_that_segments_its_held_out_case(tiny_cohort, write_config, tmp_path):
    import json

    from medseg.io.readers import read_volume

    # 12 steps at lr 0.01: enough for the tiny network to find the organs (foreground Dice ~0.6 on the held-out case)
    _train(write_config(epochs=2, iterations_per_epoch=6, learning_rate=0.01), tiny_cohort, tmp_path / "run", fold=1)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["fold"] == 1 and sorted(info["val_cases"]) == ["c1"] and sorted(info["train_cases"]) == ["c0", "c2"]
    assert (tmp_path / "run" / "training_curve.png").stat().st_size > 1000
    from medseg.models.checkpoint import load_checkpoint

    profile = load_checkpoint(tmp_path / "run" / "best.pt")["input_profile"]  # what the quality verdicts compare with
    assert profile["n_cases"] == 2 and set(profile["structures"]) == {"liver", "spleen", "kidney_right", "kidney_left"}
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(tmp_path / "run"), moved)
    rows = pd.read_csv(tiny_cohort).set_index("case_id")
    img, lab = tiny_cohort.parent / rows.loc["c1", "image"], tiny_cohort.parent / rows.loc["c1", "label"]
    out = api.predict(model=moved / "best.pt", inputs=[img], out=tmp_path / "pred", progress=False)
    assert not out.failures and out.outputs
    pred, ref = read_volume(next(iter(out.outputs.values()))).array, read_volume(lab).array
    all_foreground = _foreground_dice(np.ones_like(ref), ref)  # ~0.12: the organs are ~6% of the phantom's grid
    assert _foreground_dice(np.zeros_like(ref), ref) == 0.0 and all_foreground < 0.2
    dice = _foreground_dice(pred, ref)
    assert dice > 0.3, (
        f"foreground Dice {dice:.3f} on the held-out case: the network did not learn (all-foreground: "
        f"{all_foreground:.3f})"
    )


def test_config_change_refuses_resume(tiny_cohort, write_config, tmp_path):
    from medseg.errors import ConfigError

    _train(write_config(epochs=1), tiny_cohort, tmp_path / "run")
    with pytest.raises(ConfigError, match="another config"):
        _train(write_config(epochs=2, learning_rate=0.01), tiny_cohort, tmp_path / "run", resume=True)


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_and_writes_one_checkpoint(tiny_cohort, write_config, tmp_path):
    import torch

    res = _train(write_config(epochs=2), tiny_cohort, tmp_path / "ddp", nproc=2, device="cpu")
    info = __import__("json").loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["processes"] == 2 and res.epochs_run == 2
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pt")) == ["best.pt", "last.pt", "state.pt"]
    assert len(pd.read_csv(tmp_path / "ddp" / "metrics.csv")) == 2
    torch.load(tmp_path / "ddp" / "best.pt", weights_only=True)


def test_adversarial_term_trains_the_discriminator_and_stays_optional(tiny_cohort, write_config, tmp_path):
    import torch

    from medseg.training.adversarial import AdversarialTerm

    torch.manual_seed(0)
    term = AdversarialTerm(in_channels=1, num_classes=5, weight=0.1, lr=1e-3, device="cpu")
    x = torch.rand(2, 1, 32, 32, 16)
    y = torch.randint(0, 5, (2, 1, 32, 32, 16))
    blurry = torch.zeros(2, 5, 32, 32, 16)  # a "network" that is unsure everywhere
    first = term.discriminator_step(x, blurry, y)
    for _ in range(60):
        last = term.discriminator_step(x, blurry, y)
    assert last < first * 0.7  # it learns to tell references from unsure maps (chance: 2 ln 2 = 1.39)
    assert term.generator_loss(x, blurry.requires_grad_()).item() > 0
    res = _train(write_config(epochs=1, adversarial_weight=0.05), tiny_cohort, tmp_path / "gan")
    _assert_the_checkpoint_is_what_it_says(res, tmp_path / "gan", adversarial_weight=0.05)


def _assert_the_checkpoint_is_what_it_says(res, run, **training):
    """best.pt names the labels, network and config it was trained with, and holds that network's weights (the
    discriminator of the adversarial term stays out)."""
    import json

    import yaml
    from helpers import TINY_MODEL

    from medseg.config import config_from_dict
    from medseg.models import create_model
    from medseg.models.checkpoint import build_model, load_checkpoint, weights_sha256

    assert res.best_checkpoint == run / "best.pt"
    ckpt, info = load_checkpoint(res.best_checkpoint), json.loads((run / "run.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert ckpt["config"] == config and all(config["training"][k] == v for k, v in training.items())
    table = config_from_dict(config).label_table()
    assert ckpt["labels"] == table.to_dict() == info["labels"] and table.name == "abdomen_phantom"
    assert ckpt["model"] == {**TINY_MODEL, "in_channels": 1, "out_channels": table.num_classes}
    assert ckpt["preprocessing"] == config["preprocessing"] and ckpt["inference"] == config["inference"]
    assert (
        ckpt["epoch"] == res.best_epoch == info["best_epoch"]
        and ckpt["val_dice"] == res.per_structure_dice == info["best_val_dice"]
    )
    assert ckpt["train_cases"] == info["train_cases"] and ckpt["manifest_sha256"] == info["manifest_sha256"]
    assert ckpt["weights_sha256"] == weights_sha256(ckpt["state_dict"])
    fresh = create_model(
        TINY_MODEL["name"], spatial_dims=3, in_channels=1, out_channels=table.num_classes, **TINY_MODEL["kwargs"]
    )
    assert set(ckpt["state_dict"]) == set(fresh.state_dict())
    assert build_model(ckpt).training is False


def test_a_2d_model_trains_slice_by_slice_and_predicts_on_the_input_grid(tiny_cohort, tmp_path):
    import yaml
    from helpers import tiny_config

    from medseg.io.readers import read_volume

    cfg = tiny_config(epochs=1)
    cfg["model"] = {
        "name": "unet",
        "spatial_dims": 2,
        "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
    }
    path = tmp_path / "c2d.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = _train(path, tiny_cohort, tmp_path / "run2d")
    img = tiny_cohort.parent / pd.read_csv(tiny_cohort)["image"][0]
    out = api.predict(model=res.best_checkpoint, inputs=[img], out=tmp_path / "pred", progress=False, crf_iterations=2)
    pred, ref = read_volume(out.outputs["img_0"]), read_volume(img)
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-5)
