"""``medseg predict --rtstruct`` and the pipeline option: an RT Structure Set per DICOM input, through the one case
writer."""

import json

import numpy as np
from helpers import label_coded, predict_argv

from medseg.cli import main
from medseg.data.phantoms import PHANTOM_LABELS, PhantomCase, make_phantom, write_dicom_series
from medseg.io.objects.rtstruct import read_rtstruct
from medseg.io.readers import read_volume


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_predict_rtstruct_matches_the_label_map(oracle_checkpoint, tmp_path):
    ph = make_phantom(21, case_id="rt", spacing=(1.5, 1.5, 3.0), noise_hu=0, flips=(True, False, True))
    series = write_dicom_series(
        PhantomCase(ph.case_id, label_coded(ph), ph.labels, ph.voxel_counts), tmp_path / "in" / "rt", seed=3
    )
    out = tmp_path / "out"
    assert main(predict_argv(oracle_checkpoint, series, out, "--rtstruct")) == 0
    side = json.loads((out / "rt.json").read_text())
    assert side["outputs"]["rtstruct"] == "rt.rtstruct.dcm"
    labels = read_volume(out / "rt.nii.gz")
    back = read_rtstruct(out / "rt.rtstruct.dcm", series, table=PHANTOM_LABELS).labels
    assert back.shape == labels.shape and np.allclose(back.affine, labels.affine, atol=1e-3)
    for lab in PHANTOM_LABELS.labels:
        assert _dice(back.array == lab.index, labels.array == lab.index) >= 0.98, lab.name


def test_without_the_option_no_rtstruct_is_written(oracle_checkpoint, tmp_path):
    ph = make_phantom(22, case_id="plain", spacing=(3.0, 3.0, 5.0), noise_hu=0)
    series = write_dicom_series(
        PhantomCase(ph.case_id, label_coded(ph), ph.labels, ph.voxel_counts), tmp_path / "in" / "plain", seed=4
    )
    assert main(predict_argv(oracle_checkpoint, series, tmp_path / "o")) == 0
    assert not list((tmp_path / "o").glob("*.rtstruct.dcm"))
    assert "rtstruct" not in json.loads((tmp_path / "o" / "plain.json").read_text())["outputs"]
