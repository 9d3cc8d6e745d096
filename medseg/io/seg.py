"""DICOM SEG output for predictions made on a DICOM series (highdicom).

The SEG references the source series: one frame per source slice, placed by
the source slices' own geometry (so masks cannot come out flipped), one
segment per structure of the label table, with the SNOMED CT code from the
table when it has one. Written atomically as ``<case_id>.seg.dcm``.

A SEG is a clinical object meant to sit beside its series in a PACS, so it
carries the series' patient and study modules (copied by highdicom from the
source headers); nothing of them is written anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.io.volume import LPS_TO_RAS, Volume
from medseg.labels import LabelTable, display_colors

#: Type 2 attributes (present, may be empty) that highdicom copies from the source series.
_TYPE2_SOURCE_ATTRIBUTES = (
    "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
)

#: SNOMED CT "Anatomical structure": the category of every organ segment.
_ANATOMY_CATEGORY = ("123037004", "SCT", "Anatomical Structure")


def _source_slices(folder: Path, labels: Volume, series_key: str | None = None):
    """Header-only datasets of the series the label map was made on, each with its slice's voxel indices.

    ``series_key`` (``se...``, the reader's pseudonym of the SeriesInstanceUID): only that series' slices, so a
    folder holding several series on the same grid (an export of several patients) cannot mix them.
    """
    import pydicom

    from medseg.io.dicom_scan import pseudonym

    inv = np.linalg.inv(labels.affine)
    matched = []
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            f = Path(root) / name
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                continue
            if not all(hasattr(ds, t) for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")):
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


def write_dicom_seg(labels: Volume, dicom_folder: str | os.PathLike, table: LabelTable, path: str | os.PathLike, *, software_version: str,
                    uid_seed: str | None = None, series_key: str | None = None) -> Path:
    """Write ``labels`` (on the DICOM series' grid) as a DICOM SEG referencing that series.

    ``uid_seed`` (e.g. a hash of the model and settings): the SEG's SeriesInstanceUID and SOPInstanceUID are
    derived from it and the source SeriesInstanceUID, so writing the same case again gives the same object
    (a PACS receiving it twice stores one instance); without it they are new each time.
    ``series_key``: the source series' ``se...`` key when ``dicom_folder`` holds several series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medseg.io.atomic import atomic_path

    folder = Path(dicom_folder)
    matched = _source_slices(folder, labels, series_key)
    frames = np.stack([labels.array[idx] for _, idx in matched]).astype(np.uint16)
    if frames.max() > table.num_classes - 1:
        raise GeometryError(f"label map holds value {int(frames.max())} outside label table {table.name!r}", path=labels.source or None)
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", version=software_version, family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    colors = display_colors(table)
    for n, lab in enumerate(table.labels, start=1):
        prop = hd.sr.CodedConcept(lab.snomed, "SCT", lab.name) if lab.snomed else hd.sr.CodedConcept("85756007", "SCT", "Tissue")
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=lab.name,
            segmented_property_category=hd.sr.CodedConcept(*_ANATOMY_CATEGORY),
            segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*colors[lab.index]),
        ))
    # Segment numbers are 1..n in table order; remap label indices onto them.
    remap = np.zeros(table.num_classes, dtype=np.uint16)
    for n, lab in enumerate(table.labels, start=1):
        remap[lab.index] = n
    seg = hd.seg.Segmentation(
        source_images=[ds for ds, _ in matched],
        pixel_array=remap[frames],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid(uid_seed, matched, "series"), series_number=900,
        sop_instance_uid=_uid(uid_seed, matched, "instance"), instance_number=1,
        manufacturer="medseg", manufacturer_model_name="medseg", software_versions=software_version, device_serial_number="0",
        series_description="medseg segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
