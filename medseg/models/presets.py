"""Model presets: ``configs/models/<name>.yaml`` files that a training config can refer to by name.

A preset is the ``model:`` section of a training config (``name``, ``spatial_dims``,
``kwargs``) saved under a name, e.g. ``configs/models/deeplabv3_small.yaml``::

    name: deeplabv3
    spatial_dims: 3
    kwargs: {output_stride: 8, channels: [16, 32, 64, 128], atrous_rates: [1, 2, 3]}

``load_model_preset("deeplabv3_small")`` returns that mapping, checked against the
registry (the model exists, supports the dims, accepts the kwargs) without building it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from medseg.errors import ConfigError

_KEYS = {"name", "spatial_dims", "kwargs"}


def preset_dir() -> Path:
    from medseg.config import CONFIG_ROOT

    return CONFIG_ROOT / "models"


def list_model_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_model_preset(name: str, root: Path | None = None) -> dict:
    """The preset ``name`` as ``{"name", "spatial_dims", "kwargs"}``; errors name the file and what is wrong."""
    import yaml

    from medseg.models import MODELS, _accepts_any, model_info

    root = Path(root) if root is not None else preset_dir()
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known presets: {', '.join(known) or 'none'}"
        raise ConfigError(f"model preset {name!r} not found in {root}; {hint}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or set(data) - _KEYS or "name" not in data:
        raise ConfigError(f"{path}: a model preset is a mapping with keys {sorted(_KEYS)} ('name' required), found {data!r}")
    preset = {"name": str(data["name"]), "spatial_dims": int(data.get("spatial_dims", 3)), "kwargs": dict(data.get("kwargs") or {})}
    info = model_info(preset["name"], params=False)  # unknown model -> UnknownComponentError with close matches
    if preset["spatial_dims"] not in info["dims"]:
        raise ConfigError(f"{path}: model {preset['name']!r} supports spatial_dims {list(info['dims'])}, the preset says {preset['spatial_dims']}")
    unknown = set(preset["kwargs"]) - set(info["options"])
    if unknown and not _accepts_any(MODELS.get(preset["name"])):
        raise ConfigError(f"{path}: model {preset['name']!r} has no option(s) {sorted(unknown)}; accepted: {sorted(info['options'])}")
    return preset
