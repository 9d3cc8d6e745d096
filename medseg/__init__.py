"""medseg: segment CT/MR volumes and quantify what is found.

Importing ``medseg`` is cheap: torch and MONAI load only when a model is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from medseg.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    GeometryError,
    InputError,
    MedsegError,
    UnknownComponentError,
)

__all__ = [
    "__version__",
    "MedsegError",
    "InputError",
    "GeometryError",
    "ConfigError",
    "UnknownComponentError",
    "CheckpointError",
]
