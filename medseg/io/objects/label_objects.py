"""What reading an RTSTRUCT and a SEG share: the ``LabelObject`` both become, and how overlapping structures
are resolved into one label map.

Overlaps: a voxel inside several structures gets **the smallest structure** (fewest voxels in the whole series;
``overlap="smaller"``, the default, so a tumour inside an organ or a cord inside a canal survives), or the
structure listed last in the table (``overlap="table"``). Every overlapping pair is counted in an ``overlap``
finding.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from medseg.errors import ConfigError
from medseg.io.dicom.geometry import Finding
from medseg.io.volume import Volume
from medseg.labels import LabelTable

OVERLAP_RULES = ("smaller", "table")


@dataclass
class LabelObject:
    """A label map read from an RTSTRUCT or SEG, with what it was made from."""

    labels: Volume  # integer label map on ``image``'s grid
    image: Volume  # the referenced series, as medseg reads it
    table: LabelTable
    rois: list = field(default_factory=list)  # one dict per ROI / segment
    unmapped: list = field(default_factory=list)  # ROI names no structure of the table matched
    findings: list = field(default_factory=list)  # series findings, then the object's


def check_overlap_rule(overlap: str) -> None:
    """A ``ConfigError`` unless ``overlap`` is one of ``OVERLAP_RULES``."""
    if overlap not in OVERLAP_RULES:
        raise ConfigError(f"overlap rule {overlap!r}; expected one of {', '.join(OVERLAP_RULES)}")


def table_name(table: LabelTable, index: int) -> str:
    """The name ``table`` gives label ``index`` (``label <index>`` when it names none)."""
    return next((lab.name for lab in table.labels if lab.index == index), f"label {index}")


def combine_structures(slices: dict, shape: tuple, table: LabelTable, rule: str) -> tuple[np.ndarray, dict]:
    """One label map from per-structure slice masks (``{label: {k: [mask, ...]}}``), overlaps resolved by ``rule``.

    Returns the array and ``{(winner, loser): voxels}``.
    """
    dtype = np.uint8 if table.num_classes <= 256 else np.uint16
    out = np.zeros(shape, dtype=dtype)
    sizes = {idx: sum(int(np.logical_or.reduce(ms).sum()) for ms in ks.values()) for idx, ks in slices.items()}
    if rule == "smaller":  # paint the largest first, so smaller structures overwrite
        order = sorted(slices, key=lambda i: (-sizes[i], i))
    else:
        order = sorted(slices)
    rank = {idx: n for n, idx in enumerate(order)}
    overlaps: dict[tuple, int] = defaultdict(int)
    for idx in order:
        for k, ms in slices[idx].items():
            m = np.logical_or.reduce(ms)
            prev = out[:, :, k][m]
            for other in np.unique(prev[prev > 0]):
                win, lose = (idx, int(other)) if rank[idx] > rank[int(other)] else (int(other), idx)
                overlaps[(win, lose)] += int(np.count_nonzero(prev == other))
            out[:, :, k][m] = idx
    return out, overlaps


def overlap_findings(overlaps: dict, table: LabelTable, rule: str) -> list[Finding]:
    """One ``overlap`` finding per pair of structures ``combine_structures`` found overlapping."""
    out = []
    for (win, lose), n in sorted(overlaps.items()):
        how = "smaller structure wins" if rule == "smaller" else "later table entry wins"
        out.append(
            Finding(
                "overlap",
                "resolved",
                f"{n} voxels in both {table_name(table, win)!r} and "
                f"{table_name(table, lose)!r}: given to {table_name(table, win)!r} ({how})",
            )
        )
    return out


def label_object(
    path, fmt: str, key: str, array, image: Volume, table: LabelTable, rois, unmapped, findings: list, *, unit: str
) -> LabelObject:
    """The label map on ``image``'s grid with the series' findings followed by the object's (RTSTRUCT and SEG alike)."""
    if unmapped:
        findings.append(
            Finding(
                f"unmapped_{unit.lower()}",
                "skipped",
                f"{len(unmapped)} {unit}(s) match no structure of table "
                f"{table.name!r}: {', '.join(map(repr, unmapped))}",
            )
        )
    all_findings = list(image.meta.get("dicom", {}).get("findings", [])) + [f.to_dict() for f in findings]
    meta = {"format": fmt, "label_object": key, "label_table": table.to_dict(), "findings": all_findings}
    labels = Volume(array, image.affine.copy(), str(path), meta)
    return LabelObject(labels, image, table, rois, unmapped, all_findings)
