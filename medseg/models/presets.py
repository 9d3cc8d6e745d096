"""Model presets: ``configs/models/<name>.yaml`` files that a training config can refer to by name.

A preset is the ``model:`` section of a training config (``name``, ``spatial_dims``,
``kwargs``) saved under a name, plus an optional ``training:`` mapping: the family's
recipe, as ``training:`` keys of a config (``medseg.config.TrainingConfig`` fields), e.g.
``configs/models/unet_plain_small.yaml``::

    name: unet_plain
    spatial_dims: 3
    kwargs: {channels: [16, 32, 64, 128, 160]}
    training: {learning_rate: 0.01, optimizer: sgd}

``resolve_model_preset`` also takes the name of a registered model (what ``medseg models``
lists, or an alias): the family's preset (``<name>_small``, else another preset of that model,
3D first), else the model at its default width with no recipe of its own.

``load_model_preset("unet_plain_small")`` returns
``{"model": {"name", "spatial_dims", "kwargs"}, "training": {...}}`` (``training``
empty when the preset has none), checked against the registry (the model exists,
supports the dims, accepts the kwargs) and against ``TrainingConfig`` (known keys,
right types) without building anything. A training config built from a preset
takes both: ``model:`` from ``model`` and the ``training`` keys over its own
(``preset_overrides`` gives them as ``--set`` strings).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from medseg import safe_yaml
from medseg.config import CONFIG_ROOT, TrainingConfig, build_dataclass
from medseg.errors import ConfigError
from medseg.models._registry import MODELS, _accepts_any, model_info

_KEYS = {"name", "spatial_dims", "kwargs", "training"}


def preset_dir() -> Path:
    return CONFIG_ROOT / "models"


def list_model_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_model_preset(name: str, root: Path | None = None) -> dict:
    """The preset ``name`` as ``{"model": {"name", "spatial_dims", "kwargs"}, "training": {...}}``;
    errors name the file and what is wrong."""
    root = Path(root) if root is not None else preset_dir()
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known presets: {', '.join(known) or 'none'}"
        raise ConfigError(f"model preset {name!r} not found in {root}; {hint}")
    data = safe_yaml.load_file(path) or {}
    if not isinstance(data, dict) or set(data) - _KEYS or "name" not in data:
        raise ConfigError(
            f"{path}: a model preset is a mapping with keys {sorted(_KEYS)} ('name' required), found {data!r}"
        )
    preset = {
        "name": str(data["name"]),
        "spatial_dims": int(data.get("spatial_dims", 3)),
        "kwargs": dict(data.get("kwargs") or {}),
    }
    training = _training_recipe(data.get("training"), path)
    info = model_info(preset["name"], params=False)  # unknown model -> UnknownComponentError with close matches
    if preset["spatial_dims"] not in info["dims"]:
        raise ConfigError(
            f"{path}: model {preset['name']!r} supports spatial_dims {list(info['dims'])}, the preset says "
            f"{preset['spatial_dims']}"
        )
    unknown = set(preset["kwargs"]) - set(info["options"])
    if unknown and not _accepts_any(MODELS.get(preset["name"])):
        raise ConfigError(
            f"{path}: model {preset['name']!r} has no option(s) {sorted(unknown)}; accepted: {sorted(info['options'])}"
        )
    return {"model": preset, "training": training}


def _training_recipe(data, path: Path) -> dict:
    """The preset's ``training:`` mapping, checked as ``TrainingConfig`` keys and types (``{}`` when absent)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: 'training' is a mapping of training settings (e.g. {{learning_rate: 0.01, optimizer: sgd}}), "
            f"found {data!r}"
        )
    build_dataclass(TrainingConfig, data, f"{path}: training")  # unknown keys ("did you mean"), wrong types
    return dict(data)


def preset_overrides(preset: dict) -> list[str]:
    """A loaded preset as config overrides (``section.key=value``, values in JSON): ``model.*`` and its
    ``training.*``."""
    model = preset["model"]
    out = [
        f"model.name={model['name']}",
        f"model.spatial_dims={model['spatial_dims']}",
        "model.kwargs=" + json.dumps(model["kwargs"]),
    ]
    return out + [f"training.{k}={json.dumps(v)}" for k, v in preset["training"].items()]


def _preset_models(root: Path) -> dict[str, tuple[str, int]]:
    """preset name -> (model name, spatial_dims) as the preset files say (read, not checked)."""
    out = {}
    for path in sorted(root.glob("*.yaml")):
        try:
            data = safe_yaml.load_file(path) or {}
        except Exception:  # noqa: BLE001 - a broken preset is reported when it is loaded by name
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            dims = data.get("spatial_dims", 3)
            out[path.stem] = (data["name"], dims if isinstance(dims, int) else 3)
    return out


def resolve_model_preset(name: str, root: Path | None = None) -> dict:
    """A preset by its name, or by the name of a registered model (``medseg models``): that model's preset
    (``<model>_small`` first, then its other presets, 3D before 2D), else the model itself at its default
    width (``{"model": {"name", "spatial_dims", "kwargs": {}}, "training": {}}``). An unknown name is one
    ``ConfigError`` listing both kinds of names."""
    root = Path(root) if root is not None else preset_dir()
    if (root / f"{name}.yaml").is_file():
        return load_model_preset(name, root)
    models = MODELS.names()
    canonical = MODELS.resolve(name)
    if canonical in models:
        presets = {p: m for p, m in _preset_models(root).items() if MODELS.resolve(m[0]) == canonical}
        if presets:
            best = sorted(presets, key=lambda p: (p != f"{canonical}_small", presets[p][1] != 3, p))[0]
            return load_model_preset(best, root)
        dims = tuple(model_info(canonical, params=False)["dims"])
        return {"model": {"name": canonical, "spatial_dims": 3 if 3 in dims else dims[0], "kwargs": {}}, "training": {}}
    presets = sorted(p.stem for p in root.glob("*.yaml"))
    close = difflib.get_close_matches(name, presets + models, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"model {name!r} is neither a model preset nor a model; {hint}presets ({root}): "
        f"{', '.join(presets) or 'none'}; models (medseg models): {', '.join(models)}"
    )
