"""Files medseg reads at run time, shipped inside the package (read with ``importlib.resources``).

- ``configs/labels/*.yaml``: label tables by name (``labels: abdomen_phantom``);
- ``configs/models/*.yaml``: model presets with their per-family training recipe (``medseg plan --model``);
- ``configs/training/*.yaml``: training recipes (the demo's);
- ``pipelines/*.yaml``: pipelines by name (``medseg run dicom_volumetry ...``);
- ``roi_synonyms.yaml``: ROI name variants for RTSTRUCT/SEG import.

The repository's top-level ``configs/`` and ``pipelines/`` are links to these
folders: one source of truth, the same files in a checkout and in a wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_root() -> Path:
    """The folder of the packaged files (a real folder: medseg is installed unzipped)."""
    return Path(str(files("medseg.resources")))


def configs_root() -> Path:
    return resource_root() / "configs"


def pipelines_root() -> Path:
    return resource_root() / "pipelines"


def packaged_pipelines() -> list[str]:
    return sorted(p.stem for p in pipelines_root().glob("*.yaml"))


def find_pipeline(ref: str) -> Path | None:
    """A packaged pipeline by name (``dicom_volumetry`` or ``dicom_volumetry.yaml``), else None."""
    name = Path(str(ref)).name
    for candidate in (name, f"{name}.yaml"):
        p = pipelines_root() / candidate
        if p.is_file() and p.suffix == ".yaml":
            return p
    return None
