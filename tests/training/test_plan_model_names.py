"""``medseg plan --model`` takes what ``medseg models`` lists, not only preset file names (issue 34).

Before: ``--model unet_classic`` failed with "model preset 'unet_classic' not found"; only
``unet_classic_small`` worked.
"""

from __future__ import annotations

import pytest
from test_label_sources import _brainish  # same folder (pytest puts it on sys.path)

from medseg.cli import main
from medseg.config import load_config
from medseg.errors import ConfigError
from medseg.models.presets import load_model_preset


def test_registry_names_resolve_to_the_family_preset_or_the_default_recipe():
    from medseg.models.presets import resolve_model_preset

    assert resolve_model_preset("unet_classic") == load_model_preset("unet_classic_small")  # 3D, not unet_slicewise_2d
    assert resolve_model_preset("unet_plain") == load_model_preset("unet_plain_small")
    assert resolve_model_preset("unet_plain")["training"]["optimizer"] == "adamw"  # the family's recipe comes along
    assert resolve_model_preset("unet_slicewise_2d")["model"]["spatial_dims"] == 2  # a preset name still wins
    assert resolve_model_preset("unet") == {"model": {"name": "unet", "spatial_dims": 3, "kwargs": {}}, "training": {}}


def test_an_unknown_name_lists_both_kinds_of_names():
    from medseg.models.presets import resolve_model_preset

    with pytest.raises(ConfigError) as err:
        resolve_model_preset("unet_clasic")
    msg = str(err.value)
    assert "\n" not in msg and "did you mean unet_classic" in msg
    assert "unet_classic_small" in msg and "models (medseg models): " in msg and "deeplabv3plus" in msg


def test_cli_plan_takes_the_name_medseg_models_lists(tmp_path, capsys):
    manifest = _brainish(tmp_path / "d")
    for name, expected_kwargs in (
        ("unet_classic", load_model_preset("unet_classic_small")["model"]["kwargs"]),
        ("unet_classic_small", load_model_preset("unet_classic_small")["model"]["kwargs"]),
    ):
        out = tmp_path / f"{name}.yaml"
        code = main(
            ["plan", str(manifest), "--out", str(out), "--model", name, "--min-spacing", "2", "--memory-gb", "0.2"]
        )
        assert code == 0, capsys.readouterr().err
        cfg = load_config(out)
        assert cfg.model.name == "unet_classic" and cfg.model.kwargs == expected_kwargs
    code = main(["plan", str(manifest), "--out", str(tmp_path / "x.yaml"), "--model", "no_such_net"])
    err = capsys.readouterr().err
    assert code == 2 and "neither a model preset nor a model" in err and len(err.strip().splitlines()) == 1, err
