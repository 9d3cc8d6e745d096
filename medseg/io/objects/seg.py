"""DICOM Segmentation (SEG) objects: label maps -> SEG (``write_dicom_seg``) and SEG -> label maps (``read_dicom_seg``).

Writing
=======
DICOM SEG output for predictions made on a DICOM series (highdicom).

The SEG references the source series: one frame per source slice, placed by
the source slices' own geometry (so masks cannot come out flipped), one
segment per structure of the label table, with the SNOMED CT code from the
table when it has one. Written atomically at the path given (``medseg predict``
names it ``<case_id>.seg.dcm``, ``medseg run`` ``seg.dcm``).

A SEG is a clinical object meant to sit beside its series in a PACS, so it
carries the series' patient and study modules (copied by highdicom from the
source headers); nothing of them is written anywhere else.

Reading
=======
DICOM SEG -> label map on the referenced image series' grid (highdicom).

``read_dicom_seg(path, images)`` reads a Segmentation object (BINARY or
FRACTIONAL; LABELMAP where highdicom supports it) and the series it references
(by SeriesInstanceUID and source SOPInstanceUIDs, ``medseg.io.objects.referenced``),
and returns a ``LabelObject`` like ``medseg.io.objects.rtstruct.read_rtstruct``:

* Frames are taken per source instance (``get_pixels_by_source_instance``);
  source slices the SEG has no frame for are empty. Each source instance's
  slice index on medseg's grid comes from its position, so flipped and
  reverse-ordered series need nothing special.
* FRACTIONAL segments are rescaled to [0, 1] and a voxel belongs to the
  segment when its value is >= ``fraction_threshold`` (default 0.5).
* Segments map to structures of ``table`` by segment label (names as in
  ``medseg.io.objects.roi_names``: case, spaces, side words, synonyms) or, failing
  that, by the coded concept: the SegmentedPropertyTypeCodeSequence code
  value against the table's SNOMED codes. Without a table one is made from the
  segment labels (with their SNOMED codes). Unmapped segments are listed.
* Overlapping segments are resolved as for RTSTRUCT (smaller structure wins,
  or ``overlap="table"``; ``medseg.io.objects.label_objects``) and counted in
  findings.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.geometry import Finding
from medseg.io.dicom.scan import pseudonym
from medseg.io.limits import limit_from_env, max_voxels
from medseg.io.objects.label_objects import (
    LabelObject,
    check_overlap_rule,
    combine_structures,
    label_object,
    overlap_findings,
)
from medseg.io.objects.referenced import referenced_volume
from medseg.io.objects.roi_names import NameMatcher, table_from_names, usable_name
from medseg.io.volume import LPS_TO_RAS, Volume
from medseg.labels import LabelTable, display_colors

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Segments one SEG may declare unless ``MEDSEG_MAX_SEGMENTS`` says otherwise (TotalSegmentator's SEGs hold
#: 117): checked from the header, before highdicom indexes the object (its index of 10,000 segments took 40 s
#: and reading them 4 minutes).
MAX_SEGMENTS = 1000
#: Type 2 attributes of the source slices a SEG copies: written empty where an export left them out.
_TYPE2_SOURCE_ATTRIBUTES = (
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
)
#: SNOMED CT "Anatomical structure": the category of every organ segment.
_ANATOMY_CATEGORY = ("123037004", "SCT", "Anatomical Structure")


def max_segments() -> int:
    """The segment limit in force: ``MEDSEG_MAX_SEGMENTS`` (a positive integer) or ``MAX_SEGMENTS``."""
    return limit_from_env("MEDSEG_MAX_SEGMENTS", MAX_SEGMENTS, "segments")


# -- writing ----------------------------------------------------------------------------------------------------


def write_dicom_seg(
    labels: Volume,
    dicom_folder: str | os.PathLike,
    table: LabelTable,
    path: str | os.PathLike,
    *,
    software_version: str,
    uid_seed: str | None = None,
    series_key: str | None = None,
) -> Path:
    """Write ``labels`` (on the DICOM series' grid) as a DICOM SEG referencing that series.

    ``uid_seed`` (e.g. a hash of the model and settings): the SEG's SeriesInstanceUID and SOPInstanceUID are
    derived from it and the source SeriesInstanceUID, so writing the same case again gives the same object
    (a PACS receiving it twice stores one instance); without it they are new each time.
    ``series_key``: the source series' ``se...`` key when ``dicom_folder`` holds several series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    folder = Path(dicom_folder)
    matched = _source_slices(folder, labels, series_key)
    frames = np.stack([labels.array[idx] for _, idx in matched]).astype(np.uint16)
    if frames.max() > table.num_classes - 1:
        raise GeometryError(
            f"label map holds value {int(frames.max())} outside label table {table.name!r}", path=labels.source or None
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", version=software_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    colors = display_colors(table)
    for n, lab in enumerate(table.labels, start=1):
        prop = (
            hd.sr.CodedConcept(lab.snomed, "SCT", lab.name)
            if lab.snomed
            else hd.sr.CodedConcept("85756007", "SCT", "Tissue")
        )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=lab.name,
                segmented_property_category=hd.sr.CodedConcept(*_ANATOMY_CATEGORY),
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*colors[lab.index]),
            )
        )
    # Segment numbers are 1..n in table order; remap label indices onto them.
    remap = np.zeros(table.num_classes, dtype=np.uint16)
    for n, lab in enumerate(table.labels, start=1):
        remap[lab.index] = n
    seg = hd.seg.Segmentation(
        source_images=[ds for ds, _ in matched],
        pixel_array=remap[frames],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid(uid_seed, matched, "series"),
        series_number=900,
        sop_instance_uid=_uid(uid_seed, matched, "instance"),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg",
        software_versions=software_version,
        device_serial_number="0",
        series_description="medseg segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def _source_slices(folder: Path, labels: Volume, series_key: str | None = None):
    """Header-only datasets of the series the label map was made on, each with its slice's voxel indices.

    ``series_key`` (``se...``, the reader's pseudonym of the SeriesInstanceUID): only that series' slices, so a
    folder holding several series on the same grid (an export of several patients) cannot mix them.
    """
    import pydicom

    inv = np.linalg.inv(labels.affine)
    matched = []
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            f = Path(root) / name
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                continue
            if not all(
                hasattr(ds, t)
                for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
            ):
                continue
            if series_key and pseudonym(str(ds.get("SeriesInstanceUID", "")), prefix="se") != series_key:
                continue
            index = _pixel_indices(ds, inv, labels.shape)
            if index is not None:
                for keyword in _TYPE2_SOURCE_ATTRIBUTES:  # exports often omit these; a SEG needs them present
                    if keyword not in ds:
                        setattr(ds, keyword, "")
                matched.append((ds, index))
    if not matched:
        raise InputError("no slice of this DICOM folder lies on the label map's grid; cannot build a SEG", path=folder)
    return matched


def _pixel_indices(ds, inv_affine: np.ndarray, shape) -> tuple | None:
    """Integer voxel indices (rows x cols each) of every pixel of slice ``ds``, or None if off-grid."""
    iop = np.array(ds.ImageOrientationPatient, dtype=np.float64)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    rows, cols = int(ds.Rows), int(ds.Columns)
    origin = LPS_TO_RAS[:3, :3] @ np.array(ds.ImagePositionPatient, dtype=np.float64)
    step_c = LPS_TO_RAS[:3, :3] @ (iop[:3] * dc)
    step_r = LPS_TO_RAS[:3, :3] @ (iop[3:] * dr)
    base = inv_affine[:3, :3] @ origin + inv_affine[:3, 3]
    u, v = inv_affine[:3, :3] @ step_c, inv_affine[:3, :3] @ step_r  # index change per column / per row
    corners = [base, base + u * (cols - 1), base + v * (rows - 1)]
    if any(np.abs(c - np.round(c)).max() > 1e-2 for c in corners + [u, v]):
        return None
    for c in corners + [base + u * (cols - 1) + v * (rows - 1)]:
        if np.any(np.round(c) < 0) or np.any(np.round(c) >= np.array(shape)):
            return None
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return tuple(np.round(base[a] + u[a] * c + v[a] * r).astype(np.intp) for a in range(3))


def _uid(seed: str | None, matched, what: str) -> str:
    """A new UID, or (``seed``) one derived from the seed and the source series: stable across reruns."""
    import highdicom as hd

    if not seed:
        return hd.UID()
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[seed, str(matched[0][0].get("SeriesInstanceUID", "")), f"medseg SEG {what}"])


# -- reading ----------------------------------------------------------------------------------------------------


def _check_bounds(ds) -> None:
    """What the header declares against what the object can hold, before anything is indexed or decoded:
    the number of segments (at most ``max_segments()``, and for BINARY/FRACTIONAL at most one per frame, as
    each frame belongs to one segment), the frames' voxels (``max_voxels()``) and a FRACTIONAL SEG's
    MaximumFractionalValue (1..255 for its 8-bit frames; 0 would divide every value by zero)."""

    path = getattr(ds, "filename", None)
    stype = str(ds.get("SegmentationType", ""))
    n = len(ds.get("SegmentSequence") or [])
    limit = max_segments()
    if n > limit:
        raise InputError(
            f"the SEG declares {n:,} segments, more than the limit of {limit:,} (MEDSEG_MAX_SEGMENTS); "
            "if it is real, set MEDSEG_MAX_SEGMENTS higher",
            path=path,
        )
    try:
        frames = int(ds.get("NumberOfFrames", 0) or 0)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        raise InputError("the SEG's NumberOfFrames, Rows or Columns is not a whole number", path=path) from None
    if stype in ("BINARY", "FRACTIONAL") and n > max(frames, 1):
        raise InputError(
            f"the SEG declares {n:,} segments but holds {frames:,} frames (each frame belongs to one "
            "segment): expected at most one segment per frame",
            path=path,
        )
    if frames * rows * cols > max_voxels():
        raise InputError(
            f"the SEG's {frames:,} frames of {rows} x {cols} exceed the limit of {max_voxels():,} "
            "voxels (MEDSEG_MAX_VOXELS)",
            path=path,
        )
    if stype == "FRACTIONAL":
        mfv = ds.get("MaximumFractionalValue")
        bits = int(ds.get("BitsAllocated", 8) or 8)
        top = (1 << bits) - 1 if bits in (8, 16) else 255
        if not isinstance(mfv, int) or not 1 <= mfv <= top:
            raise InputError(
                f"FRACTIONAL SEG with MaximumFractionalValue {mfv!r}: expected a whole number in 1..{top} "
                "(the value that means fraction 1.0); the object cannot be rescaled",
                path=path,
            )


def seg_header(path_or_ds) -> dict:
    """What a SEG references and holds: series UID, source SOP UIDs, segments (number, label, code)."""
    import pydicom

    ds = (
        path_or_ds
        if isinstance(path_or_ds, pydicom.Dataset)
        else pydicom.dcmread(path_or_ds, stop_before_pixels=True, force=True)
    )
    if str(ds.get("Modality", "")) != "SEG" and str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputError("not a DICOM Segmentation (Modality SEG)", path=getattr(ds, "filename", None))
    _check_bounds(ds)
    series = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s]
    sops = {
        str(i.ReferencedSOPInstanceUID)
        for s in ds.get("ReferencedSeriesSequence", [])
        for i in s.get("ReferencedInstanceSequence", [])
        if "ReferencedSOPInstanceUID" in i
    }
    segments = []
    for item in ds.get("SegmentSequence", []):
        code = item.get("SegmentedPropertyTypeCodeSequence")
        code = code[0] if code else None
        raw = str(item.get("SegmentLabel", f"segment {item.SegmentNumber}"))
        name = usable_name(raw, int(item.SegmentNumber), "segment")
        segments.append(
            {
                "number": int(item.SegmentNumber),
                "name": name,
                **({"renamed_from": raw} if name != raw else {}),
                "code": str(code.CodeValue) if code is not None and "CodeValue" in code else None,
                "scheme": str(code.CodingSchemeDesignator)
                if code is not None and "CodingSchemeDesignator" in code
                else None,
            }
        )
    return {
        "series_uid": series[0] if series else None,
        "sop_uids": sops,
        "segments": segments,
        "type": str(ds.get("SegmentationType", "")),
        "key": pseudonym(str(ds.get("SOPInstanceUID", "")), prefix="sg"),
    }


def read_dicom_seg(
    path: str | os.PathLike,
    images,
    *,
    table: LabelTable | None = None,
    synonyms: dict | None = None,
    fraction_threshold: float = 0.5,
    overlap: str = "smaller",
    inventory=None,
) -> LabelObject:
    """Read the SEG at ``path`` onto the series it references, found in ``images`` (folder or files)."""
    import highdicom as hd

    check_overlap_rule(overlap)
    head = seg_header(Path(path))
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom refuses malformed objects with many exception types
        raise InputError(f"cannot read the DICOM SEG ({type(exc).__name__}: {str(exc)[:200]})", path=path) from None
    sop_uids = head["sop_uids"] | {str(u[2]) for u in seg.get_source_image_uids()}
    ref = referenced_volume(
        images, series_uid=head["series_uid"], sop_uids=sop_uids, what=f"SEG {head['key']}", inventory=inventory
    )
    image = ref.volume
    segs = head["segments"]
    if table is None:
        table = _segments_table(segs, synonyms)
    matcher = NameMatcher(table, synonyms)
    by_code = {str(lab.snomed): lab for lab in table.labels if lab.snomed}
    findings = _renamed_findings(segs)
    sources = [uid for uid in ref.sop_slice if uid in sop_uids]
    if not sources:
        raise InputError(
            "the SEG's frames reference no instance of its series (no source image references); "
            "expected a SEG made on this series",
            path=path,
        )
    slices: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    rois, unmapped = [], []
    fractional = head["type"] == "FRACTIONAL"
    for s in segs:
        lab = matcher.match(s["name"]) or (by_code.get(s["code"]) if s["code"] else None)
        how = "label" if matcher.match(s["name"]) else ("code" if lab else "")
        rec = {
            "number": s["number"],
            "name": s["name"],
            "code": s["code"],
            "structure": lab.name if lab else "",
            "label": lab.index if lab else None,
            "matched_by": how,
            "voxels": 0,
            "status": "mapped" if lab else "unmapped",
        }
        rois.append(rec)
        if lab is None:
            unmapped.append(s["name"])
            continue
        masks = _segment_masks(seg, sources, s, fractional, fraction_threshold, path)
        for uid, frame in zip(sources, masks, strict=False):
            if frame.any():
                slices[lab.index][ref.sop_slice[uid]].append(frame.T)
                rec["voxels"] += int(frame.sum())
    findings += _duplicate_findings(rois)
    array, overlaps = combine_structures(slices, image.shape, table, overlap)
    findings += overlap_findings(overlaps, table, overlap)
    return label_object(path, "dicom-seg", head["key"], array, image, table, rois, unmapped, findings, unit="segment")


def _segments_table(segs: list, synonyms: dict | None) -> LabelTable:
    """The label table made from the segments' names (and their SNOMED codes) when none is given."""
    return table_from_names(
        [s["name"] for s in segs],
        name="seg",
        codes={s["name"]: s["code"] for s in segs if s["code"] and s["scheme"] in ("SCT", "SRT")},
        synonyms=synonyms,
    )


def _renamed_findings(segs: list) -> list[Finding]:
    """A finding for each segment whose label had no letter or digit and was read under another name."""
    return [
        Finding(
            "unnamed_segment",
            "renamed",
            f"segment {s['number']}'s label {s['renamed_from']!r} has no letter or digit: read as {s['name']!r}",
        )
        for s in segs
        if "renamed_from" in s
    ]


def _segment_masks(seg, sources: list, segment: dict, fractional: bool, threshold: float, path) -> np.ndarray:
    """Segment ``segment``'s masks, a frame per source instance in ``sources`` (a fractional SEG's at ``threshold``)."""
    try:
        px = seg.get_pixels_by_source_instance(
            sources, segment_numbers=[segment["number"]], assert_missing_frames_are_empty=True, rescale_fractional=True
        )
    except Exception as exc:  # highdicom's checks of the frames (values over the maximum, missing frames ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"segment {segment['number']} ({segment['name']!r}) cannot be read ({type(exc).__name__}: {first})",
            path=path,
        ) from None
    px = px[..., 0] if px.ndim == 4 else px
    return px >= threshold if fractional else px > 0


def _duplicate_findings(rois: list) -> list[Finding]:
    """A finding for each structure that more than one segment maps to (their masks are united)."""
    dup = defaultdict(list)
    for r in rois:
        if r["label"] is not None:
            dup[r["label"]].append(r["name"])
    return [
        Finding(
            "duplicate_structure",
            "accepted",
            f"{len(names)} segments ({', '.join(map(repr, names))}) name one structure: united",
        )
        for names in dup.values()
        if len(names) > 1
    ]
