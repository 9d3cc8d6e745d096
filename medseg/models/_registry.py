"""The model registry: ``MODELS``, ``ModelSpec`` and the functions that build, list and describe models by name.

Model files (``unet.py``, ``fcn.py``...) import ``MODELS`` from here and register their builders with
``@MODELS.register(name, description=..., dims=(2, 3), divisor=16, tiny={...})``; ``medseg.models``
imports the built-in families (so that they register) and re-exports these names. Nothing here imports a
model file: the registry sits below the architectures (as timm's ``_registry``).

Listing (``list_models``, ``model_info(name, params=False)``) builds nothing.
Parameter counts (``model_info(name)``, ``param_count``) build the model on
PyTorch's ``meta`` device: no memory is allocated and no weights initialised,
and the count is cached per (name, spatial_dims).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, dataclass, field

from medseg.errors import ConfigError
from medseg.models.slicewise import SliceWise
from medseg.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """What a model family tells the registry (typed: an unknown key is an error at registration)."""

    family: str = ""  # architecture family (unet, fcn, deeplab...): for listings and comparisons
    dims: tuple = (2, 3)  # spatial dims it supports
    divisor: int = 1  # input sizes must be multiples of this (sliding windows, patches)
    tiny: dict = field(default_factory=dict)  # small-width kwargs the conformance tests build it with
    deep_supervision: bool = False  # train-mode forward may return a list of logits (full resolution first)


MODELS: Registry = Registry("model", entry_point_group="medseg.models", spec_type=ModelSpec)

_FIXED = ("spatial_dims", "in_channels", "out_channels")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a glob pattern. Builds nothing."""
    return MODELS.names(pattern)


def _options(entry) -> dict:
    params = inspect.signature(entry.builder).parameters.values()
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params
        if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in _FIXED
    }


def _accepts_any(entry) -> bool:
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(entry.builder).parameters.values())


@functools.lru_cache(maxsize=None)
def param_count(name: str, spatial_dims: int, in_channels: int = 1, out_channels: int = 2) -> int | None:
    """Trainable parameters of ``name`` at its default width, counted on the meta device (nothing allocated).

    ``None`` when the builder cannot run on the meta device (some plugins).
    """
    import torch

    try:
        with torch.device("meta"):
            net = create_model(name, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
    except Exception:  # noqa: BLE001 - a count is informative only
        return None
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def model_info(name: str, *, params: bool = True) -> dict:
    """What a model is: description, ``dims``, input size ``divisor``, options with defaults, and
    ``params`` ({spatial_dims: parameter count at default width, 1 input channel, 2 classes}).

    ``params=False`` skips the count and builds nothing.
    """
    entry = MODELS.get(name)
    spec = entry.spec if entry.spec is not None else ModelSpec()
    info = {"name": entry.name, "description": entry.description, **asdict(spec), "options": _options(entry)}
    if params:
        info["params"] = {d: param_count(name, d) for d in info["dims"]}
    return info


def create_model(name: str, *, spatial_dims: int, in_channels: int, out_channels: int, **kwargs):
    """Build model ``name``. Unknown names and options raise a ``ConfigError`` naming the accepted ones."""
    entry = MODELS.get(name)  # a renamed model's old name resolves to the current one
    dims = (entry.spec or ModelSpec()).dims
    if spatial_dims not in dims:
        raise ConfigError(
            f"model {name!r} supports spatial_dims {list(dims)}, got {spatial_dims}; set model.spatial_dims to one of "
            "them"
        )
    if not _accepts_any(entry):
        accepted = set(_options(entry))
        unknown = set(kwargs) - accepted
        if unknown:
            raise ConfigError(
                f"model {name!r} got unknown option(s) {sorted(unknown)}; accepted: {sorted(accepted) or 'none'}"
            )
    return entry.builder(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def input_divisor(name: str, *, spatial_dims: int = 3, **kwargs) -> int:
    """What input sizes model ``name`` with these options must be multiples of to run without padding.

    The network's own ``divisor`` (it follows its depth and strides: ``unet`` with four
    strides of 2 needs 16, not the registry's 8), read from a build on the meta device
    (no memory); the registry's ``divisor`` for networks that do not say.
    """
    import torch

    entry = MODELS.get(name)
    fallback = int((entry.spec or ModelSpec()).divisor)
    try:
        with torch.device("meta"):
            net = create_model(name, spatial_dims=spatial_dims, in_channels=1, out_channels=2, **kwargs)
    except ConfigError:
        raise
    except Exception:  # a third-party builder that cannot build on the meta device: its registered divisor
        return fallback
    return int(getattr(net, "divisor", fallback) or fallback)


def create_volume_model(name: str, *, spatial_dims: int, in_channels: int, out_channels: int, **kwargs):
    """A model that takes 3D volumes: 3D models as they are, 2D models run slice by slice (``SliceWise``)."""
    net = create_model(name, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    if spatial_dims == 2:
        net = SliceWise(net, axis=-1)
    return net
