"""Model registry: pick an architecture by name.

>>> from medseg.models import create_model, list_models
>>> net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=5)

The registry (``MODELS``, ``ModelSpec``, ``create_model``, ``model_info``...) lives in
``_registry.py``; built-in families (``unet.py``, ``plain_unet.py``, ``fcn.py``, ``deeplab.py``;
shared layers in ``_blocks.py``) import it and register themselves when this package is
imported below; plugins register through the ``medseg.models`` entry-point group (see
``medseg.registry``). A new model is one file with a builder decorated by
``@MODELS.register(name, description=..., dims=(2, 3), divisor=16, tiny={...})``
and imported below; ``tiny`` holds small-width keyword arguments that the
conformance tests build it with.

Listing (``list_models``, ``model_info(name, params=False)``) builds nothing.
Parameter counts (``model_info(name)``, ``param_count``) build the model on
PyTorch's ``meta`` device: no memory is allocated and no weights initialised,
and the count is cached per (name, spatial_dims).
"""

from __future__ import annotations

from medseg.models import deeplab, fcn, plain_unet, unet  # noqa: F401  (register the built-in families)
from medseg.models._registry import (
    MODELS,
    ModelSpec,
    create_model,
    create_volume_model,
    input_divisor,
    list_models,
    model_info,
    param_count,
)

__all__ = [
    "MODELS",
    "ModelSpec",
    "create_model",
    "create_volume_model",
    "input_divisor",
    "list_models",
    "model_info",
    "param_count",
]
