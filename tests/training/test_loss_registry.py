"""Losses are chosen by name (``training.loss``) from a registry that plugins extend."""

import pytest
import torch
import torch.nn.functional as F

from medseg.config import config_from_dict
from medseg.errors import ConfigError
from medseg.training.losses import LOSSES, build_loss


def test_unknown_loss_names_are_refused_with_a_suggestion_before_any_training_work(tmp_path):
    """Checked where losses are built (config is a leaf): training refuses before it reads the manifest."""
    from medseg.training.loop import train

    assert config_from_dict({"training": {"loss": "dice"}}).training.loss == "dice"
    bad = config_from_dict({"training": {"loss": "dice_cee"}})  # config alone does not load the training code
    with pytest.raises(ConfigError, match="unknown loss 'dice_cee'; did you mean dice_ce"):
        train(config=bad, manifest=tmp_path / "missing.csv", out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_builtin_losses_compute_known_values():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])  # B=1, C=2, 1x2
    target = torch.tensor([[[[0, 1]]]])
    assert torch.isclose(build_loss("ce")(logits, target), F.cross_entropy(logits, target[:, 0]))
    perfect = torch.tensor([[[[50.0, -50.0]], [[-50.0, 50.0]]]])
    assert build_loss("dice")(perfect, target).item() < 1e-3 and build_loss("dice_ce")(perfect, target).item() < 1e-3


@pytest.mark.slow
def test_a_registered_loss_trains(tiny_cohort, tmp_path):
    import yaml
    from helpers import tiny_config

    from medseg import api

    calls = []

    @LOSSES.register("test_counting_ce", description="test only")
    def _counting():
        def loss(logits, target):
            calls.append(1)
            return F.cross_entropy(logits, target[:, 0].long())

        return loss

    try:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config(epochs=1, iterations_per_epoch=2, loss="test_counting_ce")))
        api.train(config=tmp_path / "c.yaml", manifest=tiny_cohort, out=tmp_path / "run", progress=False)
        assert len(calls) == 2
    finally:
        LOSSES.unregister("test_counting_ce")
