"""The image series a label object (RTSTRUCT, SEG) refers to, found by UIDs, read by medseg's DICOM reader.

A structure set or SEG names its series by SeriesInstanceUID and its slices
by SOPInstanceUID; the folder it sits in proves nothing (exports put several
series side by side). Only an object that names neither is matched by its
FrameOfReferenceUID, and then only when exactly one stack shares it. ``referenced_volume`` scans the given folder (or
list of files) header-only, picks the stack whose series UID matches (or, when the
object names no series, the stack holding most of its referenced instances),
and reads it with ``medseg.io.dicom.series`` so the label map lands on exactly the
grid medseg segments and reports on. ``slice_of_sop`` then maps each source
instance to its slice index on that grid (by geometry, so reverse-ordered,
flipped and oblique series need nothing special).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.dicom.scan import pseudonym
from medseg.io.dicom.select import Candidate
from medseg.io.dicom.series import scan_inventory, volume_from_candidate
from medseg.io.volume import LPS_TO_RAS, Volume


@dataclass
class Referenced:
    volume: Volume
    candidate: Candidate
    frame_of_reference: str
    sop_slice: dict = field(default_factory=dict)  # SOPInstanceUID -> slice index k on the volume's grid


def _scan_root(images) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A folder to scan for ``images`` (a folder, or a list of files linked into a temporary folder)."""
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if not p.is_dir():
            raise InputError("expected the folder holding the referenced image series", path=p)
        return p, None
    tmp = tempfile.TemporaryDirectory(prefix="medseg-ref-")
    for n, f in enumerate(images):
        os.symlink(Path(f).resolve(), Path(tmp.name) / f"{n:06d}")
    return Path(tmp.name), tmp


def referenced_volume(
    images, *, series_uid: str | None, sop_uids: set, what: str = "object", inventory=None, frame_of_reference=()
) -> Referenced:
    """Read the stack of ``images`` that ``series_uid``/``sop_uids`` reference (``InputError`` if none).

    When the object names neither (``frame_of_reference`` given), the one stack on that frame of reference is used.
    """
    if not isinstance(images, (str, os.PathLike)):
        images = [Path(f) for f in images]
        if not images:
            raise InputError(f"no image files given for the {what}")
    root, tmp = _scan_root(images)
    try:
        inv = inventory if inventory is not None else scan_inventory(root)
        cands = [c for c in inv.candidates if c.plan.refused is None]
        by_series = [c for c in cands if series_uid and c.series.series_uid == series_uid]
        pool = by_series or cands

        def hits(c) -> int:
            return len(sop_uids & {s.sop_uid for s in c.plan.slices})

        scored = sorted(pool, key=hits, reverse=True)
        if not series_uid and not sop_uids and frame_of_reference:
            # nothing names a series or an instance (some exports): the one stack on the frame of reference
            same = [c for c in cands if _frame_of_reference(c.plan.slices[0].path) in frame_of_reference]
            if not same:
                raise InputError(
                    f"the {what} names no series or instance, and no stack of the {len(cands)} found shares "
                    "its frame of reference; expected the folder to hold the series it was drawn on",
                    path=root,
                )
            if len(same) > 1:
                raise InputError(
                    f"the {what} names no series or instance, and {len(same)} stacks share its frame of "
                    f"reference ({', '.join(c.key for c in same)}); expected one",
                    path=root,
                )
            scored = same
            by_series = same
        if not scored or (not by_series and hits(scored[0]) == 0):
            key = pseudonym(series_uid, prefix="se") if series_uid else "(none named)"
            refused = [c for c in inv.candidates if series_uid and c.series.series_uid == series_uid and c.plan.refused]
            why = f": its stack was refused ({refused[0].plan.refused})" if refused else " is not among them"
            raise InputError(
                f"the {what} references image series {key} ({len(sop_uids)} instances), which{why}; "
                f"expected the folder to hold that series ({len(cands)} usable stacks found)",
                path=root,
            )
        chosen = scored[0]
        vol = volume_from_candidate(
            chosen, str(images if tmp is None else images[0].parent), selection={"reason": f"referenced by the {what}"}
        )
        fr = _frame_of_reference(chosen.plan.slices[0].path)
        ref = Referenced(vol, chosen, fr)
        inv_aff = np.linalg.inv(vol.affine)
        for s in chosen.plan.slices:
            ijk = inv_aff[:3, :3] @ (LPS_TO_RAS[:3, :3] @ np.asarray(s.ipp, dtype=np.float64)) + inv_aff[:3, 3]
            k = int(np.round(ijk[2]))
            if abs(ijk[2] - k) < 0.25 and np.abs(ijk[:2]).max() < 0.25 and 0 <= k < vol.shape[2]:
                ref.sop_slice[s.sop_uid] = k
        return ref
    finally:
        if tmp is not None:
            tmp.cleanup()


def _frame_of_reference(path: Path) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
    return str(ds.get("FrameOfReferenceUID", ""))
