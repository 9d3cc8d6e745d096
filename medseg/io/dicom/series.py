"""DICOM folders -> inventory, stacks and volumes.

A folder (any tree, any file names, several studies and series, non-image
objects, broken files, bad symbolic links; a DICOMDIR is used, and a DICOMDIR
file may be given instead of its folder) is scanned header-only (``medseg.io.dicom.scan``); each
image series is planned into regular stacks with every geometry decision
recorded (``medseg.io.dicom.geometry``); a rule picks the stack to segment
(``medseg.io.dicom.select``); only then is pixel data decoded
(``medseg.io.dicom.pixels``).

Slices are sorted by their position along the slice normal (not by
InstanceNumber or file name), the slice spacing comes from those positions (not
from SliceThickness), RescaleSlope/Intercept are applied, and the affine is
built from ImageOrientationPatient/ImagePositionPatient. Array axes are
(columns, rows, slices); the affine maps them to RAS+ mm.

Study and series are named by salted hashes of their UIDs (``st...``/``se...``);
patient identifiers are never copied into metadata, logs or tables unless the
caller passes ``with_identifiers=True``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import GeometryError, InputError
from medseg.io.dicom.geometry import Finding, GeometryPolicy, StackPlan, plan_series
from medseg.io.dicom.pixels import build_array
from medseg.io.dicom.scan import (
    IDENTIFYING_TAGS,
    ScanResult,
    SeriesInfo,
    is_dicomdir_file,
    iter_files,
    looks_like_dicom,
    scan_folder,
)
from medseg.io.dicom.select import Candidate, SelectionRule, select
from medseg.io.volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

__all__ = [
    "is_dicom_folder",
    "read_dicom_series",
    "scan_inventory",
    "Inventory",
    "SelectionRule",
    "GeometryPolicy",
    "volume_from_candidate",
]


def is_dicom_folder(path: Path) -> bool:
    """A folder holding at least one file that may be DICOM, or a DICOMDIR file."""
    path = Path(path)
    return is_dicomdir_file(path) or (path.is_dir() and any(looks_like_dicom(f) is None for f in iter_files(path)))


@dataclass
class SeriesEntry:
    series: SeriesInfo
    plans: list[StackPlan] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # series-level findings

    @property
    def segmentable(self) -> bool:
        return self.series.not_image is None and any(p.refused is None for p in self.plans)

    @property
    def reason(self) -> str:
        if self.series.not_image:
            return self.series.not_image
        if not self.plans:
            skipped = [f.detail for f in self.findings if f.action == "skipped"]
            return (
                skipped[0]
                if skipped
                else "no frames with patient geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing)"
            )
        refused = [p.refused for p in self.plans if p.refused]
        if refused and len(refused) == len(self.plans):
            return "refused: " + refused[0]
        if refused:
            return f"{len(refused)} of {len(self.plans)} stacks refused: {refused[0]}"
        return ""


@dataclass
class Inventory:
    scan: ScanResult
    entries: list = field(default_factory=list)

    @property
    def candidates(self) -> list:
        return [Candidate(e.series, p) for e in self.entries if e.series.not_image is None for p in e.plans]

    def tables(self, *, with_identifiers: bool = False):
        """``(series, files)`` DataFrames: one row per series; one row per file not in an image stack."""
        import pandas as pd

        rows = [
            {
                **_series_row(e, with_identifiers),
                "source_folder": source_folder(e.series, self.scan.root, with_identifiers=with_identifiers),
            }
            for e in self.entries
        ]
        files = [{"file": _rel(p, self.scan.root), "reason": r} for p, r in self.scan.skipped]
        columns = [*_series_row(None, with_identifiers), "source_folder"]
        return pd.DataFrame(rows, columns=columns), pd.DataFrame(files, columns=["file", "reason"])


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return str(p)


def source_folder(series, root: Path, *, with_identifiers: bool = False) -> str:
    """The folder holding a series' files, relative to the scanned root (``.`` for the root itself).

    Exports often name folders after the patient: any identifying header value of the series found in the
    path (the name, its parts, the ID, birth date, accession number) is written ``<redacted>`` unless
    ``with_identifiers``.
    """
    files = [Path(f) for f in getattr(series, "files", [])]
    if not files:
        return ""
    try:
        folder = Path(os.path.commonpath([str(f.parent) for f in files]))
    except ValueError:
        return ""
    text = _rel(folder, root) if folder != Path(root) else "."
    if with_identifiers:
        return text
    secrets: set[str] = set()
    for key, value in (getattr(series, "identifiers", None) or {}).items():
        if key in ("StudyInstanceUID", "SeriesInstanceUID") or not value:
            continue
        parts = [str(value)] + [part for part in re.split(r"[\^\s,]+", str(value)) if len(part) >= 2]
        secrets.update(part for part in parts if part.strip())
    for secret in sorted(secrets, key=len, reverse=True):
        text = re.sub(re.escape(secret), "<redacted>", text, flags=re.IGNORECASE)
    return text


def _fmt(values, nd=4) -> str:
    return "" if values is None else " ".join(f"{float(v):.{nd}g}" for v in values)


def _series_row(e: SeriesEntry | None, with_identifiers: bool) -> dict:
    s = e.series if e else None
    plans = e.plans if e else []
    main = max(plans, key=lambda p: p.n_slices) if plans else None
    first = main.slices[0] if main else (s.slices[0] if s and s.slices else None)
    findings = []
    if e:
        seen = set()
        for f in [*e.findings, *(f for p in plans for f in p.findings)]:
            if str(f) not in seen:
                seen.add(str(f))
                findings.append(str(f))
    row = {
        "study_key": s.study_key if s else "",
        "series_key": s.series_key if s else "",
        "modality": s.modality if s else "",
        "series_number": s.meta.get("SeriesNumber", "") if s else "",
        "series_description": s.meta.get("SeriesDescription", "") if s else "",
        "sop_class": s.sop_class if s else "",
        "n_files": len(s.files) if s else 0,
        "n_frames": len(s.slices) if s else 0,
        "rows": first.rows if first else "",
        "columns": first.cols if first else "",
        "orientation": main.orientation if main else "",
        "image_orientation": _fmt(first.iop if first else None),
        "pixel_spacing_mm": _fmt(first.pixel_spacing if first else None),
        "slice_step_mm": round(main.step, 4) if main and main.step else "",
        "slice_thickness_mm": first.thickness if first and first.thickness else "",
        "n_volumes": sum(p.refused is None for p in plans),
        "volume_shapes": "; ".join("x".join(map(str, p.shape)) + (f" [{p.label}]" if p.label else "") for p in plans),
        "transfer_syntax": "; ".join(sorted(s.transfer_syntaxes)) if s else "",
        "segmentable": bool(e.segmentable) if e else False,
        "reason": e.reason if e else "",
        "findings": "; ".join(findings),
    }
    if with_identifiers:
        row.update({k: (s.identifiers.get(k, "") if s else "") for k in IDENTIFYING_TAGS})
    return row


def scan_inventory(
    folder: str | os.PathLike, *, policy: GeometryPolicy | None = None, progress: bool = False, salt: str | None = None
) -> Inventory:
    """Scan ``folder`` (or the files a DICOMDIR file lists) header-only and plan every image series (no pixel data is
    read)."""
    folder = Path(folder)
    if not folder.is_dir() and not is_dicomdir_file(folder):
        raise InputError("not a folder; expected a folder of DICOM files (or a DICOMDIR file)", path=folder)
    scan = scan_folder(folder, progress=progress, salt=salt)
    inv = Inventory(scan)
    for s in sorted(scan.series.values(), key=lambda s: (s.study_key, s.series_key)):
        if s.not_image:
            inv.entries.append(SeriesEntry(s))
            continue
        plans, findings = plan_series(s.slices, policy=policy, spacing_between=s.spacing_between_slices)
        inv.entries.append(SeriesEntry(s, plans, findings))
    return inv


def volume_from_candidate(
    c: Candidate, source: str, *, selection: dict | None = None, with_identifiers: bool = False
) -> Volume:
    """Decode and stack one planned candidate; a refused plan raises ``GeometryError`` with its reason."""
    plan, s = c.plan, c.series
    if plan.refused:
        raise GeometryError(f"series {c.key}: {plan.refused}", path=source)
    array = build_array(plan)
    info = {
        "study_key": s.study_key,
        "series_key": s.series_key,
        "stack": plan.label,
        "key": c.key,
        "modality": s.modality,
        "sop_class": s.sop_class,
        "orientation": plan.orientation,
        "n_files": len(s.files),
        "n_source_frames": len(plan.slices),
        "slice_step_mm": plan.step,
        "transfer_syntaxes": sorted(s.transfer_syntaxes),
        "header": dict(s.meta),
        "findings": [f.to_dict() for f in plan.findings],
    }
    if selection:
        info["selection"] = selection
    if with_identifiers:
        info["identifiers"] = dict(s.identifiers)
    meta = {"format": "dicom", "modality": s.modality, "n_slices": plan.n_slices, "dicom": info}
    return Volume(array, LPS_TO_RAS @ plan.lps, str(source), meta)


def no_images_error(inv: Inventory, folder) -> InputError:
    """The one-line error for a folder without any image stack, naming the first file refused and why."""
    return InputError(
        f"no DICOM image slices with geometry found ({len(inv.scan.skipped)} other files"
        f"{_first_refusal(inv)}); expected a folder holding one CT/MR series (run 'medseg dicom scan' "
        "to list what it holds)",
        path=folder,
    )


def _first_refusal(inv: Inventory) -> str:
    """``; e.g. FILE: REASON`` for the first file that looked like DICOM but was not used (or "")."""
    for path, reason in inv.scan.skipped:
        if not reason.startswith(("not DICOM", "DICOMDIR")) and "not an image to segment" not in reason:
            return f"; e.g. {_rel(path, inv.scan.root)}: {reason}"
    return ""


def read_dicom_series(
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    rule: SelectionRule | None = None,
    policy: GeometryPolicy | None = None,
    progress: bool = False,
) -> Volume:
    """Read the image stack of ``folder`` that ``rule`` picks (default: the largest).

    ``series_uid`` (a SeriesInstanceUID or a ``se...`` key) overrides the rule's series.
    The choice, the other candidates and every geometry finding are in ``volume.meta["dicom"]``.
    """
    folder = Path(folder)
    inv = scan_inventory(folder, policy=policy, progress=progress)
    cands = inv.candidates
    if series_uid is not None:
        rule = SelectionRule(**{**(rule.__dict__ if rule else {}), "series": series_uid})
    if not cands:
        raise no_images_error(inv, folder)
    chosen, record = select(cands, rule, folder=folder)
    n_series = len({c.series.series_key for c in cands})
    if len(cands) > 1:
        log.warning(
            "%s holds %d image stacks; segmenting %s: %s", folder.name, len(cands), chosen.describe(), record["reason"]
        )
    for f in chosen.plan.findings:
        if f.action not in ("accepted",):
            log.info("%s %s: %s", folder.name, chosen.key, f)
    vol = volume_from_candidate(chosen, str(folder), selection=record)
    vol.meta["n_image_series_in_folder"] = n_series
    return vol
