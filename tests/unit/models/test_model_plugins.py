"""A third-party package adds a model through the ``medseg.models`` entry-point group."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from medseg.errors import UnknownComponentError
from medseg.models import MODELS, create_model, list_models, model_info

PLUGIN = '''
from torch import nn


def build_tiny(*, spatial_dims, in_channels, out_channels, width=4):
    """Tiny plugin net: two convolutions."""
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return nn.Sequential(conv(in_channels, width, 3, padding=1), nn.ReLU(), conv(width, out_channels, 1))


build_tiny.medseg_tags = {"dims": (2, 3), "divisor": 1}
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """Writes a package ``tinyplug_pkg`` and its installed metadata (dist-info with entry_points.txt) onto sys.path."""
    (tmp_path / "tinyplug_pkg").mkdir()
    (tmp_path / "tinyplug_pkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[medseg.models]\ntiny_plugin_net = tinyplug_pkg:build_tiny\nbroken_plugin_net = tinyplug_pkg.missing:build\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("tiny_plugin_net", "broken_plugin_net"):
        MODELS.unregister(name)
    sys.modules.pop("tinyplug_pkg", None)


def test_installed_plugin_is_found_listed_and_built(plugin_on_path):
    MODELS.reload_plugins()
    assert "tiny_plugin_net" in list_models()
    info = model_info("tiny_plugin_net")
    assert info["description"] == "Tiny plugin net: two convolutions."
    assert info["options"] == {"width": 4} and info["params"][3] > 0
    net = create_model("tiny_plugin_net", spatial_dims=3, in_channels=1, out_channels=3, width=2)
    assert net(torch.zeros(1, 1, 5, 6, 7)).shape == (1, 3, 5, 6, 7)


def test_broken_plugin_is_reported_by_name_and_the_others_still_work(plugin_on_path, capsys):
    from medseg.cli import main

    MODELS.reload_plugins()
    assert "broken_plugin_net" in MODELS.failed and "broken_plugin_net" not in list_models()
    with pytest.raises(UnknownComponentError, match="broken_plugin_net.*failed to load.*ModuleNotFoundError"):
        create_model("broken_plugin_net", spatial_dims=3, in_channels=1, out_channels=2)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny_plugin_net" in out and "unet" in out
    assert "broken_plugin_net" in out and "failed to load" in out


def test_a_fresh_process_sees_the_plugin(plugin_on_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_on_path), os.environ.get("PYTHONPATH", "")])}
    code = (
        "from medseg.models import create_model; print(create_model('tiny_plugin_net', spatial_dims=2, "
        "in_channels=1, out_channels=2))"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Conv2d(1, 4" in res.stdout


def test_model_metadata_is_typed_and_renamed_models_still_load(tmp_path):
    import pytest

    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.models import MODELS, ModelSpec, create_model, model_info
    from medseg.models.checkpoint import build_model, load_checkpoint, save_checkpoint

    with pytest.raises(ValueError, match="unexpected keyword argument 'divisr'"):
        MODELS.register("test_typo_model", divisr=8)(lambda **kw: None)
    assert "test_typo_model" not in MODELS
    assert isinstance(MODELS.get("unet").spec, ModelSpec) and model_info("unet", params=False)["divisor"] >= 1
    # A checkpoint saved under a model's old name loads after the rename (the alias points to the new name).
    net = create_model(
        "unet", spatial_dims=3, in_channels=1, out_channels=5, channels=[4, 8], strides=[2], num_res_units=0
    )
    cfg = config_from_dict(
        {"model": {"name": "unet", "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0}}}
    )
    path = save_checkpoint(tmp_path / "old.pt", net, config=cfg, label_table=PHANTOM_LABELS)
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True)
    ck["model"]["name"] = "unet_legacy_name"
    torch.save(ck, path)
    MODELS.alias("unet_legacy_name", "unet")
    try:
        assert model_info("unet_legacy_name", params=False)["name"] == "unet"
        rebuilt = build_model(load_checkpoint(path))
        x = torch.zeros(1, 1, 16, 16, 16)
        assert torch.equal(rebuilt.eval()(x), net.eval()(x))
    finally:
        MODELS.remove_alias("unet_legacy_name")
