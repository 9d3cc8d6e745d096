"""Adding an intensity scheme is one class: registered by name or through the ``medseg.intensity`` entry-point group."""

import sys

import numpy as np
import pytest
import torch

from medseg.config import config_from_dict
from medseg.errors import ConfigError
from medseg.transforms.intensity import (
    INTENSITY,
    check_preprocessing,
    floor_value,
    get_scheme,
    normalize,
    scheme_for_modality,
)
from medseg.transforms.presets import deterministic_transforms

PLUGIN = '''
import torch
from medseg.transforms.intensity import IntensityScheme


class PercentileScale(IntensityScheme):
    """Scale the 1st..99th percentile of each image to [0, 1] (a test plugin)."""

    name = "percentile_scale"

    def normalize(self, x, pre):
        x = x.float()
        lo, hi = torch.quantile(x.flatten()[::7], torch.tensor([0.01, 0.99]))
        return ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(-1, 2)
'''


@pytest.fixture
def plugin_scheme(tmp_path, monkeypatch):
    """A package with a ``medseg.intensity`` entry point on sys.path; unregistered afterwards."""
    (tmp_path / "medseg_test_norm.py").write_text(PLUGIN)
    dist = tmp_path / "medseg_test_norm-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medseg-test-norm\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[medseg.intensity]\npercentile_scale = medseg_test_norm:PercentileScale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    INTENSITY.reload_plugins()
    yield "percentile_scale"
    INTENSITY.unregister("percentile_scale")
    sys.modules.pop("medseg_test_norm", None)


def test_builtin_schemes_compute_their_documented_numbers():
    x = torch.tensor([[-1000.0, -200.0, 25.0, 250.0, 900.0]])
    assert torch.allclose(
        normalize(x, {"intensity": "ct_window", "window": [-200, 250]}), torch.tensor([[0, 0, 0.5, 1, 1]])
    )
    pre = {"intensity": "ct_clip_zscore", "clip": [-100, 200], "mean": 50.0, "std": 50.0}
    assert torch.allclose(normalize(x, pre), torch.tensor([[-3.0, -3.0, -0.5, 3.0, 3.0]]))
    assert floor_value(pre) == -3.0 and floor_value({"intensity": "zscore"}) is None
    z = normalize(torch.tensor([[0.0, 1.0, 3.0]]), {"intensity": "zscore"})
    assert z[0, 1].item() == pytest.approx(-0.7071, abs=1e-3) and z[0, 2].item() == pytest.approx(0.7071, abs=1e-3)
    assert scheme_for_modality("CT") == "ct_clip_zscore" and scheme_for_modality("MR") == "zscore"


def test_config_validation_asks_the_registry():
    """The config (a leaf) takes any name; the check is the transforms', run where preprocessing is built and by
    medseg train / plan before any work, with the message config validation gave."""
    cfg = config_from_dict({"preprocessing": {"intensity": "zscroe"}})
    with pytest.raises(
        ConfigError, match="^x.yaml: preprocessing.intensity: unknown intensity scheme 'zscroe'; did you mean zscore"
    ):
        check_preprocessing(cfg.preprocessing, "x.yaml")
    with pytest.raises(ConfigError, match="ct_clip_zscore needs clip"):
        check_preprocessing(
            config_from_dict({"preprocessing": {"intensity": "ct_clip_zscore"}}).preprocessing, "x.yaml"
        )
    with pytest.raises(ConfigError, match="ct_clip_zscore needs clip"):
        deterministic_transforms(config_from_dict({"preprocessing": {"intensity": "ct_clip_zscore"}}).preprocessing)


def test_a_plugin_scheme_registers_validates_and_normalises(plugin_scheme):
    cfg = config_from_dict({"preprocessing": {"intensity": plugin_scheme}})
    check_preprocessing(cfg.preprocessing, "x.yaml")
    assert cfg.preprocessing.intensity == plugin_scheme
    x = torch.linspace(0, 100, 1000)[None]
    y = normalize(x, {"intensity": plugin_scheme})
    assert float(y.min()) < 0.01 and float(y.max()) > 0.99
    assert get_scheme(plugin_scheme).fill_value({}, np.array([np.nan, 3.0, 5.0]))[0] == 3.0


@pytest.mark.slow
def test_training_one_step_with_a_plugin_scheme(plugin_scheme, tiny_cohort, tmp_path):
    import yaml
    from helpers import tiny_config

    from medseg import api

    cfg = tiny_config(epochs=1, iterations_per_epoch=1)
    cfg["preprocessing"]["intensity"] = plugin_scheme
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = api.train(config=tmp_path / "c.yaml", manifest=tiny_cohort, out=tmp_path / "run", progress=False)
    assert result.epochs_run == 1 and (tmp_path / "run" / "best.pt").is_file()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["preprocessing"]["intensity"] == plugin_scheme
