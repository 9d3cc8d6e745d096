"""RT Structure Sets: label maps -> RTSTRUCT (``write_rtstruct``) and RTSTRUCT -> label maps (``read_rtstruct``).

Writing
=======
Label maps -> RT Structure Sets that reference their source series.

``write_rtstruct(labels, dicom_folder, table, path)`` writes one ROI per
structure of ``table`` present in ``labels`` (name, display colour and SNOMED
code from the table) with, per slice, the contours of that structure's voxels
in patient coordinates (LPS mm). ``labels`` must lie on the grid medseg reads
from one stack of ``dicom_folder``; each contour references its slice's
SOPInstanceUID. highdicom (0.28) has no RT Structure Set writer, so the object
is built with pydicom; it is written Implicit VR Little Endian (the default
transfer syntax every planning system reads; its 4-byte lengths also hold the
long ContourData of large structures, which Explicit VR's 2-byte DS length
could not).

Contours
--------
Marching squares on each slice's 0/1 mask (``medseg.io.objects.contours``) at level
``CONTOUR_LEVEL`` = 0.55: each contour runs between an edge voxel's centre and
its outside neighbour's, 0.45 voxel from the inside centre (0.05 voxel inside
the half-way line). Readers that test voxel centres (medseg, most planning
systems) get exactly the voxels back with 0.5 or 0.55; readers that round
contour points to the nearest voxel and paint the outline inclusively
(rt-utils / OpenCV ``fillPoly``) land on the edge voxels themselves with 0.55,
whereas at 0.5 rounding half-way points sends half the outline outside
(measured on the phantoms: Dice 0.977-0.989 and +2 to +5 % volume with rt-utils
at 0.5; 1.000 at 0.55). Holes are separate contours (filled by the even-odd
rule); collinear points are dropped. Contours enclosing less than
``min_fragment_voxels`` (default 1) voxel faces (lone voxels, one-voxel holes)
are dropped and counted in a ``small_fragment`` finding.

Why contour volumes differ from voxel volumes
---------------------------------------------
Filling these contours back by the voxel-centre rule (``medseg.io.objects.rtstruct``)
gives back exactly the voxels written, except dropped fragments. A planning
system that computes a structure's volume from its contours (area x slice
spacing) gets a slightly *smaller* number than the voxel count: the contour
cuts each staircase corner of the voxel boundary (about 1/8 voxel face per
corner) and runs 0.05 voxel inside the half-way line (0.05 x perimeter). On the
phantom organs at 0.7-1 mm in-plane this is 0.05-0.1 % (measured in
``tests/unit/test_rtstruct.py``, bound 2 %); it grows for small structures
(it scales with perimeter / area). Systems that extend the end slices by half
a spacing, or interpolate between slices, differ again by about half a slice
of area at each end.

Reading
=======
RT Structure Sets -> label maps on the referenced image series' grid.

``read_rtstruct(path, images)`` reads an RTSTRUCT and the series it references
(found by SeriesInstanceUID and the SOPInstanceUIDs of its contour images, not
by folder; ``medseg.io.objects.referenced``), then rasterises every ROI onto that
series' exact grid, as medseg's own DICOM reader builds it:

* Contour points (LPS mm) are mapped to voxel indices with the inverse of the
  volume's affine, so flipped, reverse-ordered and oblique series need nothing
  special.
* A contour belongs to the slice nearest to its plane; it must lie within
  ``slice_tolerance`` (default 0.5) slice spacings of it, else it is skipped
  with a finding. Contours more than 0.1 spacing off a slice are kept and
  counted (``contour_between_slices``), as are contours whose
  ContourImageSequence names another slice than their position
  (``contour_image_mismatch``: the position wins). Contours whose points are
  not on one slice plane are skipped (``non_planar_contour``).
* Closed planar contours are filled in the slice plane by the even-odd rule
  over all contours of a ROI on a slice (holes and islands), voxel centre
  inside or on the contour (``medseg.io.objects.contours``). POINT and OPEN contours
  are skipped with a finding; so are ROIs on another frame of reference.
* ROI names are matched to the label table through ``medseg.io.objects.roi_names``
  (case, spaces, side words, synonyms file). Without a table, one is made from
  the ROI names. Unmapped ROIs are listed in ``result.unmapped`` and a finding.
  Several ROIs naming one structure are united (``duplicate_structure``).
* Overlaps: a voxel inside several structures gets **the smallest structure**
  (fewest voxels in the whole series; ``overlap="smaller"``, the default, so a
  tumour inside an organ or a cord inside a canal survives), or the structure
  listed last in the table (``overlap="table"``). Every overlapping pair is
  counted in an ``overlap`` finding.

Why a structure's contour volume differs from its voxel volume: see
``medseg.io.objects.rtstruct``.

Findings are ``{"kind", "action", "detail"}`` dicts, the format of the image
series' geometry findings, and ``result.findings`` holds both (series first).
"""


from __future__ import annotations

import datetime as _dt
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.io.dicom.geometry import Finding
from medseg.io.dicom.scan import pseudonym
from medseg.io.objects.contours import fill_polygons, mask_contours, polygon_area
from medseg.io.volume import LPS_TO_RAS, Volume, label_boxes
from medseg.labels import LabelTable, display_colors

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: Default: a contour may lie up to half a slice spacing from the slice it is assigned to.
SLICE_TOLERANCE = 0.5
#: Contours further than this (in slice spacings) from their slice are counted in a finding.
SLICE_WARN = 0.1
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


def _roi_color(item) -> tuple | None:
    c = item.get("ROIDisplayColor")
    try:
        return tuple(int(float(v)) for v in c) if c is not None and len(c) == 3 else None
    except (TypeError, ValueError):
        return None


def rtstruct_header(path_or_ds) -> dict:
    """What an RTSTRUCT references and holds, without any image: series UID, SOP UIDs, ROIs."""
    import pydicom

    ds = path_or_ds if isinstance(path_or_ds, pydicom.Dataset) else pydicom.dcmread(path_or_ds, force=True)
    if str(ds.get("Modality", "")) != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise InputError("not an RT Structure Set (Modality RTSTRUCT)", path=getattr(ds, "filename", None))
    series_uids, sops, for_uids = [], set(), set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for_uids.add(str(fr.get("FrameOfReferenceUID", "")))
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                series_uids.append(str(se.get("SeriesInstanceUID", "")))
                sops.update(str(ci.ReferencedSOPInstanceUID) for ci in se.get("ContourImageSequence", [])
                            if "ReferencedSOPInstanceUID" in ci)
    from medseg.io.objects.roi_names import usable_name

    rois = {}
    for item in ds.get("StructureSetROISequence", []):
        raw = str(item.get("ROIName", ""))
        rois[int(item.ROINumber)] = {"number": int(item.ROINumber), "name": usable_name(raw, int(item.ROINumber)),
                                     "frame_of_reference": str(item.get("ReferencedFrameOfReferenceUID", "")),
                                     "color": None, "types": defaultdict(int), "interpreted_type": ""}
        if rois[int(item.ROINumber)]["name"] != raw:
            rois[int(item.ROINumber)]["renamed_from"] = raw
    for obs in ds.get("RTROIObservationsSequence", []):
        n = int(obs.get("ReferencedROINumber", -1))
        if n in rois:
            rois[n]["interpreted_type"] = str(obs.get("RTROIInterpretedType", ""))
    for item in ds.get("ROIContourSequence", []):
        n = int(item.get("ReferencedROINumber", -1))
        roi = rois.setdefault(n, {"number": n, "name": f"ROI {n}", "frame_of_reference": "", "color": None,
                                  "types": defaultdict(int), "interpreted_type": ""})
        roi["color"] = _roi_color(item)
        for c in item.get("ContourSequence", []):
            roi["types"][str(c.get("ContourGeometricType", ""))] += 1
            sops.update(str(ci.ReferencedSOPInstanceUID) for ci in c.get("ContourImageSequence", [])
                        if "ReferencedSOPInstanceUID" in ci)
    for r in rois.values():
        r["types"] = dict(r["types"])
    return {"series_uid": series_uids[0] if series_uids else None, "series_uids": series_uids, "sop_uids": sops,
            "frame_of_reference": sorted(for_uids), "rois": list(rois.values()), "dataset": ds,
            "key": pseudonym(str(ds.get("SOPInstanceUID", "")), prefix="rs")}


def closed_rois(header: dict) -> list[dict]:
    """ROIs with at least one CLOSED_PLANAR contour (the ones that can become label map structures)."""
    return [r for r in header["rois"] if r["types"].get("CLOSED_PLANAR", 0) > 0]


def read_rtstruct(path: str | os.PathLike, images, *, table: LabelTable | None = None, synonyms: dict | None = None,
                  slice_tolerance: float = SLICE_TOLERANCE, overlap: str = "smaller", inventory=None) -> LabelObject:
    """Rasterise the RTSTRUCT at ``path`` onto the series it references, found in ``images`` (folder or files).

    ``table``: the structures to fill (matched by name, synonyms applied); default: one made from the ROI names.
    ``inventory``: an already scanned ``medseg.io.dicom.series.Inventory`` of ``images`` (saves a scan).
    """
    from medseg.io.objects.referenced import referenced_volume
    from medseg.io.objects.roi_names import NameMatcher, table_from_names

    if overlap not in OVERLAP_RULES:
        raise ConfigError(f"overlap rule {overlap!r}; expected one of {', '.join(OVERLAP_RULES)}")
    if not 0 < slice_tolerance <= 0.5:
        raise ConfigError(f"slice_tolerance {slice_tolerance}: expected a fraction of the slice spacing in (0, 0.5]")
    head = rtstruct_header(Path(path))
    ds = head["dataset"]
    ref = referenced_volume(images, series_uid=head["series_uid"], sop_uids=head["sop_uids"],
                            what=f"RTSTRUCT {head['key']}", inventory=inventory,
                            frame_of_reference=tuple(head["frame_of_reference"]))
    image = ref.volume
    findings: list[Finding] = [Finding("unnamed_roi", "renamed", f"ROI {r['number']}'s name {r['renamed_from']!r} has no letter "
                                       f"or digit: read as {r['name']!r}") for r in head["rois"] if "renamed_from" in r]
    if table is None:
        closed = closed_rois(head)
        table = table_from_names([r["name"] for r in closed], name="rtstruct",
                                 colors={r["name"]: r["color"] for r in closed if r["color"]}, synonyms=synonyms)
    matcher = NameMatcher(table, synonyms)
    inv = np.linalg.inv(image.affine)
    to_vox = inv[:3, :3] @ LPS_TO_RAS[:3, :3]
    shape = image.shape
    face_mm2 = float(np.linalg.norm(np.cross(image.affine[:3, 0], image.affine[:3, 1])))
    step_mm = float(np.linalg.norm(image.affine[:3, 2]))
    counts: dict[str, int] = defaultdict(int)
    by_number = {r["number"]: r for r in head["rois"]}
    # label index -> slice k -> list of per-ROI masks; per ROI stats
    slices: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    rois_out, unmapped = [], []
    roi_of_label: dict[int, list] = defaultdict(list)
    for item in ds.get("ROIContourSequence", []):
        number = int(item.get("ReferencedROINumber", -1))
        roi = by_number.get(number, {"name": f"ROI {number}", "frame_of_reference": ""})
        name = roi["name"]
        lab = matcher.match(name)
        rec = {"number": number, "name": name, "structure": lab.name if lab else "", "label": lab.index if lab else None,
               "n_contours": 0, "n_skipped": 0, "voxels": 0, "contour_volume_ml": 0.0, "status": "mapped" if lab else "unmapped"}
        rois_out.append(rec)
        if lab is None:
            closed = any(str(c.get("ContourGeometricType", "")) == "CLOSED_PLANAR" for c in item.get("ContourSequence", []))
            if closed:
                unmapped.append(name)
            else:  # markers, lines: no area to map (their contours are counted below as skipped)
                rec["status"] = "no_closed_contours"
                for c in item.get("ContourSequence", []):
                    ctype = str(c.get("ContourGeometricType", ""))
                    counts[{"POINT": "point_contour", "OPEN_PLANAR": "open_contour",
                            "OPEN_NONPLANAR": "open_contour"}.get(ctype, "bad_contour")] += 1
                    rec["n_skipped"] += 1
            continue
        if roi.get("frame_of_reference") and ref.frame_of_reference and roi["frame_of_reference"] != ref.frame_of_reference:
            findings.append(Finding("other_frame_of_reference", "skipped",
                                    f"ROI {name!r} is drawn on another frame of reference than its image series"))
            rec["status"] = "other_frame_of_reference"
            continue
        roi_of_label[lab.index].append(name)
        polys: dict[int, list] = defaultdict(list)
        for c in item.get("ContourSequence", []):
            ctype = str(c.get("ContourGeometricType", ""))
            data = np.asarray(c.get("ContourData", []), dtype=np.float64)
            if ctype != "CLOSED_PLANAR" or data.size < 9 or data.size % 3:
                kind = {"POINT": "point_contour", "OPEN_PLANAR": "open_contour", "OPEN_NONPLANAR": "open_contour"}.get(
                    ctype, "bad_contour")
                counts[kind] += 1
                rec["n_skipped"] += 1
                continue
            ijk = (to_vox @ data.reshape(-1, 3).T).T + inv[:3, 3]
            if not np.isfinite(ijk).all():
                counts["bad_contour"] += 1
                rec["n_skipped"] += 1
                continue
            ks = np.round(ijk[:, 2])
            if ks.min() != ks.max():
                counts["non_planar_contour"] += 1
                rec["n_skipped"] += 1
                continue
            k = int(ks[0])
            off = float(np.abs(ijk[:, 2] - k).max())
            if off > slice_tolerance or not 0 <= k < shape[2]:
                counts["contour_off_slice" if 0 <= k < shape[2] else "contour_outside_image"] += 1
                rec["n_skipped"] += 1
                continue
            lo, hi = ijk[:, :2].min(axis=0), ijk[:, :2].max(axis=0)
            edge = np.array(shape[:2], dtype=np.float64) - 0.5  # the image spans -0.5 .. n - 0.5 voxels
            if (hi < -0.5).any() or (lo > edge).any():
                counts["contour_outside_image"] += 1
                rec["n_skipped"] += 1
                continue
            if (lo < -0.5).any() or (hi > edge).any():
                counts["contour_clipped"] += 1  # filled on the image's voxels only (fill_polygons clips)
            if off > SLICE_WARN:
                counts["contour_between_slices"] += 1
            named = [ref.sop_slice.get(str(ci.get("ReferencedSOPInstanceUID", ""))) for ci in c.get("ContourImageSequence", [])]
            if any(n is not None and n != k for n in named):
                counts["contour_image_mismatch"] += 1
            polys[k].append(ijk[:, :2])
            rec["n_contours"] += 1
        for k, ps in polys.items():
            m = fill_polygons(ps, shape[:2])
            slices[lab.index][k].append(m)
            rec["voxels"] += int(m.sum())
            rec["contour_volume_ml"] += _even_odd_area(ps) * face_mm2 * step_mm / 1000.0
        rec["contour_volume_ml"] = round(rec["contour_volume_ml"], 4)
        if not polys:
            findings.append(Finding("empty_roi", "skipped", f"ROI {name!r} has no closed contour on this series"))
    seen = {r["number"] for r in rois_out}
    for r in head["rois"]:
        if r["number"] not in seen:  # declared in StructureSetROISequence, never contoured
            lab = matcher.match(r["name"])
            rois_out.append({"number": r["number"], "name": r["name"], "structure": lab.name if lab else "",
                             "label": lab.index if lab else None, "n_contours": 0, "n_skipped": 0, "voxels": 0,
                             "contour_volume_ml": 0.0, "status": "no_contours"})
            findings.append(Finding("empty_roi", "skipped", f"ROI {r['name']!r} has no contours"))
    for index, names in roi_of_label.items():
        if len(names) > 1:
            findings.append(Finding("duplicate_structure", "accepted",
                                    f"{len(names)} ROIs ({', '.join(map(repr, names))}) name structure "
                                    f"{table_name(table, index)!r}: united"))
    array, overlaps = combine_structures(slices, shape, table, overlap)
    findings += overlap_findings(overlaps, table, overlap)
    _count_findings(findings, counts, slice_tolerance)
    return label_object(path, "rtstruct", head["key"], array, image, table, rois_out, unmapped, findings, unit="ROI")


def label_object(path, fmt: str, key: str, array, image, table: LabelTable, rois, unmapped, findings: list, *, unit: str) -> LabelObject:
    """The label map on ``image``'s grid with the series' findings followed by the object's (RTSTRUCT and SEG alike)."""
    if unmapped:
        findings.append(Finding(f"unmapped_{unit.lower()}", "skipped", f"{len(unmapped)} {unit}(s) match no structure of table "
                                f"{table.name!r}: {', '.join(map(repr, unmapped))}"))
    all_findings = list(image.meta.get("dicom", {}).get("findings", [])) + [f.to_dict() for f in findings]
    meta = {"format": fmt, "label_object": key, "label_table": table.to_dict(), "findings": all_findings}
    labels = Volume(array, image.affine.copy(), str(path), meta)
    return LabelObject(labels, image, table, rois, unmapped, all_findings)


def table_name(table: LabelTable, index: int) -> str:
    return next((lab.name for lab in table.labels if lab.index == index), f"label {index}")


def _even_odd_area(polys: list) -> float:
    """Area (voxel faces) of the even-odd region of ``polys``: a contour inside an odd number of others is a hole."""
    from matplotlib.path import Path as MplPath

    paths = [MplPath(p) for p in polys]
    total = 0.0
    for n, p in enumerate(polys):
        depth = sum(1 for m, q in enumerate(paths) if m != n and q.contains_point(p[0]))
        total += abs(polygon_area(p)) * (-1) ** depth
    return total


def overlap_findings(overlaps: dict, table: LabelTable, rule: str) -> list:
    out = []
    for (win, lose), n in sorted(overlaps.items()):
        how = "smaller structure wins" if rule == "smaller" else "later table entry wins"
        out.append(Finding("overlap", "resolved", f"{n} voxels in both {table_name(table, win)!r} and "
                           f"{table_name(table, lose)!r}: given to {table_name(table, win)!r} ({how})"))
    return out


def combine_structures(slices: dict, shape: tuple, table: LabelTable, rule: str):
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


def _count_findings(findings: list, counts: dict, tol: float) -> None:
    text = {
        "point_contour": ("skipped", "POINT contour(s) (markers, not areas)"),
        "open_contour": ("skipped", "OPEN_PLANAR/OPEN_NONPLANAR contour(s) (lines, not areas)"),
        "bad_contour": ("skipped", "contour(s) with an unknown type or fewer than 3 points"),
        "non_planar_contour": ("skipped", "contour(s) whose points lie on more than one slice"),
        "contour_off_slice": ("skipped", f"contour(s) more than {tol:g} slice spacing from every slice"),
        "contour_outside_image": ("skipped", "contour(s) beyond the first or last slice of the series or wholly "
                                  "beyond the image's edges"),
        "contour_clipped": ("accepted_with_warning", "contour(s) reaching beyond the image's edges: clipped to the "
                            "image (the structure may be cut)"),
        "contour_between_slices": ("accepted_with_warning", f"contour(s) between {SLICE_WARN:g} and {tol:g} slice "
                                   "spacing off their slice: put on the nearest slice"),
        "contour_image_mismatch": ("accepted_with_warning", "contour(s) whose ContourImageSequence names another "
                                   "slice than their position: placed by position"),
    }
    for kind, n in counts.items():
        action, what = text[kind]
        findings.append(Finding(kind, action, f"{n} {what}"))


CONTOUR_LEVEL = 0.55
#: Contours enclosing fewer voxel faces than this are dropped (and counted).
MIN_FRAGMENT_VOXELS = 1.0
#: The patient and general study modules' attributes (Type 1 and 2) copied from the source series; nothing else.
PATIENT_STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                            "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Study Component Management SOP Class: what RTReferencedStudySequence items reference (PS3.3 C.8.8.5).
_STUDY_COMPONENT_SOP = "1.2.840.10008.3.1.2.3.1"


def _source_stack(folder: Path, labels: Volume, series_uid: str | None = None):
    """The planned stack of ``folder`` on ``labels``' grid and, per slice index, its SliceInfo."""
    from medseg.io.dicom.series import scan_inventory

    inv = scan_inventory(folder)
    for c in inv.candidates:
        p = c.plan
        if series_uid and series_uid not in (c.series.series_uid, c.series.series_key):
            continue
        if p.refused or tuple(p.shape) != labels.shape:
            continue
        if not np.allclose(LPS_TO_RAS @ p.lps, labels.affine, atol=1e-3):
            continue
        if p.interp is not None or p.inplane_shift is not None:
            raise InputError("the label map's series was resampled when read (irregular spacing or gantry tilt), so its "
                             "slices are not the source images; an RTSTRUCT needs contours on source slices", path=folder)
        inv_aff = np.linalg.inv(labels.affine)
        by_k = {}
        for s in p.slices:
            ijk = inv_aff[:3, :3] @ (LPS_TO_RAS[:3, :3] @ np.asarray(s.ipp, dtype=np.float64)) + inv_aff[:3, 3]
            k = int(np.round(ijk[2]))
            if abs(ijk[2] - k) < 0.25 and np.abs(ijk[:2]).max() < 0.25:
                by_k.setdefault(k, s)
        return c, by_k
    raise InputError("no image stack of this DICOM folder is on the label map's grid; cannot reference it from an "
                     "RTSTRUCT (pass the folder of the series the label map was made from)", path=folder)


def _item(**kw):
    from pydicom.dataset import Dataset

    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _ds(v: float) -> str:
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def write_rtstruct(labels: Volume, dicom_folder: str | os.PathLike, table: LabelTable, path: str | os.PathLike, *,
                   software_version: str | None = None, level: float = CONTOUR_LEVEL, min_fragment_voxels: float = MIN_FRAGMENT_VOXELS,
                   series_description: str = "medseg contours", series_uid: str | None = None,
                   findings: list | None = None, uid_seed: str | None = None) -> Path:
    """Write ``labels`` (on the grid of a series in ``dicom_folder``) as an RTSTRUCT at ``path``; return the path.

    ``uid_seed``: the object's SeriesInstanceUID and SOPInstanceUID are derived from it and the source series
    (the same on every rerun; see ``medseg.io.objects.seg.write_dicom_seg``); without it they are new each time.
    ``series_uid`` (a SeriesInstanceUID or ``se...`` key) picks the source series when several share the grid
    (default: the first stack on the grid). ``findings`` (optional list) receives ``{"kind", "action", "detail"}`` dicts (dropped fragments, absent structures).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian, generate_uid

    import medseg
    from medseg.io.atomic import atomic_path

    folder = Path(dicom_folder)
    cand, by_k = _source_stack(folder, labels, series_uid)
    arr = np.asarray(labels.array)
    if arr.size and int(arr.max()) > table.num_classes - 1:
        raise GeometryError(f"label map holds value {int(arr.max())} outside label table {table.name!r}", path=labels.source or None)
    first = cand.plan.slices[0]
    src = pydicom.dcmread(first.path, stop_before_pixels=True)
    for_uid = str(src.get("FrameOfReferenceUID", ""))
    version = software_version or medseg.__version__
    now = _dt.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    src_series = str(src.get("SeriesInstanceUID", ""))
    meta.MediaStorageSOPInstanceUID = (generate_uid(entropy_srcs=[uid_seed, src_series, "medseg RTSTRUCT instance"])
                                       if uid_seed else generate_uid())
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    if "SpecificCharacterSet" in src:
        ds.SpecificCharacterSet = src.SpecificCharacterSet
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for kw in PATIENT_STUDY_ATTRIBUTES:  # Type 2 when absent from the source: present and empty
        setattr(ds, kw, src.get(kw, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, src_series, "medseg RTSTRUCT series"]) if uid_seed else generate_uid()
    ds.SeriesNumber, ds.SeriesDescription = 901, series_description
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medseg", "medseg", version
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")  # Type 2 (Frame of Reference module)
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = "medseg contours"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"
    sop_class = str(src.SOPClassUID)
    contour_images = [_item(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=by_k[k].sop_uid) for k in sorted(by_k)]
    ds.ReferencedFrameOfReferenceSequence = Sequence([_item(
        FrameOfReferenceUID=for_uid,
        RTReferencedStudySequence=Sequence([_item(
            ReferencedSOPClassUID=_STUDY_COMPONENT_SOP, ReferencedSOPInstanceUID=str(src.StudyInstanceUID),
            RTReferencedSeriesSequence=Sequence([_item(SeriesInstanceUID=cand.series.series_uid,
                                                       ContourImageSequence=Sequence(contour_images))]))]))])

    lps = LPS_TO_RAS @ labels.affine
    face = float(np.linalg.norm(np.cross(labels.affine[:3, 0], labels.affine[:3, 1])))
    roi_items, contour_items, obs_items = [], [], []
    dropped = 0
    absent = []
    boxes = label_boxes(arr)
    colors = display_colors(table)
    for n, lab in enumerate(table.labels, start=1):
        box = boxes.get(lab.index)
        contours = []
        sub = arr[box] == lab.index if box is not None else np.zeros((0, 0, 0), bool)
        offset = np.array([box[0].start, box[1].start], dtype=np.float64) if box is not None else np.zeros(2)
        for kk in range(sub.shape[2]):
            k = kk + box[2].start
            if k not in by_k or not sub[:, :, kk].any():
                continue
            for poly in mask_contours(sub[:, :, kk], level=level):
                if abs(polygon_area(poly)) < min_fragment_voxels:
                    dropped += 1
                    continue
                poly = poly + offset
                pts = np.c_[poly, np.full(len(poly), float(k)), np.ones(len(poly))] @ lps.T
                contours.append(_item(
                    ContourImageSequence=Sequence([_item(ReferencedSOPClassUID=sop_class,
                                                         ReferencedSOPInstanceUID=by_k[k].sop_uid)]),
                    ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(poly),
                    ContourData=[_ds(v) for v in pts[:, :3].ravel()]))
        if not contours:
            absent.append(lab.name)
            continue
        number = len(roi_items) + 1
        roi_items.append(_item(ROINumber=number, ReferencedFrameOfReferenceUID=for_uid, ROIName=lab.name,
                               ROIGenerationAlgorithm="AUTOMATIC", ROIGenerationDescription=f"medseg {version}"))
        color = colors[lab.index]
        contour_items.append(_item(ReferencedROINumber=number, ROIDisplayColor=[int(c) for c in color],
                                   ContourSequence=Sequence(contours)))
        obs = _item(ObservationNumber=number, ReferencedROINumber=number, RTROIInterpretedType="ORGAN", ROIInterpreter="")
        if lab.snomed:
            obs.RTROIIdentificationCodeSequence = Sequence([_item(CodeValue=str(lab.snomed), CodingSchemeDesignator="SCT",
                                                                  CodeMeaning=lab.name)])
        obs_items.append(obs)
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(obs_items)
    if findings is not None:
        if dropped:
            findings.append(Finding("small_fragment", "dropped", f"{dropped} contour(s) enclosing less than "
                                    f"{min_fragment_voxels:g} voxel face(s) ({min_fragment_voxels * face:.3g} mm2) "
                                    "not written").to_dict())
        if absent:
            findings.append(Finding("absent_structure", "skipped", f"no voxels, no ROI: {', '.join(absent)}").to_dict())
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return Path(path)
