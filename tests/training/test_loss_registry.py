"""Losses are chosen by name (``training.loss``) from a registry that plugins extend."""

import pytest
import torch
import torch.nn.functional as F

from medseg.config import config_from_dict
from medseg.errors import ConfigError
from medseg.training.losses import LOSSES, build_loss, check_loss_name

TARGET = torch.tensor([[[[0, 1, 1, 0]]]])  # B=1, 1 channel, 1x4: class indices
PERFECT = torch.tensor([[[[50.0, -50.0, -50.0, 50.0]], [[-50.0, 50.0, 50.0, -50.0]]]])  # B=1, C=2, 1x4
DISJOINT = -PERFECT  # every voxel confidently the other class
UNSURE = torch.tensor([[[[1.0, 0.0, -0.5, 2.0]], [[0.0, 1.0, 0.5, -1.0]]]])


def _soft_dice_loss(logits, target):
    """Soft Dice over background and foreground of softmax probabilities (MONAI's smoothing: 1e-5), by hand."""
    p = logits.softmax(dim=1)[0]
    g = torch.stack([(target[0, 0] == c).float() for c in range(p.shape[0])])
    per_class = [1 - (2 * (p[c] * g[c]).sum() + 1e-5) / (p[c].sum() + g[c].sum() + 1e-5) for c in range(p.shape[0])]
    return torch.stack(per_class).mean()


def test_unknown_loss_names_are_refused_with_a_suggestion_before_any_training_work(tmp_path):
    """Checked where losses are built (config is a leaf): training refuses before it reads the manifest."""
    from medseg.training.loop import train

    assert config_from_dict({"training": {"loss": "dice"}}).training.loss == "dice"
    bad = config_from_dict({"training": {"loss": "dice_cee"}})  # config alone does not load the training code
    with pytest.raises(ConfigError, match="unknown loss 'dice_cee'; did you mean dice_ce"):
        train(config=bad, manifest=tmp_path / "missing.csv", out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_name_like_none_of_them_is_refused_with_the_list_of_names():
    with pytest.raises(ConfigError) as err:
        check_loss_name("focal_tversky", "my.yaml")
    assert str(err.value) == "my.yaml: training.loss: unknown loss 'focal_tversky'; available: ce, dice, dice_ce"


def test_dice_of_a_perfect_prediction_is_zero_and_of_a_disjoint_one_is_one():
    dice = build_loss("dice")
    assert dice(PERFECT, TARGET).item() == pytest.approx(0.0, abs=1e-4)
    assert dice(DISJOINT, TARGET).item() == pytest.approx(1.0, abs=1e-4)
    assert dice(UNSURE, TARGET).item() == pytest.approx(_soft_dice_loss(UNSURE, TARGET).item(), rel=1e-5)


def test_cross_entropy_and_dice_ce_compute_their_known_values():
    ce, dice_ce = build_loss("ce"), build_loss("dice_ce")
    assert ce(UNSURE, TARGET).item() == pytest.approx(F.cross_entropy(UNSURE, TARGET[:, 0]).item(), rel=1e-6)
    assert ce(PERFECT, TARGET).item() == pytest.approx(0.0, abs=1e-6)
    assert ce(DISJOINT, TARGET).item() == pytest.approx(100.0, rel=1e-4)  # -log softmax of a 100-logit gap
    # Dice + cross-entropy with equal weights (MONAI's DiceCELoss defaults)
    expected = _soft_dice_loss(UNSURE, TARGET) + F.cross_entropy(UNSURE, TARGET[:, 0])
    assert dice_ce(UNSURE, TARGET).item() == pytest.approx(expected.item(), rel=1e-5)
    assert dice_ce(PERFECT, TARGET).item() < 1e-3
    # a 3D batch of two, the shape training gives it: still the mean over the batch of each term
    logits3d, target3d = (
        torch.randn(2, 3, 4, 4, 2, generator=torch.Generator().manual_seed(0)),
        torch.randint(0, 3, (2, 1, 4, 4, 2)),
    )
    assert ce(logits3d, target3d).item() == pytest.approx(F.cross_entropy(logits3d, target3d[:, 0]).item(), rel=1e-6)


@pytest.mark.slow
def test_a_registered_loss_is_the_one_training_optimises_and_records(tiny_cohort, tmp_path):
    import pandas as pd
    import yaml
    from helpers import tiny_config

    from medseg.training.trainer import train_from_files

    values = []

    @LOSSES.register("test_scaled_ce", description="test only")
    def _scaled_ce():
        def loss(logits, target):
            value = 3.0 * F.cross_entropy(logits, target[:, 0].long())
            values.append(value.item())
            return value

        return loss

    try:
        (tmp_path / "c.yaml").write_text(
            yaml.safe_dump(tiny_config(epochs=1, iterations_per_epoch=2, loss="test_scaled_ce"))
        )
        train_from_files(config=tmp_path / "c.yaml", manifest=tiny_cohort, out=tmp_path / "run", progress=False)
    finally:
        LOSSES.unregister("test_scaled_ce")
    assert len(values) == 2  # one call per optimizer step
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["loss"][0] == pytest.approx(
        sum(values) / 2, rel=1e-6
    )  # the epoch's loss is the registered loss's mean
    assert values[0] == pytest.approx(
        3.0 * torch.log(torch.tensor(5.0)).item(), rel=0.5
    )  # 5 classes, untrained: ~3 ln 5
