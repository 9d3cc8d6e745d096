"""Models trained by other tools, run by medseg's predictor: one table of the folder formats medseg recognises.

Each format is a detector (cheap: a few ``stat`` calls, no imports of heavy libraries) and two
functions named as ``"module:function"`` and imported only when a folder of that format is used:

- ``predictor(path, *, device, progress, folds, checkpoint, expected_labels, **inference) -> Predictor``
- ``summary(path) -> dict``: what ``medseg run`` records of its model before any case starts
  (``path``, ``file_sha256``, ``weights_sha256``, ``model: {name}``, ``labels``), after checking the folder.

The first format whose detector accepts a folder wins, so a more specific layout (a folder of
several nnU-Net models) comes before the plain one. ``Predictor.from_checkpoint``, ``medseg run``
and pipeline validation all ask this table; a new format is one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class ExternalFormat:
    name: str
    detect: Callable[[Path], bool]
    predictor: str  # "module:function"
    summary: str  # "module:function"
    description: str = ""
    files: bool = False  # the detector takes files (a portable model), not folders


def _is_nnunet(p: Path) -> bool:
    return p.is_dir() and (p / "plans.json").is_file() and (p / "dataset.json").is_file()


def _is_monai_bundle(p: Path) -> bool:
    c = p / "configs"
    return (p.is_dir() and (c / "metadata.json").is_file() and not (p / "plans.json").is_file()
            and any((c / n).is_file() for n in ("inference.json", "inference.yaml", "inference.yml")))


def _is_portable(p: Path) -> bool:
    from medseg.adapters.portable import is_portable_file

    return is_portable_file(p)


def _is_totalseg(p: Path) -> bool:
    from medseg.adapters.totalseg import is_totalseg_folder

    return is_totalseg_folder(p)


FORMATS: list[ExternalFormat] = [
    ExternalFormat("monai_bundle", _is_monai_bundle, "medseg.adapters.monai_bundle.predictor:from_folder",
                   "medseg.adapters.monai_bundle.predictor:run_summary",
                   "MONAI bundle (configs/inference.json|yaml, configs/metadata.json, models/model.pt)"),
    ExternalFormat("totalsegmentator", _is_totalseg, "medseg.adapters.totalseg:from_folder",
                   "medseg.adapters.totalseg:run_summary",
                   "TotalSegmentator's nnU-Net result folders (DatasetNNN_*/..., its parts merged as one model)"),
    ExternalFormat("nnunet", _is_nnunet, "medseg.adapters.nnunet.predictor:from_folder",
                   "medseg.adapters.nnunet.predictor:run_summary",
                   "nnU-Net v2 trained-model folder (plans.json, dataset.json, fold_N/)"),
    ExternalFormat("medseg_import", _is_portable, "medseg.adapters.portable:predictor",
                   "medseg.adapters.portable:run_summary",
                   "a model folder written as one file by medseg models import", files=True),
]


def _call(ref: str):
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def detect(path) -> ExternalFormat | None:
    """The format of a model folder, or None (a medseg checkpoint file, or nothing medseg knows)."""
    try:
        p = Path(path)
        if not p.is_dir():
            return next((f for f in FORMATS if f.files and f.detect(p)), None) if p.is_file() else None
    except (OSError, TypeError, ValueError):
        return None
    return next((f for f in FORMATS if f.detect(p)), None)


def is_external_model(path) -> bool:
    return detect(path) is not None


def load_predictor(path, **kwargs):
    fmt = detect(path)
    if fmt is None:
        raise ValueError(f"{path} is not a model folder medseg recognises")
    return _call(fmt.predictor)(path, **kwargs)


def run_summary(path) -> dict:
    fmt = detect(path)
    if fmt is None:
        raise ValueError(f"{path} is not a model folder medseg recognises")
    return _call(fmt.summary)(path)
