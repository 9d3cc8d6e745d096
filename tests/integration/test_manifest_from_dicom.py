"""``medseg manifest from-dicom``: an export mixing series with and without structure sets, a SEG, an RTSTRUCT whose
series is missing and unrelated objects -> a manifest of exactly the paired cases, the rest listed with reasons."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest

from medseg.data.dicom_manifest import manifest_from_dicom
from medseg.data.manifest import read_manifest
from medseg.data.phantoms import (
    PHANTOM_BIRTH_DATE,
    PHANTOM_LABELS,
    PHANTOM_PATIENT_ID,
    PHANTOM_PATIENT_NAME,
    make_phantom,
    write_dicom_series,
)
from medseg.io.dicom.series import read_dicom_series
from medseg.io.objects.rtstruct import write_rtstruct
from medseg.io.objects.seg import write_dicom_seg
from medseg.io.readers import read_volume
from medseg.labels import Label, LabelTable


def _series(root, name, seed, **kw):
    case = make_phantom(seed, fov_mm=(240.0, 180.0, 136.0), spacing=(1.0, 1.0, 4.0), **kw)
    folder = write_dicom_series(case, root / name, seed=seed, series_description=f"series {name}")
    return folder, read_dicom_series(folder)


def _truth(seed, vol, **kw):
    case = make_phantom(seed, fov_mm=(240.0, 180.0, 136.0), spacing=(1.0, 1.0, 4.0), **kw)
    m = np.linalg.inv(vol.affine) @ case.labels.affine
    a = case.labels.array
    for ax in range(3):
        if m[ax, ax] < 0:
            a = np.flip(a, ax)
    return vol.with_array(np.ascontiguousarray(a))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ex = root / "EXPORT"
    # A: CT + RTSTRUCT with clinical ROI names; B: CT + SEG; C: CT alone; D: RTSTRUCT whose CT is not exported
    a, vol_a = _series(ex / PHANTOM_PATIENT_NAME.replace("^", "_"), "a", 1)
    b, vol_b = _series(ex, "b", 2, flips=(True, False, True))
    _series(ex, "c", 3)
    d, vol_d = _series(root, "d_not_exported", 4)
    truth_a, truth_b = _truth(1, vol_a), _truth(2, vol_b, flips=(True, False, True))
    clinical = LabelTable(
        "clinical", (Label(1, "Liver"), Label(2, "SPLEEN"), Label(3, "Kidney_R"), Label(4, "Lt Kidney"))
    )
    write_rtstruct(truth_a, a, clinical, ex / "RS_a.dcm")
    write_dicom_seg(truth_b, b, PHANTOM_LABELS, ex / "SEG_b.dcm", software_version="test")
    write_rtstruct(_truth(4, vol_d), d, PHANTOM_LABELS, ex / "RS_d.dcm")
    # unrelated objects: an RT plan and a text file
    plan = pydicom.dcmread(ex / "RS_a.dcm")
    plan.Modality, plan.SOPClassUID = "RTPLAN", "1.2.840.10008.5.1.4.1.1.481.5"
    plan.file_meta.MediaStorageSOPClassUID = plan.SOPClassUID
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    del plan.ROIContourSequence
    plan.save_as(ex / "RP.dcm")
    (ex / "notes.txt").write_text("export notes\n")
    return ex, truth_a, truth_b


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_manifest_pairs_exactly_the_labelled_series(export, tmp_path):
    ex, truth_a, truth_b = export
    out = tmp_path / "m" / "cases.csv"
    res = manifest_from_dicom(ex, out)
    df = pd.read_csv(out, dtype=str)
    assert len(df) == 2 and sorted(df["label_kind"]) == ["rtstruct", "seg"]
    table = LabelTable.from_yaml(res.table)
    assert table.names == ["kidney_left", "kidney_right", "liver", "spleen"]  # synonyms applied, both objects agree
    checked = read_manifest(out, require_labels=True, label_table=table)
    assert len(checked) == 2
    for _, row in df.iterrows():
        truth = truth_a if row["label_kind"] == "rtstruct" else truth_b
        lab, img = read_volume(out.parent / row["label"]), read_volume(out.parent / row["image"])
        assert np.allclose(lab.affine, truth.affine, atol=1e-3) and np.allclose(img.affine, truth.affine, atol=1e-3)
        for t in PHANTOM_LABELS.labels:
            got = lab.array == table.by_name(t.name).index
            assert _dice(got, truth.array == t.index) >= 0.98, (row["label_kind"], t.name)
        assert row["case_id"] == row["series_key"] and row["case_id"].startswith("se")
    un = pd.read_csv(res.unpaired, dtype=str, keep_default_na=False)
    reasons = dict(zip(un["kind"], un["reason"], strict=False))
    assert set(un["kind"]) == {"rtstruct", "image_series", "object", "file"}
    assert "not in the export" in reasons["rtstruct"]
    assert "no RTSTRUCT or SEG" in reasons["image_series"] and (un["kind"] == "image_series").sum() == 1
    assert (un["modality"] == "RTPLAN").sum() == 1
    # nothing identifying in names, CSVs, the table or the findings
    written = [p for p in out.parent.rglob("*")]
    for p in written:
        assert PHANTOM_PATIENT_NAME.split("^")[0] not in p.name
        if p.is_file() and p.suffix in (".csv", ".yaml", ".json"):
            text = p.read_text()
            for ident in (PHANTOM_PATIENT_NAME, PHANTOM_PATIENT_ID, PHANTOM_BIRTH_DATE, "LEAKCHECK"):
                assert ident not in text, (p.name, ident)

    # the conversion is cached: a second run rewrites nothing
    label_files = sorted(out.parent.rglob("*.label.nii.gz"))
    mtimes = [p.stat().st_mtime_ns for p in label_files]
    manifest_from_dicom(ex, out)
    assert [p.stat().st_mtime_ns for p in label_files] == mtimes


def test_cli_from_dicom(export, tmp_path):
    ex, *_ = export
    out = tmp_path / "cli.csv"
    r = subprocess.run(
        [sys.executable, "-m", "medseg", "manifest", "from-dicom", str(ex), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "2 cases" in r.stdout and "LEAKCHECK" not in r.stdout + r.stderr
    assert len(pd.read_csv(out)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(ex / "notes.txt", empty / "notes.txt")
    r = subprocess.run(
        [sys.executable, "-m", "medseg", "manifest", "from-dicom", str(empty), "--out", str(tmp_path / "x.csv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_convert_label_objects_for_medseg_convert(export, tmp_path):
    from medseg.data.dicom_manifest import convert_label_objects

    ex, truth_a, truth_b = export
    rows = convert_label_objects(ex, tmp_path)
    assert sorted(r["status"] for r in rows) == ["converted", "converted", "skipped"]
    assert "not in the export" in next(r["reason"] for r in rows if r["status"] == "skipped")
    for r in (r for r in rows if r["status"] == "converted"):
        lab = read_volume(tmp_path / r["output"])
        table = LabelTable.from_yaml(tmp_path / r["output"].replace(".label.nii.gz", ".labels.yaml"))
        truth = truth_a if lab.shape == truth_a.shape and np.allclose(lab.affine, truth_a.affine) else truth_b
        assert np.allclose(lab.affine, truth.affine, atol=1e-3)
        for t in PHANTOM_LABELS.labels:
            assert _dice(lab.array == table.by_name(t.name).index, truth.array == t.index) >= 0.98
        assert (tmp_path / r["output"].replace(".label.nii.gz", ".findings.json")).is_file()


def test_medseg_convert_writes_label_maps_beside_their_series(export, tmp_path):
    from medseg.cli import main

    ex, truth_a, _ = export
    assert main(["convert", str(ex), "--out", str(tmp_path / "nii"), "--no-progress"]) == 0
    conv = pd.read_csv(tmp_path / "nii" / "label_conversion.csv")
    assert sorted(conv["status"]) == ["converted", "converted", "skipped"]
    images = {p.name for p in (tmp_path / "nii").glob("*.nii.gz") if ".label." not in p.name}
    for out in conv.loc[conv.status == "converted", "output"]:
        assert out.split(".")[0] + ".nii.gz" in images  # beside the image of the series it references
        lab, img = read_volume(tmp_path / "nii" / out), read_volume(tmp_path / "nii" / (out.split(".")[0] + ".nii.gz"))
        assert lab.shape == img.shape and np.allclose(lab.affine, img.affine, atol=1e-4)


@pytest.mark.slow
def test_plan_and_train_read_the_manifest(export, tmp_path):
    from medseg import api

    ex, *_ = export
    res = manifest_from_dicom(ex, tmp_path / "cases.csv")
    config, _ = api.plan(
        manifest=res.manifest, out=tmp_path / "plan.yaml", overrides=["training.patch_size=[32,32,16]"]
    )
    assert LabelTable.from_yaml(res.table).names == ["kidney_left", "kidney_right", "liver", "spleen"]
    result = api.train(
        config=config, manifest=res.manifest, out=tmp_path / "run", epochs=1, device="cpu", progress=False
    )
    assert (tmp_path / "run" / "best.pt").is_file(), result
