"""Label tables come from the data (or the user), never from a default."""

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from medseg.config import config_from_dict, load_config
from medseg.data.dataset_import import manifest_from_folder
from medseg.data.label_sources import read_itksnap, read_labels_csv, read_seg_nrrd_names, table_for_manifest
from medseg.data.manifest import read_manifest
from medseg.errors import ConfigError, InputError
from medseg.training.planning import plan


def _brainish(root, values_per_case=((1, 2), (1, 2), (1, 2)), name="manifest.csv"):
    """Tiny 'MR' cases whose label maps hold the given values (no table anywhere)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, values in enumerate(values_per_case):
        img = rng.normal(100, 10, (24, 24, 16)).astype(np.float32)
        lab = np.zeros((24, 24, 16), np.uint8)
        for k, v in enumerate(values):
            lab[4 + 8 * k : 10 + 8 * k, 6:18, 4:12] = v
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(img, aff), str(root / f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(root / f"lab{i}.nii.gz"))
        rows.append(
            {
                "case_id": f"case{i}",
                "image": f"img{i}.nii.gz",
                "label": f"lab{i}.nii.gz",
                "split": "val" if i == 2 else "train",
            }
        )
    pd.DataFrame(rows).to_csv(root / name, index=False)
    return root / name


def _dataset_json(root, names: dict) -> None:
    """nnU-Net's dataset.json for one T1 channel and three training cases; ``names``: label name -> value."""
    dj = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **names},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dj))


def test_config_has_no_default_label_table_and_train_refuses_without_one(tmp_path):
    cfg = config_from_dict({})
    assert cfg.labels is None
    with pytest.raises(ConfigError, match="no label table.*medseg plan"):
        cfg.label_table()
    manifest = _brainish(tmp_path / "d")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"training": {"epochs": 1}}))
    from medseg.cli import main

    assert (
        main(
            ["train", "--config", str(tmp_path / "c.yaml"), "--manifest", str(manifest), "--out", str(tmp_path / "run")]
        )
        == 2
    )
    assert not (tmp_path / "run" / "best.pt").exists()


def test_without_any_table_the_values_are_named_label_n_with_a_warning(tmp_path, caplog):
    manifest = _brainish(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        out, fp = plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2)
    table = load_config(out).label_table()
    assert [(lab.index, lab.name) for lab in table.labels] == [(1, "label_1"), (2, "label_2")]
    assert "no label table found" in caplog.text and "--labels" in caplog.text
    assert "liver" not in out.read_text() and "spleen" not in out.read_text()
    assert json.loads(out.with_name("plan.fingerprint.json").read_text())["label_table_source"].startswith(
        "label values"
    )


def test_the_table_from_folder_wrote_is_picked_up(tmp_path):
    root = tmp_path / "Dataset002_Brain"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    src = _brainish(tmp_path / "raw")
    for i in range(3):
        (root / "imagesTr" / f"b_{i:03d}_0000.nii.gz").write_bytes((src.parent / f"img{i}.nii.gz").read_bytes())
        (root / "labelsTr" / f"b_{i:03d}.nii.gz").write_bytes((src.parent / f"lab{i}.nii.gz").read_bytes())
    _dataset_json(root, {"Grey Matter": 1, "white matter": 2})
    manifest, table_path = manifest_from_folder(root, tmp_path / "m" / "brain.csv")
    out, fp = plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2)
    assert fp["label_table_source"] == str(table_path)
    assert load_config(out).label_table().names == ["grey_matter", "white_matter"]
    # The same data set's dataset.json is found from the label maps' folder when the from-folder table is gone.
    table_path.unlink()
    found = table_for_manifest(manifest, read_manifest(manifest))
    assert found.source.endswith("dataset.json") and found.table.names == ["grey_matter", "white_matter"]


def test_a_folder_with_unlabelled_test_images_plans_and_reads_for_training(tmp_path):
    """imagesTs/ without labels (nnU-Net's layout) is predicted, not trained on: plan and train take the manifest."""
    root = tmp_path / "Dataset003_Brain"
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    src = _brainish(tmp_path / "raw", values_per_case=((1, 2),) * 5)
    for i in range(5):
        split = "Tr" if i < 3 else "Ts"
        (root / f"images{split}" / f"b_{i:03d}_0000.nii.gz").write_bytes((src.parent / f"img{i}.nii.gz").read_bytes())
        if i != 4:  # b_003 has a test label (labelsTs/, when a set has them), b_004 none
            (root / f"labels{split}" / f"b_{i:03d}.nii.gz").write_bytes((src.parent / f"lab{i}.nii.gz").read_bytes())
    _dataset_json(root, {"gm": 1, "wm": 2})
    manifest, _ = manifest_from_folder(root, tmp_path / "m" / "brain.csv")
    written = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("case_id")
    assert list(written["split"]) == ["train"] * 3 + ["test"] * 2
    assert written.loc["b_003", "label"].endswith("labelsTs/b_003.nii.gz") and written.loc["b_004", "label"] == ""
    out, fp = plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2)
    assert fp["n_cases"] == 3  # the training cases
    table = load_config(out).label_table()
    df = read_manifest(manifest, require_labels=True, label_table=table)  # what medseg train reads first
    assert df.set_index("case_id").loc["b_004", "label"] == ""
    # a training case without its label map is still refused, by name
    (root / "labelsTr" / "b_001.nii.gz").unlink()
    manifest, _ = manifest_from_folder(root, tmp_path / "m2" / "brain.csv")
    with pytest.raises(InputError, match="b_001: label .*not found"):
        read_manifest(manifest, require_labels=True, label_table=table)
    written = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    written.loc[written.case_id == "b_001", "label"] = ""
    written.to_csv(manifest, index=False)
    with pytest.raises(InputError, match="b_001: empty label"):
        read_manifest(manifest, require_labels=True)


def test_a_table_that_disagrees_with_the_label_values_fails_before_training_with_case_ids(tmp_path):
    manifest = _brainish(tmp_path / "d", values_per_case=((1, 2), (1, 3), (1, 2)))
    (tmp_path / "labels.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "brain",
                "labels": [
                    {"index": 1, "name": "grey_matter"},
                    {"index": 2, "name": "white_matter"},
                    {"index": 4, "name": "csf"},
                ],
            }
        )
    )
    with pytest.raises(InputError) as err:
        plan(manifest, tmp_path / "plan.yaml", labels=tmp_path / "labels.yaml", min_spacing=2.0)
    msg = str(err.value)
    assert "case1: label values [3] are not in label table 'brain'" in msg
    assert "names 4 (csf) that no label map contains" in msg
    assert not (tmp_path / "plan.yaml").exists()
    # Training with a config whose table disagrees stops before the first epoch, naming the case.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"labels": str(tmp_path / "labels.yaml"), "training": {"epochs": 1}}))
    from medseg import api

    with pytest.raises(InputError, match="case1: label values"):
        api.train(config=cfg, manifest=manifest, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_tables_beside_the_manifest_in_the_formats_users_keep(tmp_path):
    manifest = _brainish(tmp_path / "d")
    df = read_manifest(manifest)
    (tmp_path / "d" / "labels.csv").write_text("value,name\n0,background\n1,Grey matter\n2,White matter\n")
    assert table_for_manifest(manifest, df).table.names == ["grey_matter", "white_matter"]
    (tmp_path / "d" / "labels.csv").unlink()
    (tmp_path / "d" / "brain_labels.txt").write_text(
        '# ITK-SNAP Label Description File\n0 0 0 0 0 0 0 "Clear Label"\n1 255 0 0 1 1 1 "Grey matter"\n'
        '2 0 255 0 1 1 1 "White matter"\n'
    )
    found = table_for_manifest(manifest, df)
    assert found.table.names == ["grey_matter", "white_matter"] and found.table.labels[0].color == (255, 0, 0)
    (tmp_path / "d" / "brain_labels.txt").unlink()
    (tmp_path / "d" / "brain.seg.nrrd").write_bytes(
        b"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
        b"Segment0_Name:=Grey matter\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n"
        b"Segment1_Name:=White matter\nSegment1_LabelValue:=2\nSegment1_Layer:=0\n\n" + bytes(8)
    )
    assert table_for_manifest(manifest, df).table.names == ["grey_matter", "white_matter"]
    # An explicit table wins over everything beside the manifest.
    (tmp_path / "t.csv").write_text("index,structure\n1,gm\n2,wm\n")
    assert table_for_manifest(manifest, df, explicit=tmp_path / "t.csv").table.names == ["gm", "wm"]


def test_table_readers_reject_what_they_cannot_read(tmp_path):
    (tmp_path / "x.txt").write_text("this is not a label file\n")
    assert read_itksnap(tmp_path / "x.txt") is None
    (tmp_path / "l.csv").write_text("a,b\n1,x\n")
    with pytest.raises(InputError, match="index column"):
        read_labels_csv(tmp_path / "l.csv")
    (tmp_path / "s.seg.nrrd").write_bytes(b"NRRD0004\nSegment0_Name:=A\nSegment0_LabelValue:=1\nSegment0_Layer:=1\n\n")
    with pytest.raises(InputError, match="layer 1"):
        read_seg_nrrd_names(tmp_path / "s.seg.nrrd")


@pytest.mark.slow
def test_a_manifest_without_a_table_trains_with_label_n_names(tmp_path, caplog):
    from medseg import api

    manifest = _brainish(tmp_path / "d")
    out, _ = plan(
        manifest,
        tmp_path / "plan.yaml",
        min_spacing=4.0,
        memory_gb=0.1,
        overrides=[
            "training.epochs=1",
            "training.patch_size=[16,16,16]",
            "inference.roi_size=[16,16,16]",
            "model.kwargs={channels: [4, 8], strides: [2], num_res_units: 0}",
            "training.amp=off",
        ],
    )
    result = api.train(config=out, manifest=manifest, out=tmp_path / "run", progress=False)
    assert set(result.per_structure_dice) == {"label_1", "label_2"}
    cols = pd.read_csv(tmp_path / "run" / "metrics.csv").columns
    assert {"val_dice_label_1", "val_dice_label_2"} <= set(cols) and not any("liver" in c for c in cols)
    assert "not the data set's" not in caplog.text
    # the same config on a data set that carries its own table: training says whose names the outputs will carry
    (tmp_path / "d" / "labels.csv").write_text("index,name\n1,grey matter\n2,white matter\n")
    with caplog.at_level(logging.WARNING):
        api.train(config=out, manifest=manifest, out=tmp_path / "run2", progress=False)
    assert (
        "the config's label table (label_1, label_2) is not the data set's (grey_matter, white_matter, from"
        in caplog.text
    )


def test_plan_with_a_model_preset_takes_its_architecture_and_recipe(tmp_path):
    from medseg.models.presets import load_model_preset

    manifest = _brainish(tmp_path / "d")
    out, _ = plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2, model="deeplabv3_small")
    cfg = load_config(out)
    preset = load_model_preset("deeplabv3_small")
    model = preset.get("model", preset)
    assert cfg.model.name == model["name"] == "deeplabv3" and cfg.model.kwargs == model["kwargs"]
    recipe = dict(preset.get("training") or {})
    aug = recipe.pop("augmentation", {})
    assert aug  # the preset's augmentation, merged key by key with what the planner adds (mirroring axes)
    for key, value in recipe.items():
        assert getattr(cfg.training, key) == value
    for key, value in aug.items():
        assert getattr(cfg.training.augmentation, key) == value
    assert cfg.training.augmentation.flip_axes == [0, 1, 2]
    base = tmp_path / "base.yaml"  # a base config's own augmentation key wins, the preset's others stay
    base.write_text("training: {augmentation: {affine_prob: 0.9}}\n")
    out, _ = plan(
        manifest, tmp_path / "plan2.yaml", base_config=base, min_spacing=2.0, memory_gb=0.2, model="deeplabv3_small"
    )
    got = load_config(out).training.augmentation
    assert got.affine_prob == 0.9 and got.rotate_deg == aug["rotate_deg"] and got.scale == aug["scale"]


def test_plan_mirrors_only_when_no_structure_has_a_side(tmp_path):
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.training.planning import has_sides

    assert has_sides(PHANTOM_LABELS)  # kidney_right / kidney_left
    manifest = _brainish(tmp_path / "d")
    out, _ = plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2)
    assert load_config(out).training.augmentation.flip_axes == [0, 1, 2]
    assert load_config(out).inference.tta_flips == [0, 1, 2]  # predicts mirrored as it trained
    (tmp_path / "d" / "labels.csv").write_text("index,name\n1,Lt Hippocampus\n2,Rt Hippocampus\n")
    out, _ = plan(manifest, tmp_path / "plan2.yaml", min_spacing=2.0, memory_gb=0.2)
    assert load_config(out).training.augmentation.flip_axes == []
    assert load_config(out).inference.tta_flips == []  # no L-R mirroring at test time either


def test_plan_sizes_patches_for_the_network_the_overrides_ask_for(tmp_path):
    """A deeper U-Net asked for on the command line gets patches its strides divide (it used to fail in training)."""
    manifest = _brainish(tmp_path / "d")
    deep = "model.kwargs={channels: [4, 8, 8, 8, 8], strides: [2, 2, 2, 2], num_res_units: 1}"
    out, _ = plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2, overrides=[deep])
    cfg = load_config(out)
    assert cfg.model.kwargs["strides"] == [2, 2, 2, 2]
    assert all(p % 16 == 0 for p in cfg.training.patch_size) and cfg.inference.roi_size == cfg.training.patch_size
    shallow, _ = plan(manifest, tmp_path / "plan8.yaml", min_spacing=2.0, memory_gb=0.2)
    assert load_config(shallow).training.patch_size == [24, 24, 16]  # the default depth's multiples of 8
    assert cfg.training.patch_size == [32, 32, 16]


def test_the_pipeline_trains_with_the_data_sets_table_not_the_recipes(tmp_path, caplog):
    """train_and_evaluate's recipe (phantom_demo) names abdomen_phantom; brain data must not come out as 'liver'."""
    from medseg.runner.training_stages import data_label_table

    manifest = _brainish(tmp_path / "d", values_per_case=((1, 2),) * 3)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"labels": {"name": "abdomen", "labels": [{"index": 1, "name": "liver"}, {"index": 2, "name": "spleen"}]}}
        )
    )
    # no table with the data: the recipe's (checked against the label values before training, as medseg train does)
    assert data_label_table(manifest, str(recipe), []).names == ["liver", "spleen"]
    # the data set's table wins, said in a warning
    (tmp_path / "d" / "labels.csv").write_text("index,name\n1,grey matter\n2,white matter\n")
    with caplog.at_level(logging.WARNING):
        assert data_label_table(manifest, str(recipe), []).names == ["grey_matter", "white_matter"]
    assert "liver, spleen) is not used" in caplog.text and "labels.csv" in caplog.text
    # a recipe without a table and data without one: the values, named label_N with plan's warning
    (tmp_path / "d" / "labels.csv").unlink()
    recipe.write_text(yaml.safe_dump({"training": {"epochs": 1}}))
    assert data_label_table(manifest, str(recipe), []).names == ["label_1", "label_2"]


def test_nan_voxels_in_a_training_image_are_a_one_line_error_not_a_nan_model(tmp_path, capsys):
    from medseg.cli import main

    manifest = _brainish(tmp_path / "d")
    out, _ = plan(manifest, tmp_path / "plan.yaml", min_spacing=4.0, memory_gb=0.1, overrides=["training.epochs=1"])
    img = nib.load(tmp_path / "d" / "img1.nii.gz")
    data = np.asanyarray(img.dataobj).copy()
    data[3, 4, 5], data[6, 7, 8] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(tmp_path / "d" / "img1.nii.gz"))
    with pytest.raises(InputError, match="case1: 2 NaN/Inf voxel"):  # the planner: statistics would be NaN
        plan(manifest, tmp_path / "plan2.yaml", min_spacing=4.0, memory_gb=0.1)
    capsys.readouterr()
    code = main(
        ["train", "--config", str(out), "--manifest", str(manifest), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "img1.nii.gz" in err[0] and "2 NaN/Inf voxel(s)" in err[0]
    assert not (tmp_path / "run" / "best.pt").exists()


def test_sparse_label_values_are_refused_before_the_network_is_sized_by_them(tmp_path):
    """Values 1 and 200 (FreeSurfer-style numbering) would give the network 201 outputs: a one-line error, not an
    OOM."""
    manifest = _brainish(tmp_path / "d", values_per_case=((1, 200),) * 3)
    with pytest.raises(
        InputError,
        match=r"numbers 2 structures up to 200: the network would need 201 outputs.*renumber the label maps 1..2",
    ):
        plan(manifest, tmp_path / "plan.yaml", min_spacing=2.0, memory_gb=0.2)
    small_gap = _brainish(tmp_path / "e", values_per_case=((1, 3),) * 3)  # a gap is fine: 4 outputs for 2 structures
    out, _ = plan(small_gap, tmp_path / "plan2.yaml", min_spacing=2.0, memory_gb=0.2)
    assert load_config(out).label_table().num_classes == 4
