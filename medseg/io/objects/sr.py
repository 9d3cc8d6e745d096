"""DICOM SR measurement reports (TID 1500) of a case's structures, referencing its SEG (highdicom.sr).

One Comprehensive 3D SR per DICOM case, beside its SEG: a ``MeasurementReport`` holding, per structure
found, a ``VolumetricROIMeasurementsAndQualitativeEvaluations`` group that references the structure's
segment in the SEG, with

- its volume (SNOMED CT 118565006 "Volume", UCUM ``ml``);
- for CT, the mean and standard deviation of its voxels' attenuation (DCM 112031 "Attenuation Coefficient",
  UCUM ``[hnsf'U]``, derivations SNOMED CT "Mean" / "Standard Deviation");
- the quality verdict of the structure when one is given (a qualitative evaluation, free-text coded).

The observer is a device: medseg, its version, and the model checksum (as the device's serial number and
the algorithm's parameters). The patient and study modules come from the SEG (which copied them from the
source series); nothing else of the patient is written. With a ``uid_seed`` the SR's UIDs are derived from it
and the SEG's, so writing the same case again gives the same object (a PACS stores it once).

OHIF, 3D Slicer (QuantitativeReporting) and dcmqi's ``tid1500reader`` read these reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom

from medseg.io.atomic import atomic_path
from medseg.labels import LabelTable

#: Coded concepts used (value, scheme, meaning).
VOLUME = ("118565006", "SCT", "Volume")
MILLILITER = ("ml", "UCUM", "milliliter")
ATTENUATION = ("112031", "DCM", "Attenuation Coefficient")
HOUNSFIELD = ("[hnsf'U]", "UCUM", "Hounsfield unit")
MEAN = ("373098007", "SCT", "Mean")
STANDARD_DEVIATION = ("386136009", "SCT", "Standard Deviation")
#: The procedure reported, by modality (LOINC), as dcmqi's examples use.
PROCEDURES = {
    "CT": ("25045-6", "LN", "CT unspecified body region"),
    "MR": ("25056-3", "LN", "MRI unspecified body region"),
}
#: The quality verdict as a qualitative evaluation (a private coding scheme: no standard code says pass/review/fail).
QUALITY = ("quality", "99MEDSEG", "Segmentation quality")
QUALITY_VALUES = {v: (v, "99MEDSEG", v) for v in ("pass", "review", "fail")}


def _code(triple):
    return hd.sr.CodedConcept(*triple)


def _uid(seed: str | None, seg, what: str) -> str:
    if not seed:
        return hd.UID()
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[seed, str(seg.SeriesInstanceUID), f"medseg SR {what}"])


def _measurements(row: dict, modality: str) -> list:
    out = [hd.sr.Measurement(name=_code(VOLUME), value=float(row["volume_ml"]), unit=_code(MILLILITER))]
    mean, std = row.get("intensity_mean"), row.get("intensity_std")
    if modality == "CT" and mean is not None and mean == mean and std is not None and std == std:
        out.append(
            hd.sr.Measurement(
                name=_code(ATTENUATION), value=float(mean), unit=_code(HOUNSFIELD), derivation=_code(MEAN)
            )
        )
        out.append(
            hd.sr.Measurement(
                name=_code(ATTENUATION), value=float(std), unit=_code(HOUNSFIELD), derivation=_code(STANDARD_DEVIATION)
            )
        )
    return out


def write_measurement_report(
    seg_path: str | os.PathLike,
    rows: list[dict],
    table: LabelTable,
    path: str | os.PathLike,
    *,
    software_version: str,
    model_sha256: str = "",
    uid_seed: str | None = None,
    verdicts: dict | None = None,
    modality: str | None = None,
) -> Path:
    """Write the TID 1500 report of ``rows`` (``medseg.reporting.volumes.structure_rows`` of the case) at ``path``.

    ``seg_path``: the case's SEG (segment ``n`` is the ``n``-th structure of ``table``, as ``medseg.io.objects.seg``
    writes it). Structures absent from the label map get no group. ``verdicts``: structure name -> ``pass``,
    ``review`` or ``fail`` (the quality verdict), written as a qualitative evaluation. ``modality``: the source
    series' (HU statistics only for CT); default: from the SOP class of the images the SEG references.
    """
    seg = pydicom.dcmread(str(seg_path))
    segment_of = {item.SegmentLabel: int(item.SegmentNumber) for item in seg.SegmentSequence}
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    modality = (modality or _source_modality(seg)).upper()
    ctx = _ReportContext(seg, source_series, modality, software_version, model_sha256, uid_seed)
    groups = []
    for row in rows:
        name = str(row["structure"])
        if name not in segment_of or not row.get("voxel_count"):
            continue
        lab = next((lab for lab in table.labels if lab.name == name), None)
        groups.append(_roi_group(ctx, row, lab, segment_of[name], (verdicts or {}).get(name)))
    context = _device_context(_uid(uid_seed, seg, "device"), software_version, model_sha256)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_code(PROCEDURES.get(modality, PROCEDURES["CT"])),
        imaging_measurements=groups,
        title=hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report"),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg],
        content=report[0],
        series_instance_uid=_uid(uid_seed, seg, "series"),
        series_number=901,
        sop_instance_uid=_uid(uid_seed, seg, "instance"),
        instance_number=1,
        manufacturer="medseg",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="medseg measurements",
    )
    with atomic_path(path) as tmp:
        sr.save_as(tmp)
    return Path(path)


@dataclass
class _ReportContext:
    """What every measurement group of one report shares: the SEG, its source series, the modality and the
    software that measured."""

    seg: pydicom.Dataset
    source_series: str
    modality: str
    software_version: str
    model_sha256: str
    uid_seed: str | None


def _roi_group(ctx: _ReportContext, row: dict, lab, segment_number: int, verdict):
    """One structure's measurement group: its finding (the label's SNOMED code, else Tissue), the segment it
    measures, its measurements and quality verdict."""
    name = str(row["structure"])
    finding = (
        hd.sr.CodedConcept(lab.snomed, "SCT", name)
        if lab is not None and lab.snomed
        else hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    )
    evaluations = []
    if verdict in QUALITY_VALUES:
        evaluations.append(hd.sr.QualitativeEvaluation(name=_code(QUALITY), value=_code(QUALITY_VALUES[verdict])))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid(ctx.uid_seed, ctx.seg, f"tracking {name}"), identifier=name
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=ctx.seg.SOPClassUID,
            sop_instance_uid=ctx.seg.SOPInstanceUID,
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(ctx.source_series),
        ),
        finding_type=finding,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name="medseg",
            version=ctx.software_version,
            parameters=[f"model sha256 {ctx.model_sha256}"] if ctx.model_sha256 else None,
        ),
        measurements=_measurements(row, ctx.modality),
        qualitative_evaluations=evaluations or None,
    )


def _device_context(uid: str, software_version: str, model_sha256: str):
    """The observation context: medseg, the device, is the observer."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uid,
        name="medseg",
        manufacturer_name="medseg",
        model_name=f"medseg {software_version}",
        serial_number=(model_sha256 or "unknown")[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device
        )
    )


def _source_modality(seg) -> str:
    """The modality of the series the SEG was made on (the SEG's own is SEG)."""
    for item in getattr(seg, "ReferencedSeriesSequence", []) or []:
        for inst in getattr(item, "ReferencedInstanceSequence", []) or []:
            uid = str(getattr(inst, "ReferencedSOPClassUID", ""))
            if uid.startswith("1.2.840.10008.5.1.4.1.1.2"):
                return "CT"
            if uid.startswith("1.2.840.10008.5.1.4.1.1.4"):
                return "MR"
    return ""
