"""Label maps -> RT Structure Sets that reference their source series.

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
Marching squares on each slice's 0/1 mask (``medseg.io.contours``) at level
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
Filling these contours back by the voxel-centre rule (``medseg.io.rtstruct``)
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
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.io.contours import mask_contours, polygon_area
from medseg.io.dicom_geometry import Finding
from medseg.io.rtstruct import RTSTRUCT_SOP_CLASS
from medseg.io.volume import LPS_TO_RAS, Volume, label_boxes
from medseg.labels import LabelTable, display_colors

#: Marching-squares level on the 0/1 mask: contours 0.45 voxel from the structure's edge voxel centres (docstring).
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
    from medseg.io.dicom import scan_inventory

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
    (the same on every rerun; see ``medseg.io.seg.write_dicom_seg``); without it they are new each time.
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
