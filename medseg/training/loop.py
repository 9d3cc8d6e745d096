"""``train``: the training entry point at its long-standing import path.

The run itself is ``medseg.training.trainer.Trainer`` (named hooks: on_train_start, train_step,
on_epoch_end, validate, save_checkpoint, on_train_end); ``train`` builds and runs one (or spawns
DistributedDataParallel processes that do) and lives with it in ``trainer.py``, beside
``train_from_files``, the front door from a config file. This module re-exports what callers have
always imported from here: ``train``, ``TrainResult`` and ``split_cases`` (``medseg.training.cases``).
"""

from __future__ import annotations

from medseg.training.cases import split_cases
from medseg.training.trainer import Best, Trainer, TrainResult, train

__all__ = ["Best", "TrainResult", "Trainer", "split_cases", "train"]
