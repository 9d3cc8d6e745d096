"""Write an inventory of a DICOM folder, and convert its image series to NIfTI.

``write_inventory``: ``inventory.csv`` (one row per series) and
``<stem>_files.csv`` (every file that is in no image stack, with the reason).
``convert_folder``: one ``<study_key>_<series_key>[-part].nii.gz`` per image
stack, each with a JSON sidecar (non-identifying header fields, geometry and
every finding with its action), plus ``conversion.csv`` saying what became of
every series. File names and tables carry pseudonymous keys only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import medseg
from medseg.errors import MedsegError
from medseg.io.atomic import write_csv, write_json
from medseg.io.dicom.series import no_images_error, scan_inventory, source_folder, volume_from_candidate
from medseg.io.readers import write_volume
from medseg.progress import progress_bar as tqdm

log = logging.getLogger(__name__)


def write_inventory(folder, out_csv, *, policy=None, progress=False, with_identifiers=False, salt=None):
    """Scan ``folder`` and write the two inventory CSVs. Returns ``(inventory, series_csv, files_csv)``."""
    inv = scan_inventory(folder, policy=policy, progress=progress, salt=salt)
    series, files = inv.tables(with_identifiers=with_identifiers)
    out_csv = Path(out_csv)
    files_csv = out_csv.with_name(
        out_csv.name[: -len(out_csv.suffix)] + "_files.csv" if out_csv.suffix else out_csv.name + "_files.csv"
    )
    write_csv(out_csv, series)
    write_csv(files_csv, files)
    return inv, out_csv, files_csv


@dataclass
class ConvertResult:
    outputs: list = field(default_factory=list)  # NIfTI paths written
    refused: dict = field(default_factory=dict)  # stack key -> reason
    inventory: object = None  # the header scan the conversion used (label objects are paired from it)
    label_maps: list = field(
        default_factory=list
    )  # RTSTRUCT/SEG rows from medseg.data.dicom_manifest.convert_label_objects

    @property
    def exit_code(self) -> int:
        if not self.refused:
            return 0
        return 1 if self.outputs else 2


def convert_folder(folder, out_dir, *, policy=None, rule=None, progress=False, with_identifiers=False, salt=None):
    """Convert every image stack of ``folder`` (or those ``rule`` matches) to NIfTI + JSON sidecar."""
    import pandas as pd

    inv = scan_inventory(folder, policy=policy, progress=progress, salt=salt)
    if not inv.candidates:  # nothing to convert is a mistake in the input: one line, exit 2, nothing written
        raise no_images_error(inv, folder)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ConvertResult(inventory=inv)
    rows = []
    for e in inv.entries:
        if e.series.not_image or not e.plans:
            rows.append(
                {
                    "study_key": e.series.study_key,
                    "series_key": e.series.series_key,
                    "stack": "",
                    "modality": e.series.modality,
                    "output": "",
                    "status": "skipped",
                    "reason": e.reason,
                    "source_folder": source_folder(e.series, inv.scan.root, with_identifiers=with_identifiers),
                }
            )
    cands = [c for c in inv.candidates if rule is None or rule.matches(c)]
    for c in tqdm(cands, desc="convert", unit="series", disable=not progress):
        name = f"{c.series.study_key}_{c.key}"
        row = {
            "study_key": c.series.study_key,
            "series_key": c.series.series_key,
            "stack": c.plan.label,
            "modality": c.series.modality,
            "output": "",
            "status": "",
            "reason": "",
            "source_folder": source_folder(c.series, inv.scan.root, with_identifiers=with_identifiers),
        }
        try:
            vol = volume_from_candidate(c, str(folder), with_identifiers=with_identifiers)
            target = write_volume(vol, out / f"{name}.nii.gz")
            sidecar = {
                "medseg_version": medseg.__version__,
                "output": target.name,
                **vol.meta["dicom"],
                "shape": list(vol.shape),
                "spacing_mm": list(vol.spacing),
                "affine_ras": vol.affine.tolist(),
            }
            write_json(out / f"{name}.json", sidecar)
            result.outputs.append(target)
            row.update(
                output=target.name,
                status="converted",
                reason="; ".join(f"{f.kind}: {f.action}" for f in c.plan.findings),
            )
        except MedsegError as exc:
            result.refused[c.key] = str(exc)
            row.update(status="refused", reason=c.plan.refused or str(exc))
            log.warning("%s: %s", c.key, c.plan.refused or exc)
        rows.append(row)
    write_csv(
        out / "conversion.csv",
        pd.DataFrame(
            rows,
            columns=["study_key", "series_key", "stack", "modality", "output", "status", "reason", "source_folder"],
        ),
    )
    return result
