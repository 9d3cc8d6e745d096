"""``import_dataset`` and ``phantoms``: manifests from data set folders, synthetic CT phantoms; see
``medseg.api``."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.data.dataset_import import manifest_from_folder
from medseg.data.phantoms import write_cohort

PathLike = str | os.PathLike


def import_dataset(*, folder: PathLike, out: PathLike, folds: int = 0, seed: int = 0) -> tuple[Path, Path]:
    """Manifest + label table (``<out stem>_labels.yaml``) from an nnU-Net raw or Decathlon folder; returns both
    paths."""
    return manifest_from_folder(folder, out, folds=folds, seed=seed)


def phantoms(*, out: PathLike, n: int = 8, seed: int = 0, split: str = "train", dicom: bool = False) -> Path:
    """Synthetic CT phantoms with exact truth, their manifest and label table; returns the manifest path."""
    return write_cohort(out, n, seed=seed, split=split, dicom=dicom)
