"""Model registry: pick an architecture by name.

>>> from medseg.models import create_model, list_models
>>> net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=5)

Built-in families register themselves when this package is imported; plugins
register through the ``medseg.models`` entry-point group. A new model is one
file with a builder decorated by ``@MODELS.register(...)``.
"""

from __future__ import annotations

import inspect

from medseg.errors import ConfigError
from medseg.registry import Registry

MODELS: Registry = Registry("model", entry_point_group="medseg.models")

from medseg.models import unet  # noqa: E402,F401  (registers the built-ins)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a glob pattern. Builds nothing."""
    return MODELS.names(pattern)


def model_info(name: str) -> dict:
    """What a model is, without building it: description, dims, options."""
    entry = MODELS.get(name)
    sig = inspect.signature(entry.builder)
    options = {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in sig.parameters.values()
        if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in ("spatial_dims", "in_channels", "out_channels")
    }
    return {"name": name, "description": entry.description, **entry.tags, "options": options}


def create_model(name: str, *, spatial_dims: int, in_channels: int, out_channels: int, **kwargs):
    """Build model ``name``. Unknown names and options raise a ``ConfigError`` naming the accepted ones."""
    entry = MODELS.get(name)
    dims = entry.tags.get("dims", (2, 3))
    if spatial_dims not in dims:
        raise ConfigError(f"model {name!r} supports spatial_dims {list(dims)}, got {spatial_dims}")
    accepted = set(model_info(name)["options"])
    unknown = set(kwargs) - accepted
    if unknown:
        raise ConfigError(
            f"model {name!r} got unknown option(s) {sorted(unknown)}; accepted: {sorted(accepted) or 'none'}"
        )
    return entry.builder(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


__all__ = ["MODELS", "create_model", "list_models", "model_info"]
