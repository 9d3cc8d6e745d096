"""The model formats of other tools that medseg runs, registered with ``medseg.inference.load`` when
``medseg.adapters`` is imported (``register_formats``).

Each format is a detector (cheap: a few ``stat`` calls, no imports of heavy libraries) and two functions
(see ``medseg.inference.load``): ``load`` (the predictor; the format's own options are checked there) and
``summary`` (what ``medseg run`` records of its model before any case starts).

The first format whose detector accepts a folder wins, so a more specific layout (a folder of
several nnU-Net models) comes before the plain one. A new format is one entry in ``FORMATS``.
"""

from __future__ import annotations

from pathlib import Path

from medseg.adapters import portable, totalseg
from medseg.adapters.monai_bundle import predictor as bundle_predictor
from medseg.adapters.nnunet import predictor as nnunet_predictor
from medseg.adapters.nnunet.folder import is_nnunet_folder
from medseg.inference.load import ModelFormat, register_format


def _is_monai_bundle(p: Path) -> bool:
    c = p / "configs"
    return (
        p.is_dir()
        and (c / "metadata.json").is_file()
        and not (p / "plans.json").is_file()
        and any((c / n).is_file() for n in ("inference.json", "inference.yaml", "inference.yml"))
    )


FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat(
        "monai_bundle",
        _is_monai_bundle,
        bundle_predictor.from_folder,
        bundle_predictor.run_summary,
        "MONAI bundle (configs/inference.json|yaml, configs/metadata.json, models/model.pt)",
    ),
    ModelFormat(
        "totalsegmentator",
        totalseg.is_totalseg_folder,
        totalseg.from_folder,
        totalseg.run_summary,
        "TotalSegmentator's nnU-Net result folders (DatasetNNN_*/..., its parts merged as one model)",
    ),
    ModelFormat(
        "nnunet",
        is_nnunet_folder,
        nnunet_predictor.from_folder,
        nnunet_predictor.run_summary,
        "nnU-Net v2 trained-model folder (plans.json, dataset.json, fold_N/)",
    ),
    ModelFormat(
        "medseg_import",
        portable.is_portable_file,
        portable.predictor,
        portable.run_summary,
        "a model folder written as one file by medseg models import",
        files=True,
    ),
)


def register_formats() -> None:
    """Register ``FORMATS`` with ``medseg.inference.load``, in this order (again: replaced in place)."""
    for fmt in FORMATS:
        register_format(fmt)
