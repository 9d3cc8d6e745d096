"""``list_models``, ``model_info``, ``failed_plugins``, ``import_model``: the models medseg knows; see
``medseg.api``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from medseg import models
from medseg.adapters import portable

PathLike = str | os.PathLike


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (builds nothing)."""
    return models.list_models(pattern)


def model_info(name: str, *, params: bool = True) -> dict:
    """A model's description, dims, input divisor, options and (``params``) parameter counts."""
    return models.model_info(name, params=params)


def failed_plugins() -> dict[str, str]:
    """Model plugins that failed to load: name -> why."""
    return dict(models.MODELS.failed)


def import_model(
    path: PathLike, *, out: PathLike, folds: Sequence | None = None, checkpoint: str = "final", force: bool = False
) -> Path:
    """Write a model folder of another tool (nnU-Net v2 trained-model folder, TotalSegmentator's results) as one
    portable file that ``medseg predict --model FILE`` runs with the folder's labels; loads with
    ``torch.load(weights_only=True)``. An existing ``out`` is refused unless ``force``. See
    ``medseg.adapters.portable``."""
    return portable.import_model(path, out, folds=folds, checkpoint=checkpoint, force=force)
