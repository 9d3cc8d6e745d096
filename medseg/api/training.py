"""``train`` and ``plan`` (``medseg train``/``plan``); see ``medseg.api``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from medseg.training import planning, trainer

PathLike = str | os.PathLike

#: ``train(config=, manifest=, out=, ...)``: the training front door itself (``trainer.train_from_files``).
train = trainer.train_from_files


def plan(
    *,
    manifest: PathLike,
    out: PathLike,
    base_config: PathLike | None = None,
    labels: PathLike | None = None,
    model: str | None = None,
    memory_gb: float = 4.0,
    min_spacing: float = 1.0,
    overrides: Sequence[str] | None = None,
    budget_minutes: float | None = None,
) -> tuple[Path, dict]:
    """Write a training config derived from the manifest's data; returns ``(config path, fingerprint)``.

    The label table comes from ``labels`` or the data set (``medseg.data.label_sources``);
    ``model`` names a preset under ``configs/models`` (architecture + per-family recipe) or a model that
    ``medseg models`` lists (its family's preset, else the model at its default width).
    ``budget_minutes`` (default: the base config's ``training.max_minutes``, else its schedule) and the device
    decide how coarse to train; the fingerprint's ``resolution`` holds the candidates and the reasons.
    """
    return planning.plan(
        manifest,
        out,
        base_config=base_config,
        memory_gb=memory_gb,
        min_spacing=min_spacing,
        overrides=list(overrides or []),
        labels=labels,
        model=model,
        budget_minutes=budget_minutes,
    )
