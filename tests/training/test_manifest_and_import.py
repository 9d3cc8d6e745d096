import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg.dataset_import import manifest_from_folder
from medseg.errors import InputError
from medseg.labels import LabelTable
from medseg.manifest import image_columns, read_manifest
from medseg.phantoms import PHANTOM_LABELS


def _nii(path, shape=(8, 8, 8), value=0, affine=None):
    data = np.full(shape, value, dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_all_manifest_problems_are_reported_together_with_case_ids(tmp_path):
    _nii(tmp_path / "a.nii.gz"), _nii(tmp_path / "a_lab.nii.gz", value=1)
    _nii(tmp_path / "b.nii.gz"), _nii(tmp_path / "b_lab.nii.gz", shape=(8, 8, 9))
    _nii(tmp_path / "c.nii.gz"), _nii(tmp_path / "c_lab.nii.gz", value=7)
    _nii(tmp_path / "d.nii.gz"), _nii(tmp_path / "d_lab.nii.gz", affine=np.diag([2.0, 1, 1, 1]))
    pd.DataFrame([
        {"case_id": "ok", "image": "a.nii.gz", "label": "a_lab.nii.gz"},
        {"case_id": "shape", "image": "b.nii.gz", "label": "b_lab.nii.gz"},
        {"case_id": "value", "image": "c.nii.gz", "label": "c_lab.nii.gz"},
        {"case_id": "affine", "image": "d.nii.gz", "label": "d_lab.nii.gz"},
        {"case_id": "missing", "image": "nope.nii.gz", "label": "a_lab.nii.gz"},
    ]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputError) as err:
        read_manifest(tmp_path / "m.csv", require_labels=True, label_table=PHANTOM_LABELS)
    msg = str(err.value)
    assert "5 problem(s)" in msg
    assert "names 2 (spleen), 3 (kidney_right), 4 (kidney_left) that no label map contains" in msg
    assert "missing: image nope.nii.gz not found" in msg
    assert "shape: label shape (8, 8, 9)" in msg
    assert "value: label values [7]" in msg
    assert "affine: label affine differs" in msg
    assert "ok:" not in msg


def test_nnunet_v2_folder_becomes_a_multichannel_manifest_with_folds(tmp_path):
    root = tmp_path / "Dataset001_Toy"
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (root / d).mkdir(parents=True)
    for k, case in enumerate(("toy_001", "toy_002", "toy_003", "toy_004")):
        _nii(root / "imagesTr" / f"{case}_0000.nii.gz"), _nii(root / "imagesTr" / f"{case}_0001.nii.gz")
        _nii(root / "labelsTr" / f"{case}.nii.gz", value=1 + k % 2)
    _nii(root / "imagesTs" / "toy_101_0000.nii.gz"), _nii(root / "imagesTs" / "toy_101_0001.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "Left Thing": 1, "right-thing": 2},
        "numTraining": 4, "file_ending": ".nii.gz", "name": "Toy"}))
    manifest, table_path = manifest_from_folder(root, tmp_path / "out" / "toy.csv", folds=2)
    table = LabelTable.from_yaml(table_path)
    assert [(lab.index, lab.name) for lab in table.labels] == [(1, "left_thing"), (2, "right_thing")]
    df = read_manifest(manifest, label_table=table)
    assert image_columns(df) == ["image", "image_1"]
    assert list(df["split"]) == ["train"] * 4 + ["test"]
    assert sorted(df.loc[df.split == "train", "fold"]) == ["0", "0", "1", "1"]
    assert df.loc[df.case_id == "toy_002", "image_1"].item().endswith("toy_002_0001.nii.gz")
    assert not pd.read_csv(manifest)["image"].str.startswith("/").any()  # relative to the manifest


def test_decathlon_dataset_json_is_read(tmp_path):
    root = tmp_path / "Task09_Spleen"
    (root / "imagesTr").mkdir(parents=True), (root / "labelsTr").mkdir()
    _nii(root / "imagesTr" / "spleen_2.nii.gz"), _nii(root / "labelsTr" / "spleen_2.nii.gz", value=1)
    (root / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "training": [{"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}], "test": []}))
    manifest, table_path = manifest_from_folder(root, tmp_path / "spleen.csv")
    df = read_manifest(manifest, require_labels=True, label_table=LabelTable.from_yaml(table_path))
    assert list(df["case_id"]) == ["spleen_2"]


def test_missing_dataset_json_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no dataset.json"):
        manifest_from_folder(tmp_path, tmp_path / "m.csv")
