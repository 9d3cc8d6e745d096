"""The one voxel limit every reader checks a header against before allocating.

``MEDSEG_MAX_VOXELS`` (a positive whole number) overrides ``MAX_VOXELS`` for
NIfTI/NRRD/MHA readers, DICOM stacks and the network grid alike.
"""

from __future__ import annotations

import os

from medseg.errors import ConfigError

#: Voxels one input may hold, unless ``MEDSEG_MAX_VOXELS`` says otherwise: 2**30 (1024^3), twice
#: the largest clinical CT (512 x 512 x 2000). Checked against the header before any voxel is read.
MAX_VOXELS = 2**30


def limit_from_env(name: str, default: int, unit: str) -> int:
    """A limit a user may set: the environment variable ``name`` (a positive whole number, ``_`` allowed as a
    digit separator) or ``default``; anything else is a one-line ``ConfigError``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={raw[:40]!r}: expected a positive whole number of {unit} (default {default})")
    return value


def max_voxels() -> int:
    """The voxel limit in force: ``MEDSEG_MAX_VOXELS`` (a positive integer) or ``MAX_VOXELS``."""
    return limit_from_env("MEDSEG_MAX_VOXELS", MAX_VOXELS, "voxels")
