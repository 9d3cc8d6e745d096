"""``scan_dicom``, ``convert_dicom``, ``import_dicom``: DICOM folders to inventories, NIfTI and manifests; see
``medseg.api``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from medseg.data.dicom_manifest import convert_label_objects, manifest_from_dicom
from medseg.data.label_names import explicit_table
from medseg.inference.batch import geometry_policy, selection_rule
from medseg.io.atomic import write_csv
from medseg.io.dicom.convert import convert_folder, write_inventory

PathLike = str | os.PathLike


def scan_dicom(
    *,
    folder: PathLike,
    out: PathLike,
    resample_irregular: bool = False,
    refuse_tilt: bool = False,
    with_identifiers: bool = False,
    salt: str | None = None,
    progress: bool = True,
):
    """Header-only inventory of a DICOM folder: ``out`` (one row per series) and ``<out>_files.csv``.

    Returns ``(inventory, series_csv, files_csv)``. Identifiers are written only with ``with_identifiers``.
    """
    return write_inventory(
        folder,
        out,
        policy=geometry_policy(resample_irregular, refuse_tilt),
        progress=progress,
        with_identifiers=with_identifiers,
        salt=salt,
    )


def convert_dicom(
    *,
    folder: PathLike,
    out: PathLike,
    modalities: Sequence[str] = (),
    min_slices: int = 1,
    description: str | None = None,
    resample_irregular: bool = False,
    refuse_tilt: bool = False,
    with_identifiers: bool = False,
    salt: str | None = None,
    progress: bool = True,
    label_table=None,
):
    """Write each image series of a DICOM folder as NIfTI + JSON sidecar (findings, actions); returns the conversion
    result.

    Every RTSTRUCT and DICOM SEG that references a converted series is written beside it as
    ``<series>.<object>.label.nii.gz`` with its label table and findings (listed in ``label_conversion.csv``);
    ``label_table`` (a table file or name) numbers their structures as it does (default: alphabetical).
    """
    rule = selection_rule(modalities, min_slices, description)
    result = convert_folder(
        folder,
        out,
        policy=geometry_policy(resample_irregular, refuse_tilt),
        rule=rule,
        progress=progress,
        with_identifiers=with_identifiers,
        salt=salt,
    )
    result.label_maps = _convert_label_objects(folder, out, result.inventory, salt, explicit_table(label_table))
    return result


def _convert_label_objects(folder, out, inventory, salt, numbering) -> list[dict]:
    """RTSTRUCT/SEG objects of the folder as label maps beside their series' image (``label_conversion.csv``);
    their rows of ``conversion.csv`` then say what they became instead of "skipped"."""
    rows = convert_label_objects(folder, out, inventory=inventory, salt=salt, numbering=numbering)
    if rows:
        write_csv(Path(out) / "label_conversion.csv", pd.DataFrame(rows))
        conversion = Path(out) / "conversion.csv"
        done = {
            r["object_series_key"]: r for r in rows if r.get("status") == "converted" and r.get("object_series_key")
        }
        if done and conversion.is_file():
            df = pd.read_csv(conversion, dtype=str, keep_default_na=False)
            for i, key in df["series_key"].items():
                if key in done and df.at[i, "status"] == "skipped":
                    df.at[i, "status"] = "converted_to_label_map"
                    df.at[i, "output"] = done[key]["output"]
                    df.at[i, "reason"] = "label object written as a label map (label_conversion.csv)"
            write_csv(conversion, df)
    return rows


def import_dicom(*, export: PathLike, out: PathLike, split: str = "train"):
    """Manifest of every image series paired with the RTSTRUCT/SEG that references it, from a DICOM export.

    Writes ``out``, ``<stem>_labels.yaml``, ``<stem>_unpaired.csv`` and the NIfTI pairs under ``<stem>_cache/``;
    returns a ``medseg.data.dicom_manifest.DicomManifest`` (paths, case ids, what was not paired and why).
    """
    return manifest_from_dicom(export, out, split=split)
