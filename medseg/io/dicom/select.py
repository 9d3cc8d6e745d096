"""Pick which image stack of a DICOM folder to segment, and say why.

Every image stack (a series, or one part of a split series) is a candidate. A
``SelectionRule`` filters by modality, minimum slice count, a series
description pattern or an explicit series key, then takes the largest (most
slices, then most voxels). The choice and the reason go to the log and into
the volume's metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medseg.errors import InputError
from medseg.io.dicom.geometry import StackPlan
from medseg.io.dicom.scan import SeriesInfo


@dataclass
class Candidate:
    series: SeriesInfo
    plan: StackPlan

    @property
    def key(self) -> str:
        return self.series.series_key + (f"-{self.plan.label}" if self.plan.label else "")

    def describe(self) -> str:
        desc = self.series.meta.get("SeriesDescription", "")
        return (
            f"{self.key} ({self.series.modality or '?'}, {self.plan.orientation}, {self.plan.n_slices} slices"
            + (f", '{desc}'" if desc else "")
            + ")"
        )


@dataclass
class SelectionRule:
    modalities: tuple = ()  # e.g. ("CT",); empty: any
    min_slices: int = 1
    description: str | None = None  # regular expression, case-insensitive, searched in SeriesDescription
    series: str | None = None  # a series key (``se...``, optionally ``-part``) or a SeriesInstanceUID

    def describe(self) -> str:
        parts = []
        if self.series:
            parts.append("series given")
        if self.modalities:
            parts.append("modality " + "/".join(self.modalities))
        if self.min_slices > 1:
            parts.append(f">= {self.min_slices} slices")
        if self.description:
            parts.append(f"description ~ /{self.description}/")
        return ", ".join(parts) or "any image stack"

    def matches(self, c: Candidate) -> bool:
        if self.series and self.series not in (c.key, c.series.series_key, c.series.series_uid):
            return False
        if self.modalities and c.series.modality.upper() not in {m.upper() for m in self.modalities}:
            return False
        if c.plan.n_slices < self.min_slices:
            return False
        if self.description and not re.search(self.description, str(c.series.meta.get("SeriesDescription", "")), re.I):
            return False
        return True


def select(candidates: list, rule: SelectionRule | None, *, folder) -> tuple[Candidate, dict]:
    """The chosen candidate and a record of the choice (no identifiers)."""
    rule = rule or SelectionRule()
    if not candidates:
        raise InputError(
            "no DICOM image series with patient geometry found; expected a folder holding a CT/MR series "
            "(run 'medseg dicom scan' on it to see what it holds)",
            path=folder,
        )
    matching = [c for c in candidates if rule.matches(c)]
    if not matching:
        listed = "; ".join(c.describe() for c in candidates[:6])
        raise InputError(
            f"no image series matches the selection rule ({rule.describe()}); found: {listed}", path=folder
        )
    chosen = max(matching, key=lambda c: (c.plan.n_slices, c.plan.shape[0] * c.plan.shape[1], c.plan.refused is None))
    record = {
        "rule": rule.describe(),
        "chosen": chosen.key,
        "reason": (
            "the only image stack"
            if len(candidates) == 1
            else f"largest of {len(matching)} matching stack(s) among {len(candidates)}"
        ),
        "candidates": [c.describe() for c in candidates],
    }
    return chosen, record
