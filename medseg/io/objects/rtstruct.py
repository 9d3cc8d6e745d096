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
Filling these contours back by the voxel-centre rule (``read_rtstruct``, below)
gives back exactly the voxels written, except dropped fragments. A planning
system that computes a structure's volume from its contours (area x slice
spacing) gets a slightly *smaller* number than the voxel count: the contour
cuts each staircase corner of the voxel boundary (about 1/8 voxel face per
corner) and runs 0.05 voxel inside the half-way line (0.05 x perimeter). On the
phantom organs at 0.7-1 mm in-plane this is 0.05-0.1 % (measured in
``tests/unit/io/test_rtstruct.py``, bound 2 %); it grows for small structures
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
  counted in an ``overlap`` finding (``medseg.io.objects.label_objects``, shared
  with the SEG reader).

Why a structure's contour volume differs from its voxel volume: see *Why
contour volumes differ from voxel volumes* above.

Findings are ``{"kind", "action", "detail"}`` dicts, the format of the image
series' geometry findings, and ``result.findings`` holds both (series first).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import medseg
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.geometry import Finding
from medseg.io.dicom.scan import SliceInfo, pseudonym
from medseg.io.dicom.select import Candidate
from medseg.io.dicom.series import scan_inventory
from medseg.io.objects.contours import fill_polygons, mask_contours, polygon_area
from medseg.io.objects.label_objects import (
    LabelObject,
    check_overlap_rule,
    combine_structures,
    label_object,
    overlap_findings,
    table_name,
)
from medseg.io.objects.referenced import Referenced, referenced_volume
from medseg.io.objects.roi_names import NameMatcher, table_from_names, usable_name
from medseg.io.volume import LPS_TO_RAS, Volume, label_boxes
from medseg.labels import Label, LabelTable, display_colors

if TYPE_CHECKING:
    from pydicom import Dataset

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: The marching-squares level contours are written at (see *Contours* above).
CONTOUR_LEVEL = 0.55
#: Contours enclosing fewer voxel faces than this are dropped (and counted).
MIN_FRAGMENT_VOXELS = 1.0
#: The patient and general study modules' attributes (Type 1 and 2) copied from the source series; nothing else.
PATIENT_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: Study Component Management SOP Class: what RTReferencedStudySequence items reference (PS3.3 C.8.8.5).
_STUDY_COMPONENT_SOP = "1.2.840.10008.3.1.2.3.1"
#: Default: a contour may lie up to half a slice spacing from the slice it is assigned to.
SLICE_TOLERANCE = 0.5
#: Contours further than this (in slice spacings) from their slice are counted in a finding.
SLICE_WARN = 0.1
#: Contour types that enclose no area, and the count (finding kind) each is reported under; any other type is bad.
_NOT_AREA = {"POINT": "point_contour", "OPEN_PLANAR": "open_contour", "OPEN_NONPLANAR": "open_contour"}


# -- writing ----------------------------------------------------------------------------------------------------


def write_rtstruct(
    labels: Volume,
    dicom_folder: str | os.PathLike,
    table: LabelTable,
    path: str | os.PathLike,
    *,
    software_version: str | None = None,
    level: float = CONTOUR_LEVEL,
    min_fragment_voxels: float = MIN_FRAGMENT_VOXELS,
    series_description: str = "medseg contours",
    series_uid: str | None = None,
    findings: list | None = None,
    uid_seed: str | None = None,
) -> Path:
    """Write ``labels`` (on the grid of a series in ``dicom_folder``) as an RTSTRUCT at ``path``; return the path.

    ``uid_seed``: the object's SeriesInstanceUID and SOPInstanceUID are derived from it and the source series
    (the same on every rerun; see ``medseg.io.objects.seg.write_dicom_seg``); without it they are new each time.
    ``series_uid`` (a SeriesInstanceUID or ``se...`` key) picks the source series when several share the grid
    (default: the first stack on the grid). ``findings`` (optional list) receives ``{"kind", "action", "detail"}``
    dicts (dropped fragments, absent structures).
    """
    import pydicom
    from pydicom.sequence import Sequence

    folder = Path(dicom_folder)
    cand, by_k = _source_stack(folder, labels, series_uid)
    arr = np.asarray(labels.array)
    if arr.size and int(arr.max()) > table.num_classes - 1:
        raise GeometryError(
            f"label map holds value {int(arr.max())} outside label table {table.name!r}", path=labels.source or None
        )
    src = pydicom.dcmread(cand.plan.slices[0].path, stop_before_pixels=True)
    for_uid = str(src.get("FrameOfReferenceUID", ""))
    version = software_version or medseg.__version__
    ds = _structure_set(src, for_uid, version, series_description, uid_seed)
    sop_class = str(src.SOPClassUID)
    ds.ReferencedFrameOfReferenceSequence = _referenced_frame(src, for_uid, sop_class, cand, by_k)
    drawn = _draw_structures(
        arr, LPS_TO_RAS @ labels.affine, table, by_k, sop_class, for_uid, version, level, min_fragment_voxels
    )
    ds.StructureSetROISequence = Sequence(drawn.rois)
    ds.ROIContourSequence = Sequence(drawn.contours)
    ds.RTROIObservationsSequence = Sequence(drawn.observations)
    if findings is not None:
        face = float(np.linalg.norm(np.cross(labels.affine[:3, 0], labels.affine[:3, 1])))
        findings.extend(drawn.findings(min_fragment_voxels, face))
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return Path(path)


def _source_stack(
    folder: Path, labels: Volume, series_uid: str | None = None
) -> tuple[Candidate, dict[int, SliceInfo]]:
    """The planned stack of ``folder`` on ``labels``' grid and, per slice index, its SliceInfo."""
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
            raise InputError(
                "the label map's series was resampled when read (irregular spacing or gantry tilt), so its "
                "slices are not the source images; an RTSTRUCT needs contours on source slices",
                path=folder,
            )
        inv_aff = np.linalg.inv(labels.affine)
        by_k: dict[int, SliceInfo] = {}
        for s in p.slices:
            ijk = inv_aff[:3, :3] @ (LPS_TO_RAS[:3, :3] @ np.asarray(s.ipp, dtype=np.float64)) + inv_aff[:3, 3]
            k = int(np.round(ijk[2]))
            if abs(ijk[2] - k) < 0.25 and np.abs(ijk[:2]).max() < 0.25:
                by_k.setdefault(k, s)
        return c, by_k
    raise InputError(
        "no image stack of this DICOM folder is on the label map's grid; cannot reference it from an "
        "RTSTRUCT (pass the folder of the series the label map was made from)",
        path=folder,
    )


def _item(**kw) -> Dataset:
    """A sequence item holding ``kw`` (keyword -> value)."""
    from pydicom.dataset import Dataset

    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _ds(v: float) -> str:
    """``v`` as a DS (decimal string) value of at most 4 decimals, without trailing zeros."""
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _structure_set(src: Dataset, for_uid: str, version: str, series_description: str, uid_seed: str | None) -> Dataset:
    """An RTSTRUCT dataset without ROIs: file meta, the source's patient and study, a new series, the frame of
    reference and the structure set module."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian, generate_uid

    now = _dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    src_series = str(src.get("SeriesInstanceUID", ""))
    meta.MediaStorageSOPInstanceUID = (
        generate_uid(entropy_srcs=[uid_seed, src_series, "medseg RTSTRUCT instance"]) if uid_seed else generate_uid()
    )
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
    ds.SeriesInstanceUID = (
        generate_uid(entropy_srcs=[uid_seed, src_series, "medseg RTSTRUCT series"]) if uid_seed else generate_uid()
    )
    ds.SeriesNumber, ds.SeriesDescription = 901, series_description
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medseg", "medseg", version
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")  # Type 2 (Frame of Reference module)
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = "medseg contours"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _referenced_frame(src: Dataset, for_uid: str, sop_class: str, cand: Candidate, by_k: dict[int, SliceInfo]):
    """ReferencedFrameOfReferenceSequence: the source study, series and every slice a contour may reference."""
    from pydicom.sequence import Sequence

    contour_images = [
        _item(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=by_k[k].sop_uid) for k in sorted(by_k)
    ]
    return Sequence(
        [
            _item(
                FrameOfReferenceUID=for_uid,
                RTReferencedStudySequence=Sequence(
                    [
                        _item(
                            ReferencedSOPClassUID=_STUDY_COMPONENT_SOP,
                            ReferencedSOPInstanceUID=str(src.StudyInstanceUID),
                            RTReferencedSeriesSequence=Sequence(
                                [
                                    _item(
                                        SeriesInstanceUID=cand.series.series_uid,
                                        ContourImageSequence=Sequence(contour_images),
                                    )
                                ]
                            ),
                        )
                    ]
                ),
            )
        ]
    )


@dataclass
class _Drawn:
    """The three ROI sequences' items ``write_rtstruct`` builds, and what it left out."""

    rois: list = field(default_factory=list)  # StructureSetROISequence
    contours: list = field(default_factory=list)  # ROIContourSequence
    observations: list = field(default_factory=list)  # RTROIObservationsSequence
    dropped: int = 0  # contours enclosing less than min_fragment_voxels
    absent: list = field(default_factory=list)  # structures of the table without a contour

    def findings(self, min_fragment_voxels: float, face_mm2: float) -> list[dict]:
        out = []
        if self.dropped:
            out.append(
                Finding(
                    "small_fragment",
                    "dropped",
                    f"{self.dropped} contour(s) enclosing less than "
                    f"{min_fragment_voxels:g} voxel face(s) ({min_fragment_voxels * face_mm2:.3g} mm2) "
                    "not written",
                ).to_dict()
            )
        if self.absent:
            out.append(Finding("absent_structure", "skipped", f"no voxels, no ROI: {', '.join(self.absent)}").to_dict())
        return out


def _draw_structures(
    arr: np.ndarray,
    lps: np.ndarray,
    table: LabelTable,
    by_k: dict[int, SliceInfo],
    sop_class: str,
    for_uid: str,
    version: str,
    level: float,
    min_fragment_voxels: float,
) -> _Drawn:
    """One ROI (number, contours, observation) per structure of ``table`` with contours, numbered from 1."""
    from pydicom.sequence import Sequence

    drawn = _Drawn()
    boxes = label_boxes(arr)
    colors = display_colors(table)
    for lab in table.labels:
        contours, dropped = _structure_contours(
            arr, lab.index, boxes.get(lab.index), lps, by_k, sop_class, level, min_fragment_voxels
        )
        drawn.dropped += dropped
        if not contours:
            drawn.absent.append(lab.name)
            continue
        number = len(drawn.rois) + 1
        drawn.rois.append(
            _item(
                ROINumber=number,
                ReferencedFrameOfReferenceUID=for_uid,
                ROIName=lab.name,
                ROIGenerationAlgorithm="AUTOMATIC",
                ROIGenerationDescription=f"medseg {version}",
            )
        )
        color = colors[lab.index]
        drawn.contours.append(
            _item(
                ReferencedROINumber=number, ROIDisplayColor=[int(c) for c in color], ContourSequence=Sequence(contours)
            )
        )
        drawn.observations.append(_observation(number, lab))
    return drawn


def _observation(number: int, lab: Label) -> Dataset:
    """The RTROIObservationsSequence item of ROI ``number``: an ORGAN, with the structure's SNOMED code if it has
    one."""
    from pydicom.sequence import Sequence

    obs = _item(ObservationNumber=number, ReferencedROINumber=number, RTROIInterpretedType="ORGAN", ROIInterpreter="")
    if lab.snomed:
        obs.RTROIIdentificationCodeSequence = Sequence(
            [_item(CodeValue=str(lab.snomed), CodingSchemeDesignator="SCT", CodeMeaning=lab.name)]
        )
    return obs


def _structure_contours(
    arr: np.ndarray,
    index: int,
    box: tuple[slice, ...] | None,
    lps: np.ndarray,
    by_k: dict[int, SliceInfo],
    sop_class: str,
    level: float,
    min_fragment_voxels: float,
) -> tuple[list, int]:
    """The ContourSequence items of structure ``index`` (within its bounding ``box``) on every source slice, and
    how many contours were dropped as smaller than ``min_fragment_voxels``."""
    from pydicom.sequence import Sequence

    if box is None:  # not in the label map
        return [], 0
    contours, dropped = [], 0
    sub = arr[box] == index
    offset = np.array([box[0].start, box[1].start], dtype=np.float64)
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
            contours.append(
                _item(
                    ContourImageSequence=Sequence(
                        [_item(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=by_k[k].sop_uid)]
                    ),
                    ContourGeometricType="CLOSED_PLANAR",
                    NumberOfContourPoints=len(poly),
                    ContourData=[_ds(v) for v in pts[:, :3].ravel()],
                )
            )
    return contours, dropped


# -- reading ----------------------------------------------------------------------------------------------------


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
    series_uids: list[str] = []
    sops: set[str] = set()
    for_uids: set[str] = set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for_uids.add(str(fr.get("FrameOfReferenceUID", "")))
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                series_uids.append(str(se.get("SeriesInstanceUID", "")))
                sops.update(
                    str(ci.ReferencedSOPInstanceUID)
                    for ci in se.get("ContourImageSequence", [])
                    if "ReferencedSOPInstanceUID" in ci
                )
    rois: dict[int, dict[str, Any]] = {}
    for item in ds.get("StructureSetROISequence", []):
        raw = str(item.get("ROIName", ""))
        rois[int(item.ROINumber)] = {
            "number": int(item.ROINumber),
            "name": usable_name(raw, int(item.ROINumber)),
            "frame_of_reference": str(item.get("ReferencedFrameOfReferenceUID", "")),
            "color": None,
            "types": defaultdict(int),
            "interpreted_type": "",
        }
        if rois[int(item.ROINumber)]["name"] != raw:
            rois[int(item.ROINumber)]["renamed_from"] = raw
    for obs in ds.get("RTROIObservationsSequence", []):
        n = int(obs.get("ReferencedROINumber", -1))
        if n in rois:
            rois[n]["interpreted_type"] = str(obs.get("RTROIInterpretedType", ""))
    for item in ds.get("ROIContourSequence", []):
        n = int(item.get("ReferencedROINumber", -1))
        roi = rois.setdefault(
            n,
            {
                "number": n,
                "name": f"ROI {n}",
                "frame_of_reference": "",
                "color": None,
                "types": defaultdict(int),
                "interpreted_type": "",
            },
        )
        roi["color"] = _roi_color(item)
        for c in item.get("ContourSequence", []):
            roi["types"][str(c.get("ContourGeometricType", ""))] += 1
            sops.update(
                str(ci.ReferencedSOPInstanceUID)
                for ci in c.get("ContourImageSequence", [])
                if "ReferencedSOPInstanceUID" in ci
            )
    for r in rois.values():
        r["types"] = dict(r["types"])
    return {
        "series_uid": series_uids[0] if series_uids else None,
        "series_uids": series_uids,
        "sop_uids": sops,
        "frame_of_reference": sorted(for_uids),
        "rois": list(rois.values()),
        "dataset": ds,
        "key": pseudonym(str(ds.get("SOPInstanceUID", "")), prefix="rs"),
    }


def closed_rois(header: dict) -> list[dict]:
    """ROIs with at least one CLOSED_PLANAR contour (the ones that can become label map structures)."""
    return [r for r in header["rois"] if r["types"].get("CLOSED_PLANAR", 0) > 0]


def read_rtstruct(
    path: str | os.PathLike,
    images,
    *,
    table: LabelTable | None = None,
    synonyms: dict | None = None,
    slice_tolerance: float = SLICE_TOLERANCE,
    overlap: str = "smaller",
    inventory=None,
) -> LabelObject:
    """Rasterise the RTSTRUCT at ``path`` onto the series it references, found in ``images`` (folder or files).

    ``table``: the structures to fill (matched by name, synonyms applied); default: one made from the ROI names.
    ``inventory``: an already scanned ``medseg.io.dicom.series.Inventory`` of ``images`` (saves a scan).
    """
    check_overlap_rule(overlap)
    if not 0 < slice_tolerance <= 0.5:
        raise ConfigError(f"slice_tolerance {slice_tolerance}: expected a fraction of the slice spacing in (0, 0.5]")
    head = rtstruct_header(Path(path))
    ref = referenced_volume(
        images,
        series_uid=head["series_uid"],
        sop_uids=head["sop_uids"],
        what=f"RTSTRUCT {head['key']}",
        inventory=inventory,
        frame_of_reference=tuple(head["frame_of_reference"]),
    )
    got = _Read(
        [
            Finding(
                "unnamed_roi",
                "renamed",
                f"ROI {r['number']}'s name {r['renamed_from']!r} has no letter or digit: read as {r['name']!r}",
            )
            for r in head["rois"]
            if "renamed_from" in r
        ]
    )
    if table is None:
        closed = closed_rois(head)
        table = table_from_names(
            [r["name"] for r in closed],
            name="rtstruct",
            colors={r["name"]: r["color"] for r in closed if r["color"]},
            synonyms=synonyms,
        )
    matcher = NameMatcher(table, synonyms)
    grid = _Grid.of(ref, slice_tolerance)
    by_number = {r["number"]: r for r in head["rois"]}
    for item in head["dataset"].get("ROIContourSequence", []):
        _read_roi(item, by_number, matcher, ref.frame_of_reference, grid, got)
    _add_uncontoured(head["rois"], matcher, got)
    for index, names in got.roi_of_label.items():
        if len(names) > 1:
            got.findings.append(
                Finding(
                    "duplicate_structure",
                    "accepted",
                    f"{len(names)} ROIs ({', '.join(map(repr, names))}) name structure "
                    f"{table_name(table, index)!r}: united",
                )
            )
    array, overlaps = combine_structures(got.slices, grid.shape, table, overlap)
    got.findings += overlap_findings(overlaps, table, overlap)
    _count_findings(got.findings, got.counts, slice_tolerance)
    return label_object(
        path, "rtstruct", head["key"], array, ref.volume, table, got.rois, got.unmapped, got.findings, unit="ROI"
    )


@dataclass
class _Read:
    """What reading an RTSTRUCT's ROIs gathers."""

    findings: list  # Finding, in the order they are reported
    rois: list = field(default_factory=list)  # one record per ROI
    unmapped: list = field(default_factory=list)  # names of ROIs with closed contours no structure matched
    counts: dict = field(default_factory=lambda: defaultdict(int))  # finding kind -> contours
    slices: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))  # label -> slice k -> masks
    roi_of_label: dict = field(default_factory=lambda: defaultdict(list))  # label -> names of its ROIs


@dataclass
class _Grid:
    """The referenced series' grid, as contour points (LPS mm) are placed on it."""

    inv: np.ndarray  # RAS mm -> voxel indices
    to_vox: np.ndarray  # LPS mm -> voxel indices, the linear part
    shape: tuple
    face_mm2: float  # one in-plane voxel face
    step_mm: float  # between slices
    tolerance: float  # slice spacings a contour may lie off its slice
    sop_slice: dict  # SOPInstanceUID -> slice index

    @classmethod
    def of(cls, ref: Referenced, tolerance: float) -> _Grid:
        image = ref.volume
        inv = np.linalg.inv(image.affine)
        return cls(
            inv,
            inv[:3, :3] @ LPS_TO_RAS[:3, :3],
            image.shape,
            float(np.linalg.norm(np.cross(image.affine[:3, 0], image.affine[:3, 1]))),
            float(np.linalg.norm(image.affine[:3, 2])),
            tolerance,
            ref.sop_slice,
        )

    def place(self, c, counts: dict) -> tuple[int, np.ndarray] | None:
        """The slice index and in-plane voxel coordinates of contour item ``c``; None when it is skipped (counted
        in ``counts`` by why, as are the warnings about a contour kept)."""
        ctype = str(c.get("ContourGeometricType", ""))
        data = np.asarray(c.get("ContourData", []), dtype=np.float64)
        if ctype != "CLOSED_PLANAR" or data.size < 9 or data.size % 3:
            counts[_NOT_AREA.get(ctype, "bad_contour")] += 1
            return None
        ijk = (self.to_vox @ data.reshape(-1, 3).T).T + self.inv[:3, 3]
        if not np.isfinite(ijk).all():
            counts["bad_contour"] += 1
            return None
        ks = np.round(ijk[:, 2])
        if ks.min() != ks.max():
            counts["non_planar_contour"] += 1
            return None
        k = int(ks[0])
        off = float(np.abs(ijk[:, 2] - k).max())
        shape = self.shape
        if off > self.tolerance or not 0 <= k < shape[2]:
            counts["contour_off_slice" if 0 <= k < shape[2] else "contour_outside_image"] += 1
            return None
        lo, hi = ijk[:, :2].min(axis=0), ijk[:, :2].max(axis=0)
        edge = np.array(shape[:2], dtype=np.float64) - 0.5  # the image spans -0.5 .. n - 0.5 voxels
        if (hi < -0.5).any() or (lo > edge).any():
            counts["contour_outside_image"] += 1
            return None
        if (lo < -0.5).any() or (hi > edge).any():
            counts["contour_clipped"] += 1  # filled on the image's voxels only (fill_polygons clips)
        if off > SLICE_WARN:
            counts["contour_between_slices"] += 1
        named = [
            self.sop_slice.get(str(ci.get("ReferencedSOPInstanceUID", ""))) for ci in c.get("ContourImageSequence", [])
        ]
        if any(n is not None and n != k for n in named):
            counts["contour_image_mismatch"] += 1
        return k, ijk[:, :2]


def _read_roi(item, by_number: dict, matcher: NameMatcher, frame_of_reference: str, grid: _Grid, got: _Read) -> None:
    """Fill one ROIContourSequence item's closed contours into ``got.slices`` (under the structure its name
    matches) and record the ROI."""
    number = int(item.get("ReferencedROINumber", -1))
    roi = by_number.get(number, {"name": f"ROI {number}", "frame_of_reference": ""})
    name = roi["name"]
    lab = matcher.match(name)
    rec: dict[str, Any] = {
        "number": number,
        "name": name,
        "structure": lab.name if lab else "",
        "label": lab.index if lab else None,
        "n_contours": 0,
        "n_skipped": 0,
        "voxels": 0,
        "contour_volume_ml": 0.0,
        "status": "mapped" if lab else "unmapped",
    }
    got.rois.append(rec)
    if lab is None:
        if any(str(c.get("ContourGeometricType", "")) == "CLOSED_PLANAR" for c in item.get("ContourSequence", [])):
            got.unmapped.append(name)
        else:  # markers, lines: no area to map (their contours are counted as skipped)
            rec["status"] = "no_closed_contours"
            for c in item.get("ContourSequence", []):
                got.counts[_NOT_AREA.get(str(c.get("ContourGeometricType", "")), "bad_contour")] += 1
                rec["n_skipped"] += 1
        return
    if roi.get("frame_of_reference") and frame_of_reference and roi["frame_of_reference"] != frame_of_reference:
        got.findings.append(
            Finding(
                "other_frame_of_reference",
                "skipped",
                f"ROI {name!r} is drawn on another frame of reference than its image series",
            )
        )
        rec["status"] = "other_frame_of_reference"
        return
    got.roi_of_label[lab.index].append(name)
    polys: dict[int, list] = defaultdict(list)
    for c in item.get("ContourSequence", []):
        placed = grid.place(c, got.counts)
        if placed is None:
            rec["n_skipped"] += 1
            continue
        k, points = placed
        polys[k].append(points)
        rec["n_contours"] += 1
    for k, ps in polys.items():
        m = fill_polygons(ps, grid.shape[:2])
        got.slices[lab.index][k].append(m)
        rec["voxels"] += int(m.sum())
        rec["contour_volume_ml"] += _even_odd_area(ps) * grid.face_mm2 * grid.step_mm / 1000.0
    rec["contour_volume_ml"] = round(rec["contour_volume_ml"], 4)
    if not polys:
        got.findings.append(Finding("empty_roi", "skipped", f"ROI {name!r} has no closed contour on this series"))


def _add_uncontoured(rois: list, matcher: NameMatcher, got: _Read) -> None:
    """A record and an ``empty_roi`` finding for each ROI declared in StructureSetROISequence but never contoured."""
    seen = {r["number"] for r in got.rois}
    for r in rois:
        if r["number"] not in seen:
            lab = matcher.match(r["name"])
            got.rois.append(
                {
                    "number": r["number"],
                    "name": r["name"],
                    "structure": lab.name if lab else "",
                    "label": lab.index if lab else None,
                    "n_contours": 0,
                    "n_skipped": 0,
                    "voxels": 0,
                    "contour_volume_ml": 0.0,
                    "status": "no_contours",
                }
            )
            got.findings.append(Finding("empty_roi", "skipped", f"ROI {r['name']!r} has no contours"))


def _even_odd_area(polys: list) -> float:
    """Area (voxel faces) of the even-odd region of ``polys``: a contour inside an odd number of others is a hole."""
    from matplotlib.path import Path as MplPath

    paths = [MplPath(p) for p in polys]
    total = 0.0
    for n, p in enumerate(polys):
        depth = sum(1 for m, q in enumerate(paths) if m != n and q.contains_point(p[0]))
        total += abs(polygon_area(p)) * (-1) ** depth
    return total


def _count_findings(findings: list, counts: dict, tol: float) -> None:
    """One finding per kind of contour skipped or kept with a warning, with how many."""
    text = {
        "point_contour": ("skipped", "POINT contour(s) (markers, not areas)"),
        "open_contour": ("skipped", "OPEN_PLANAR/OPEN_NONPLANAR contour(s) (lines, not areas)"),
        "bad_contour": ("skipped", "contour(s) with an unknown type or fewer than 3 points"),
        "non_planar_contour": ("skipped", "contour(s) whose points lie on more than one slice"),
        "contour_off_slice": ("skipped", f"contour(s) more than {tol:g} slice spacing from every slice"),
        "contour_outside_image": (
            "skipped",
            "contour(s) beyond the first or last slice of the series or wholly beyond the image's edges",
        ),
        "contour_clipped": (
            "accepted_with_warning",
            "contour(s) reaching beyond the image's edges: clipped to the image (the structure may be cut)",
        ),
        "contour_between_slices": (
            "accepted_with_warning",
            f"contour(s) between {SLICE_WARN:g} and {tol:g} slice spacing off their slice: put on the nearest slice",
        ),
        "contour_image_mismatch": (
            "accepted_with_warning",
            "contour(s) whose ContourImageSequence names another slice than their position: placed by position",
        ),
    }
    for kind, n in counts.items():
        action, what = text[kind]
        findings.append(Finding(kind, action, f"{n} {what}"))
