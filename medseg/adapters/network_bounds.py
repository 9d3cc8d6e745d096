"""Bounds on the networks other tools' files describe, checked before a single weight is allocated.

An nnU-Net ``plans.json`` or a MONAI bundle's ``network_def`` is data from whoever sent the model: a
feature count of 100000 or a kernel size of 0 must be refused in one line naming the file and the
key, not discovered by the allocator (hundreds of GB) or by the network class's own assertions.
The schema checks of each format live with its reader; what they share is here:

- :data:`MAX_FEATURES`: channels of any one layer (nnU-Net plans at most 320 in 3D, 512 in 2D;
  zoo bundles at most 512);
- :func:`max_parameters`: the parameters one network may hold (``MEDSEG_MAX_PARAMETERS``
  overrides :data:`MAX_PARAMETERS`), counted by building the network on PyTorch's ``meta`` device,
  which allocates nothing;
- :func:`whole`, :func:`number`: one-line checks of plain JSON values.
"""

from __future__ import annotations

import math
from typing import Callable

from medseg.io.limits import limit_from_env

#: Channels of any one layer.
MAX_FEATURES = 2048
#: Parameters one network may hold: 10**9 (4 GB of float32), ten times nnU-Net's largest residual-encoder
#: preset; ``MEDSEG_MAX_PARAMETERS`` (a positive whole number) overrides it.
MAX_PARAMETERS = 10**9


def max_parameters() -> int:
    return limit_from_env("MEDSEG_MAX_PARAMETERS", MAX_PARAMETERS, "parameters")


def whole(value) -> bool:
    """A JSON whole number (not a bool, not a float such as ``1e6``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def number(value) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def short(value, n: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def meta_parameter_count(build: Callable[[], object]) -> int | None:
    """Parameters of the module ``build()`` returns, built on the ``meta`` device (no memory is allocated);
    None when the class cannot be built there (it reads values of tensors while building). Exceptions of
    the constructor propagate: the caller turns them into its one line."""
    import torch

    try:
        with torch.device("meta"):
            net = build()
    except RuntimeError as exc:
        if "meta" in str(exc):
            return None
        raise
    return int(sum(p.numel() for p in net.parameters()))
