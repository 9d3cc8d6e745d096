"""A predictor for any model path: a medseg checkpoint (or several: an ensemble) or a registered model format.

Other tools' model folders (nnU-Net v2, TotalSegmentator, MONAI bundles, portable files) are formats that
``medseg.adapters`` registers here when it is imported (``register_format``); ``inference`` never imports
the adapters. Each format is a detector (cheap: a few ``stat`` calls, no heavy imports) and two functions:

- ``load(path, *, device, progress, folds, checkpoint, expected_labels, **options) -> Predictor``
  (the format's options are checked there, in its own typed options);
- ``summary(path) -> dict``: what ``medseg run`` records of its model before any case starts
  (``path``, ``file_sha256``, ``weights_sha256``, ``model: {name}``, ``labels``), after checking the folder.

medseg's own cascade (one checkpoint file holding two stages, ``medseg.inference.cascade``) is registered
here, first. The first registered format whose detector accepts a path wins, so a more specific layout (a folder of
several nnU-Net models) is registered before the plain one. ``load_predictor``, ``medseg run`` and
pipeline validation all ask this table; a new format is one ``register_format`` call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from medseg.errors import CheckpointError
from medseg.inference import cascade
from medseg.inference.predictor import CheckpointPredictor
from medseg.inference.protocol import Predictor
from medseg.labels import LabelTable


@dataclass(frozen=True)
class ModelFormat:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., Predictor]
    summary: Callable[[Path], dict]
    description: str = ""
    files: bool = False  # the detector takes files (a portable model), not folders


_FORMATS: list[ModelFormat] = []


def register_format(fmt: ModelFormat) -> ModelFormat:
    """Add ``fmt`` after the formats registered so far; registering a name again replaces that entry in place."""
    for i, old in enumerate(_FORMATS):
        if old.name == fmt.name:
            _FORMATS[i] = fmt
            return fmt
    _FORMATS.append(fmt)
    return fmt


#: medseg's own two-stage cascade (one checkpoint file holding both stages; ``medseg.inference.cascade``).
register_format(
    ModelFormat(
        "medseg_cascade",
        cascade.is_cascade_checkpoint,
        cascade.load,
        cascade.run_summary,
        "a medseg cascade: one checkpoint file with a low-resolution and a full-resolution stage (medseg train)",
        files=True,
    )
)


def unregister_format(name: str) -> None:
    """Remove the format ``name`` (tests that register a format of their own)."""
    _FORMATS[:] = [f for f in _FORMATS if f.name != name]


def model_formats() -> tuple[ModelFormat, ...]:
    """The registered formats, in the order they are tried."""
    return tuple(_FORMATS)


def detect(path) -> ModelFormat | None:
    """The format of a model folder (or file), or None (a medseg checkpoint file, or nothing medseg knows)."""
    try:
        p = Path(path)
        if not p.is_dir():
            return next((f for f in _FORMATS if f.files and f.detect(p)), None) if p.is_file() else None
    except (OSError, TypeError, ValueError):
        return None
    return next((f for f in _FORMATS if f.detect(p)), None)


def is_external_model(path) -> bool:
    return detect(path) is not None


def load_predictor(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    device=None,
    expected_labels: LabelTable | None = None,
    progress: bool = False,
    folds: Sequence | None = None,
    checkpoint: str = "final",
    **options,
) -> Predictor:
    """The predictor of a model path: a registered format's (one path that format's detector accepts), else
    medseg checkpoint(s) (``CheckpointPredictor.from_checkpoint``; several paths: an ensemble).

    ``expected_labels``: refuse a model trained for another label table. Keyword ``options`` change inference
    settings (``sw_batch_size=8, amp="off"``...; which keys apply depends on the format, each says). For
    nnU-Net ``folds`` (default: every fold present) and ``checkpoint`` ("final" or "best") choose its weights.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    fmt = detect(paths[0]) if len(paths) == 1 else None
    cascades = [p for p in paths if cascade.is_cascade_checkpoint(p)] if len(paths) > 1 else []
    if cascades:
        raise CheckpointError("a cascade model is one model; it cannot be an ensemble member", path=cascades[0])
    if fmt is not None:
        return fmt.load(
            paths[0],
            device=device,
            progress=progress,
            folds=folds,
            checkpoint=checkpoint,
            expected_labels=expected_labels,
            **options,
        )
    return CheckpointPredictor.from_checkpoint(
        paths,
        device=device,
        expected_labels=expected_labels,
        progress=progress,
        folds=folds,
        checkpoint=checkpoint,
        **options,
    )


def run_summary(path) -> dict:
    """What ``medseg run`` records of a model folder of a registered format (see the module's docstring)."""
    fmt = detect(path)
    if fmt is None:
        raise ValueError(f"{path} is not a model folder medseg recognises")
    return fmt.summary(path)
