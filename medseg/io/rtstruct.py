"""RT Structure Sets -> label maps on the referenced image series' grid.

``read_rtstruct(path, images)`` reads an RTSTRUCT and the series it references
(found by SeriesInstanceUID and the SOPInstanceUIDs of its contour images, not
by folder; ``medseg.io.referenced``), then rasterises every ROI onto that
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
  inside or on the contour (``medseg.io.contours``). POINT and OPEN contours
  are skipped with a finding; so are ROIs on another frame of reference.
* ROI names are matched to the label table through ``medseg.io.roi_names``
  (case, spaces, side words, synonyms file). Without a table, one is made from
  the ROI names. Unmapped ROIs are listed in ``result.unmapped`` and a finding.
  Several ROIs naming one structure are united (``duplicate_structure``).
* Overlaps: a voxel inside several structures gets **the smallest structure**
  (fewest voxels in the whole series; ``overlap="smaller"``, the default, so a
  tumour inside an organ or a cord inside a canal survives), or the structure
  listed last in the table (``overlap="table"``). Every overlapping pair is
  counted in an ``overlap`` finding.

Why a structure's contour volume differs from its voxel volume: see
``medseg.io.rtstruct_write``.

Findings are ``{"kind", "action", "detail"}`` dicts, the format of the image
series' geometry findings, and ``result.findings`` holds both (series first).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.io.contours import fill_polygons, polygon_area
from medseg.io.dicom_geometry import Finding
from medseg.io.dicom_scan import pseudonym
from medseg.io.volume import LPS_TO_RAS, Volume
from medseg.labels import LabelTable

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
    from medseg.io.roi_names import usable_name

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
    ``inventory``: an already scanned ``medseg.io.dicom.Inventory`` of ``images`` (saves a scan).
    """
    from medseg.io.referenced import referenced_volume
    from medseg.io.roi_names import NameMatcher, table_from_names

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
