import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg.data.dataset_import import manifest_from_folder
from medseg.data.manifest import image_columns, read_manifest
from medseg.data.phantoms import PHANTOM_LABELS
from medseg.errors import InputError
from medseg.labels import LabelTable


def _nii(path, shape=(8, 8, 8), value=0, affine=None):
    data = np.full(shape, value, dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_all_manifest_problems_are_reported_together_with_case_ids(tmp_path):
    _nii(tmp_path / "a.nii.gz"), _nii(tmp_path / "a_lab.nii.gz", value=1)
    _nii(tmp_path / "b.nii.gz"), _nii(tmp_path / "b_lab.nii.gz", shape=(8, 8, 9))
    _nii(tmp_path / "c.nii.gz"), _nii(tmp_path / "c_lab.nii.gz", value=7)
    _nii(tmp_path / "d.nii.gz"), _nii(tmp_path / "d_lab.nii.gz", affine=np.diag([2.0, 1, 1, 1]))
    pd.DataFrame(
        [
            {"case_id": "ok", "image": "a.nii.gz", "label": "a_lab.nii.gz"},
            {"case_id": "shape", "image": "b.nii.gz", "label": "b_lab.nii.gz"},
            {"case_id": "value", "image": "c.nii.gz", "label": "c_lab.nii.gz"},
            {"case_id": "affine", "image": "d.nii.gz", "label": "d_lab.nii.gz"},
            {"case_id": "missing", "image": "nope.nii.gz", "label": "a_lab.nii.gz"},
        ]
    ).to_csv(tmp_path / "m.csv", index=False)
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
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T2"},
                "labels": {"background": 0, "Left Thing": 1, "right-thing": 2},
                "numTraining": 4,
                "file_ending": ".nii.gz",
                "name": "Toy",
            }
        )
    )
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
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Spleen",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "spleen"},
                "training": [{"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}],
                "test": [],
            }
        )
    )
    manifest, table_path = manifest_from_folder(root, tmp_path / "spleen.csv")
    df = read_manifest(manifest, require_labels=True, label_table=LabelTable.from_yaml(table_path))
    assert list(df["case_id"]) == ["spleen_2"]


def test_missing_dataset_json_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no dataset.json"):
        manifest_from_folder(tmp_path, tmp_path / "m.csv")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_training_reads_mha_and_nrrd_as_it_reads_nifti(tmp_path, suffix):
    """Grand-challenge sets come as .mha, Slicer's as .nrrd: the planner, the manifest check and the training
    pipeline read them to the same arrays and RAS geometry as the NIfTI of the same data (oblique, flipped)."""
    import SimpleITK as sitk
    import torch

    from medseg.config import load_config
    from medseg.data.phantoms import make_phantom
    from medseg.io.readers import write_label_map, write_volume
    from medseg.io.volume import LPS_TO_RAS
    from medseg.training.planning import fingerprint, plan
    from medseg.transforms.presets import deterministic_transforms

    def write_itk(vol, path):
        lps = np.linalg.inv(LPS_TO_RAS) @ vol.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array.transpose(2, 1, 0)))
        (
            img.SetSpacing(tuple(spacing)),
            img.SetOrigin(tuple(lps[:3, 3])),
            img.SetDirection(tuple((lps[:3, :3] / spacing).ravel())),
        )
        sitk.WriteImage(img, str(path))

    rows = {"nii": [], "itk": []}
    for i in range(3):
        ph = make_phantom(
            900 + i, spacing=(3.0, 3.0, 5.0), flips=(True, False, i == 1), oblique_deg=12.0 * i, fov_mm=(200, 160, 120)
        )
        write_volume(ph.image, tmp_path / f"img{i}.nii.gz")
        write_label_map(ph.labels, tmp_path / f"lab{i}.nii.gz")
        write_itk(ph.image, tmp_path / f"img{i}{suffix}")
        write_itk(ph.labels, tmp_path / f"lab{i}{suffix}")
        split = "val" if i == 2 else "train"
        rows["nii"].append({"case_id": f"c{i}", "image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "split": split})
        rows["itk"].append({"case_id": f"c{i}", "image": f"img{i}{suffix}", "label": f"lab{i}{suffix}", "split": split})
    for kind, r in rows.items():
        pd.DataFrame(r).to_csv(tmp_path / f"{kind}.csv", index=False)
    out, fp = plan(tmp_path / "itk.csv", tmp_path / "plan.yaml", min_spacing=3.0, memory_gb=0.1)
    df_nii, df_itk = (
        read_manifest(tmp_path / f"{k}.csv", require_labels=True, label_table=load_config(out).label_table())
        for k in ("nii", "itk")
    )
    ref = fingerprint(df_nii, image_columns(df_nii))  # NIfTI stores its affine in float32: equal to 1e-6
    planned = {"label_table_source", "spacing_planned", "spacing_reason", "resolution", "n_channels", "n_classes"}
    assert set(ref) | planned == set(fp) and ref["modality"] == fp["modality"] == "CT"
    for key in ("spacing_median", "spacing_p10", "shape_median"):
        np.testing.assert_allclose(fp[key], ref[key], rtol=1e-6)
    assert fp["foreground"] == pytest.approx(ref["foreground"], rel=1e-6)
    det = deterministic_transforms(load_config(out).preprocessing)
    for a, b in zip(df_nii.itertuples(), df_itk.itertuples(), strict=False):
        x, y = det({"image": a.image, "label": a.label}), det({"image": b.image, "label": b.label})
        for key in ("image", "label"):  # after RAS reorientation, resampling to 3 mm and the body crop: the same voxels
            assert y[key].shape == x[key].shape
            torch.testing.assert_close(y[key], x[key], rtol=0, atol=1e-3)
        assert set(torch.unique(x["label"]).tolist()) >= {0.0, 1.0, 2.0, 3.0}  # the structures are there
