"""``medseg dicom scan`` and ``medseg convert`` end to end, through the real command line."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from medseg.data.phantoms import (
    PHANTOM_BIRTH_DATE,
    PHANTOM_PATIENT_ID,
    PHANTOM_PATIENT_NAME,
    make_phantom,
    write_dicom_series,
)
from medseg.io.geometry import align_to
from medseg.io.readers import read_volume

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "unit" / "io"))
from test_dicom_scan import make_messy_export  # noqa: E402


def medseg(*args):
    return subprocess.run(
        [sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    big = make_phantom(41, spacing=(5.0, 5.0, 6.0))
    small = make_phantom(42, spacing=(8.0, 8.0, 10.0))
    root = make_messy_export(tmp_path_factory.mktemp("export"), big, small)
    write_dicom_series(big, root / "PAT" / "STUDY3" / "gap", seed=4, drop_slices=(5,), series_description="with gap")
    return root, big, small


def assert_no_identifiers(folder, *texts):
    for f in folder.rglob("*"):
        for ident in (PHANTOM_PATIENT_NAME, PHANTOM_PATIENT_ID, PHANTOM_BIRTH_DATE, "LEAKCHECK"):
            assert ident not in f.name
            if f.is_file():
                data = f.read_bytes()
                if f.suffix == ".gz":
                    import gzip

                    data = gzip.decompress(data)
                assert ident.encode() not in data, f"{ident} found in {f}"
    for t in texts:
        assert "LEAKCHECK" not in t and PHANTOM_BIRTH_DATE not in t


def test_scan_messy_export_in_one_go(export, tmp_path):
    root, big, small = export
    r = medseg("dicom", "scan", root, "--out", tmp_path / "inv.csv")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    series = pd.read_csv(tmp_path / "inv.csv")
    files = pd.read_csv(tmp_path / "inv_files.csv")
    assert set(series[series.segmentable].series_description) == {"abdomen venous", "low dose"}
    gap = series[series.series_description == "with gap"].iloc[0]
    assert not gap.segmentable and "missing_slices: refused" in gap.findings
    assert set(files.file) == {"DICOMDIR", "PAT/README.txt", "PAT/broken", "PAT/sr_object", "PAT/RTSTRUCT.dcm"}
    assert files.reason.notna().all()
    assert_no_identifiers(tmp_path, r.stdout, r.stderr)


def test_convert_writes_one_nifti_and_sidecar_per_image_series(export, tmp_path):
    root, big, small = export
    out = tmp_path / "nii"
    r = medseg("convert", root, "--out", out, "--no-progress")
    assert r.returncode == 1, r.stderr  # converted what it could; the gapped series was refused
    conv = pd.read_csv(out / "conversion.csv")
    done = conv[conv.status == "converted"]
    assert len(done) == 2 and set(conv[conv.status == "refused"].reason.str[:16]) == {"missing slice(s)"}
    for _, row in done.iterrows():
        img = read_volume(out / row.output)
        side = json.loads((out / row.output.replace(".nii.gz", ".json")).read_text())
        truth = big if side["header"]["SeriesDescription"] == "abdomen venous" else small
        # same points in space (slices may run the other way), same HU
        np.testing.assert_array_equal(align_to(img, truth.image).array, truth.image.array)
        assert side["modality"] == "CT" and side["findings"] == [] and side["series_key"] == row.series_key
    assert_no_identifiers(out, r.stdout, r.stderr)

    r2 = medseg(
        "convert", root, "--out", tmp_path / "fixed", "--resample-irregular", "--description", "gap", "--no-progress"
    )
    assert r2.returncode == 0, r2.stderr
    (side,) = (tmp_path / "fixed").glob("*.json")
    assert json.loads(side.read_text())["findings"][0]["action"] == "resampled"


def test_missing_folder_is_one_line(tmp_path):
    r = medseg("dicom", "scan", tmp_path / "nope", "--out", tmp_path / "inv.csv")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "nope" in r.stderr
    assert "Traceback" not in r.stderr
