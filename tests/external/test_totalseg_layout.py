"""TotalSegmentator's layout (its task's nnU-Net parts under one results folder) as one medseg model.

The weights cannot be downloaded here, so the parts are small nnU-Net models in exactly TotalSegmentator's
layout: ``DatasetNNN_*/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/{plans,dataset}.json`` and
``fold_0/checkpoint_final.pth`` (nnU-Net's PlainConvUNet at 1.5 mm, seeded weights, other labels per part).
The end-to-end test runs nnU-Net's own predictor on each part and does TotalSegmentator's steps (reorient,
resample, merge, back) itself with nibabel and scipy, and compares the label maps.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medseg.errors import CheckpointError

#: Part dataset ids of TotalSegmentator's ``total`` task and the label names each part gets here (other
#: counts per part, so that the offsets of the combined numbering are exercised).
PARTS = {
    291: ("Dataset291_TotalSegmentator_part1_organs_1559subj", ["spleen", "kidney_right", "liver"]),
    292: ("Dataset292_TotalSegmentator_part2_vertebrae_1532subj", ["vertebrae_L1", "vertebrae_L2"]),
    293: ("Dataset293_TotalSegmentator_part3_cardiac_1559subj", ["heart", "aorta", "pulmonary_vein", "trachea"]),
    294: ("Dataset294_TotalSegmentator_part4_muscles_1559subj", ["psoas_left"]),
    295: ("Dataset295_TotalSegmentator_part5_ribs_1559subj", ["rib_left_1", "rib_right_1"]),
}
FAST = (297, "Dataset297_TotalSegmentator_total_3mm_1559subj", ["spleen", "liver", "heart"])
from nnunet_plans import PLAIN_ARCH as ARCH  # noqa: E402  (the same tiny PlainConvUNet)
from nnunet_plans import plans_json, reference_predictor  # noqa: E402


def plans(spacing: float, patch=(32, 32, 32)) -> dict:
    return plans_json(
        ARCH,
        spacing=spacing,
        patch=patch,
        median_shape=(64, 64, 64),
        data_identifier="nnUNetPlans_3d_fullres",
        dataset_name="DatasetX",
        foreground={"mean": 40.0, "median": 40.0, "min": -300.0, "percentile_00_5": -200.0, "std": 80.0},
        top={
            "original_median_shape_after_transp": [64, 64, 64],
            "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
        },
        resampling_fn_seg_kwargs={"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    )


def make_part(
    root: Path,
    dataset: str,
    names,
    *,
    seed: int,
    spacing=1.5,
    trainer="nnUNetTrainerNoMirroring",
    weights: bool = True,
    arch_plans=None,
) -> Path:
    """One part in TotalSegmentator's layout; seeded random weights of the planned network (``weights``)."""
    import torch

    folder = root / dataset / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
    (folder / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"})
    )
    p = arch_plans or plans(spacing)
    (folder / "plans.json").write_text(json.dumps(p))
    state = {"w": torch.zeros(1)}
    if weights:
        from medseg.adapters.nnunet.folder import architecture, build_network

        cls, kw = architecture(p["configurations"]["3d_fullres"])
        torch.manual_seed(seed)
        net = build_network(cls, kw, 1, len(labels))
        with torch.no_grad():  # a random network: spread the classes' scores so that several classes win somewhere
            last = net.decoder.seg_layers[-1]
            last.weight.mul_(4.0)
            last.bias.copy_(torch.linspace(-1.0, 1.0, len(labels)))
        state = net.state_dict()
    torch.save(
        {
            "network_weights": state,
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)]},
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "dataset_json": {}},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": None,
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


def make_total(root: Path, *, weights=True, skip=()) -> Path:
    results = root / ".totalsegmentator" / "nnunet" / "results"
    for i, (ds, names) in PARTS.items():
        if i not in skip:
            make_part(results, ds, names, seed=i, weights=weights)
    return root / ".totalsegmentator"


# ------------------------------------------------------------------------------------ fast, numpy only
def test_merge_later_parts_overwrite_earlier_ones():
    from medseg.adapters.totalseg import merge

    a = np.array([[0, 1, 2, 2]])  # part 1: labels 1..2 -> 1..2
    b = np.array([[3, 0, 1, 0]])  # part 2: labels 1..3 -> 3..5
    c = np.array([[0, 0, 0, 1]])  # part 3: label 1 -> 6
    luts = [np.array([0, 1, 2]), np.array([0, 3, 4, 5]), np.array([0, 6])]
    out = merge([a, b, c], luts)
    np.testing.assert_array_equal(out, [[5, 1, 3, 6]])  # background in a later part keeps the earlier label
    assert out.dtype == np.uint8


def test_combined_numbering_follows_part_order_and_dataset_json(tmp_path):
    from medseg.adapters.totalseg import TASKS, combined_labels
    from medseg.labels import Label, LabelTable

    def part(names, ds):
        return SimpleNamespace(
            labels=SimpleNamespace(
                table=LabelTable(ds, tuple(Label(i + 1, n) for i, n in enumerate(names))), regions=False
            ),
            folder=tmp_path / ds / "m",
        )

    parts = [part(names, ds) for ds, names in PARTS.values()]
    table, luts = combined_labels(TASKS[0], parts)
    expected = [n for _, names in PARTS.values() for n in names]
    assert table.names == expected and [lab.index for lab in table.labels] == list(range(1, len(expected) + 1))
    assert list(luts[2]) == [0, 6, 7, 8, 9]  # part 3 starts after 3 + 2 labels
    with pytest.raises(CheckpointError, match="'liver' is named by two parts"):
        combined_labels(TASKS[0], [part(["liver"], "Dataset291_a"), part(["liver"], "Dataset292_b")])


def test_triple_split_slabs_put_back_every_slice_once():
    from medseg.adapters.totalseg import SPLIT_MARGIN, slabs

    for n in (201, 240, 303):
        z = np.arange(n)
        out = np.full(n, -1)
        for src, keep, dst in slabs(n):
            piece = z[src]
            assert len(piece) >= len(z[dst]) + SPLIT_MARGIN - 1  # each slab has context beyond what it keeps
            out[dst] = piece[keep]
        np.testing.assert_array_equal(out, z)


def test_layout_is_found_from_the_home_folder_results_or_a_dataset(tmp_path):
    from medseg.adapters.totalseg import resolve
    from medseg.inference import load as external

    home = make_total(tmp_path, weights=False)
    for p in (home, home / "nnunet", home / "nnunet" / "results"):
        assert external.detect(p).name == "totalsegmentator"
        task, folders = resolve(p)
        assert task.name == "total" and [f.parent.name for f in folders] == [v[0] for v in PARTS.values()]
    # a part's own model folder is a plain nnU-Net model
    assert external.detect(folders[0]).name == "nnunet"
    fast = make_part(
        tmp_path / "other",
        FAST[1],
        FAST[2],
        seed=0,
        spacing=3.0,
        trainer="nnUNetTrainer_4000epochs_NoMirroring",
        weights=False,
    )
    task, folders = resolve(fast.parent)
    assert task.name == "total_fast" and task.spacing == 3.0 and folders == [fast]


def test_missing_parts_and_ambiguous_models_are_refused_with_one_line(tmp_path):
    from medseg.adapters.totalseg import resolve

    home = make_total(tmp_path, weights=False, skip=(293, 295))
    with pytest.raises(CheckpointError) as err:
        resolve(home)
    msg = str(err.value)
    assert "\n" not in msg and "[293, 295] are missing" in msg and str(home) in msg
    make_part(home / "nnunet" / "results", PARTS[293][0], PARTS[293][1], seed=1, weights=False)
    make_part(home / "nnunet" / "results", PARTS[295][0], PARTS[295][1], seed=1, weights=False)
    make_part(home / "nnunet" / "results", PARTS[295][0], PARTS[295][1], seed=1, weights=False, trainer="nnUNetTrainer")
    assert resolve(home)[1][4].name.startswith("nnUNetTrainerNoMirroring__")  # TotalSegmentator's trainer preferred
    make_part(home / "nnunet" / "results", PARTS[294][0], PARTS[294][1], seed=1, weights=False, trainer="nnUNetTrainer")
    make_part(
        home / "nnunet" / "results", PARTS[294][0], PARTS[294][1], seed=1, weights=False, trainer="nnUNetTrainerDA5"
    )
    (
        home / "nnunet" / "results" / PARTS[294][0] / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres" / "plans.json"
    ).unlink()
    with pytest.raises(CheckpointError, match="holds several models"):
        resolve(home)


def test_bad_part_is_refused_naming_its_folder(tmp_path):
    pytest.importorskip(
        "dynamic_network_architectures", reason="nnU-Net networks need dynamic_network_architectures (the nnunet extra)"
    )
    from medseg.inference.load import load_predictor

    home = make_total(tmp_path, weights=False)
    bad = plans(1.5)
    bad["configurations"]["3d_fullres"]["architecture"] = {**ARCH, "network_class_name": "mypackage.MyUNet"}
    target = home / "nnunet" / "results" / PARTS[292][0] / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    (target / "plans.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError) as err:
        load_predictor(home, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and "mypackage.MyUNet" in msg and PARTS[292][0] in msg


# ------------------------------------------------------------------------------------ end to end against nnU-Net
STEP = 0.8  # TotalSegmentator's tile step


def _part_folders(home: Path, spacing: float) -> list[Path]:
    ids = sorted(PARTS) if spacing == 1.5 else [FAST[0]]
    return [
        next((home / "nnunet" / "results" / (PARTS[i][0] if i in PARTS else FAST[1])).glob("*__3d_fullres"))
        for i in ids
    ]


def _reference(folders: list[Path], image_path: Path, spacing: float, tmp: Path, step: float = 0.8) -> np.ndarray:
    """TotalSegmentator's nnUNet_predict_image, redone here with nibabel, scipy and nnU-Net's own predictor."""
    import nibabel as nib
    import torch
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from scipy import ndimage

    orig = nib.load(str(image_path))
    img = nib.as_closest_canonical(nib.Nifti1Image(orig.get_fdata(), orig.affine))
    zooms = np.array(img.header.get_zooms())
    zoom = zooms / np.array([spacing] * 3)
    data = ndimage.zoom(img.get_fdata(), zoom, order=1, mode="nearest").astype(np.int32)
    aff = img.affine.copy()
    aff[:3, :3] = aff[:3, :3] / zoom[None, :]
    nib.save(nib.Nifti1Image(data, aff), str(tmp / "s01_0000.nii.gz"))
    arr, props = SimpleITKIO().read_images([str(tmp / "s01_0000.nii.gz")])

    combined = np.zeros(data.shape, np.uint8)
    offset = 0
    for folder in folders:
        pm = PlansManager(json.loads((folder / "plans.json").read_text()))
        dj = json.loads((folder / "dataset.json").read_text())
        cm = pm.get_configuration("3d_fullres")
        ck = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
        net = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            1,
            len(dj["labels"]),
            deep_supervision=False,
        )
        p = reference_predictor(tile_step_size=step, use_mirroring=False)
        p.manual_initialization(net, pm, cm, [ck["network_weights"]], dj, "nnUNetTrainerNoMirroring", None)
        seg = p.predict_single_npy_array(arr.copy(), dict(props), None, None, False).transpose(2, 1, 0)
        n = len(dj["labels"]) - 1
        lut = np.array([0] + [k + offset for k in range(1, n + 1)], np.uint8)
        mapped = lut[seg]
        np.copyto(combined, mapped, where=mapped != 0)
        offset += n
    back = ndimage.zoom(combined, np.array(img.shape) / np.array(combined.shape), order=0, mode="nearest")
    can = nib.Nifti1Image(back, img.affine)
    undo = ornt_transform(axcodes2ornt("RAS"), io_orientation(orig.affine))
    return np.asarray(can.as_reoriented(undo).dataobj)


def test_tile_step_reaches_the_windows():
    """The tile step reaches the windows (it was always 0.5: TotalSegmentator's 0.8 ran as 0.5)."""
    from medseg.adapters.nnunet import inference as nn

    assert [len(s) for s in nn.steps_for((73, 64, 53), (32, 32, 32), 0.8)] == [3, 3, 2]
    assert len(nn._slicers((73, 64, 53), (32, 32, 32), 0.8)) == 3 * 3 * 2
    assert len(nn._slicers((73, 64, 53), (32, 32, 32), 0.5)) == 4 * 3 * 3


@pytest.fixture(scope="module")
def total_home(tmp_path_factory):
    pytest.importorskip(
        "dynamic_network_architectures", reason="nnU-Net networks need dynamic_network_architectures (the nnunet extra)"
    )
    root = tmp_path_factory.mktemp("totalseg")
    return make_total(root)


@pytest.mark.slow
@pytest.mark.parametrize("flips,oblique", [((True, False, True), 0.0), ((False, True, False), 12.0)])
def test_total_task_matches_nnunet_per_part_and_independent_merge(total_home, tmp_path, flips, oblique):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (test-only)")
    import nibabel as nib

    from medseg.data.phantoms import make_phantom
    from medseg.inference.load import load_predictor

    case = make_phantom(
        7, spacing=(2.0, 2.6, 3.2), flips=flips, oblique_deg=oblique, fov_mm=(84.0, 72.0, 60.0), noise_hu=0
    )
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.round(case.image.array).astype(np.int16), case.image.affine), str(path))
    step = STEP
    pred = load_predictor(total_home, device="cpu", **({} if step == 0.8 else {"overlap": 1 - step}))
    expected_names = [n for _, names in PARTS.values() for n in names]
    assert pred.labels.names == expected_names and pred.labels.num_classes == len(expected_names) + 1
    assert pred.provenance["format"] == "totalsegmentator" and len(pred.provenance["parts"]) == 5
    out = pred.predict(str(path))
    ref = _reference(_part_folders(total_home, 1.5), path, 1.5, tmp_path, step)
    assert out.array.shape == case.image.shape and np.allclose(out.affine, nib.load(str(path)).affine)
    values = set(np.unique(ref).tolist())
    parts_seen = {
        next(i for i, (a, b) in enumerate([(1, 3), (4, 5), (6, 9), (10, 10), (11, 12)]) if a <= v <= b)
        for v in values - {0}
    }
    assert len(parts_seen) >= 2, f"the reference labels come from parts {parts_seen} only: the merge would be untested"
    agree = float((out.array == ref).mean())
    assert agree >= 0.999, f"label agreement {agree:.5f}"


@pytest.mark.slow
def test_fast_model_resamples_to_3mm_and_keeps_its_labels(tmp_path):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (test-only)")
    import nibabel as nib

    from medseg.data.phantoms import make_phantom
    from medseg.inference.load import load_predictor

    home = tmp_path / ".totalsegmentator"
    make_part(
        home / "nnunet" / "results",
        FAST[1],
        FAST[2],
        seed=5,
        spacing=3.0,
        trainer="nnUNetTrainer_4000epochs_NoMirroring",
    )
    case = make_phantom(3, spacing=(1.7, 1.7, 2.5), flips=(False, True, True), fov_mm=(120.0, 110.0, 100.0), noise_hu=0)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image.array.astype(np.float32), case.image.affine), str(path))
    step = STEP
    pred = load_predictor(home, device="cpu", **({} if step == 0.8 else {"overlap": 1 - step}))
    assert pred.labels.names == FAST[2] and pred.provenance["task"] == "total_fast"
    out = pred.predict(str(path))
    assert out.meta["network_grid"] == [
        int(round(s * z / 3.0)) for s, z in zip(case.image.shape, (1.7, 1.7, 2.5), strict=False)
    ]
    ref = _reference(_part_folders(home, 3.0), path, 3.0, tmp_path, step)
    assert len(np.unique(ref)) >= 2
    assert float((out.array == ref).mean()) >= 0.999


@pytest.mark.slow
def test_two_part_task_from_models_trained_by_nnunet(tmp_path, request):
    """TotalSegmentator's two-part MR layout (datasets 850, 851) made of the models nnU-Net trains in
    tests/external/nnunet_fixture.py (folds 0 and 1: other weights), each part with its own label names
    (the session's fixture, tests/external/conftest.py, shared with test_nnunet_agreement)."""
    import shutil

    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (test-only)")
    import nibabel as nib

    from medseg.data.phantoms import make_phantom
    from medseg.inference.load import load_predictor

    trained = request.getfixturevalue("nnunet_model")[0]  # after the importorskip: built only where nnunetv2 is
    home = tmp_path / "totalseg_home"
    names = {
        850: ["liver_a", "spleen_a", "kidney_right_a", "kidney_left_a"],
        851: ["liver_b", "spleen_b", "kidney_right_b", "kidney_left_b"],
    }
    folders = []
    for fold, (ds_id, labs) in enumerate(names.items()):
        folder = (
            home
            / "nnunet"
            / "results"
            / f"Dataset{ds_id}_TotalSegMRI_part{fold + 1}"
            / "nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres"
        )
        (folder / "fold_0").mkdir(parents=True)
        shutil.copy(trained / "plans.json", folder / "plans.json")
        shutil.copy(trained / f"fold_{fold}" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_final.pth")
        dataset = json.loads((trained / "dataset.json").read_text())
        dataset["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(labs)}}
        (folder / "dataset.json").write_text(json.dumps(dataset))
        folders.append(folder)
    case = make_phantom(
        101, spacing=(2.5, 2.5, 5.0), flips=(True, False, True), fov_mm=(250.0, 200.0, 120.0), noise_hu=0
    )
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image.array.astype(np.float32), case.image.affine), str(path))
    step = STEP
    pred = load_predictor(home, device="cpu", **({} if step == 0.8 else {"overlap": 1 - step}))
    assert pred.provenance["task"] == "total_mr" and pred.labels.names == names[850] + names[851]
    out = pred.predict(str(path))
    ref = _reference(folders, path, 1.5, tmp_path, step)
    assert out.array.shape == case.image.shape and len(np.unique(ref)) >= 2
    assert float((out.array == ref).mean()) >= 0.999


# ------------------------------------------------------------------------------------ statistics.json
def _stats_phantom(tmp: Path):
    """A label map with known volumes and intensities, and its image (same oblique-free, flipped grid)."""
    import nibabel as nib

    shape = (40, 36, 30)
    affine = np.diag([-0.8, 1.25, -2.5, 1.0])
    affine[:3, 3] = [30.0, -20.0, 10.0]
    lab = np.zeros(shape, np.uint8)
    img = np.full(shape, -1000.0, np.float32)
    lab[10:20, 8:16, 6:12] = 1  # 480 voxels inside; 0.8 * 1.25 * 2.5 = 2.5 mm3 in float32 too -> 1200 mm3
    img[10:20, 8:16, 6:9] = 100.0
    img[10:20, 8:16, 9:12] = 51.0  # mean 75.5
    lab[0:5, 20:30, 10:20] = 2  # within 3 voxels of the first face: TotalSegmentator reports 0 for it
    lab[25:31, 20:26, 15:20] = 4  # 180 voxels
    img[25:31, 20:26, 15:20] = -10.7  # int16 truncation: -10 ...
    img[25:31, 20:23, 15:20] = 20.9  # ... and 20: mean 5.0 (the float mean would be 5.1)
    nib.save(nib.Nifti1Image(lab, affine), str(tmp / "case1.nii.gz"))
    nib.save(nib.Nifti1Image(img, affine), str(tmp / "case1_ct.nii.gz"))
    (tmp / "table.yaml").write_text(
        "name: t\nlabels:\n  - {index: 1, name: liver}\n  - {index: 2, name: spleen}\n"
        "  - {index: 3, name: stomach}\n  - {index: 4, name: kidney_left}\n"
    )
    return tmp / "case1.nii.gz", tmp / "case1_ct.nii.gz", tmp / "table.yaml"


def _independent_statistics(lab_path: Path, img_path: Path, names: dict) -> dict:
    """get_basic_statistics' formulas on the whole arrays, as TotalSegmentator evaluates them."""
    import nibabel as nib

    seg = np.asarray(nib.load(str(lab_path)).dataobj)
    ct_img = nib.load(str(img_path))
    ct = ct_img.get_fdata().astype(np.int16)
    sp = ct_img.header.get_zooms()
    vox_vol = sp[0] * sp[1] * sp[2]
    out = {}
    for k, name in names.items():
        data = seg == k
        border = any(
            np.any(np.take(data, idx, axis=a))
            for a in range(3)
            for idx in (range(3), range(data.shape[a] - 3, data.shape[a]))
        )
        if border:
            out[name] = {"volume": 0.0, "intensity": 0.0}
        else:
            roi = data.astype(np.uint8)
            out[name] = {
                "volume": data.sum() * vox_vol,
                "intensity": np.average(ct, weights=roi).round(5) if roi.sum() > 0 else 0.0,
            }
    return out


def test_statistics_json_matches_totalsegmentators_formulas_on_a_known_phantom(tmp_path, capsys):
    from medseg.cli import main

    lab, img, table = _stats_phantom(tmp_path)
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--labels",
                str(lab),
                "--images",
                str(img),
                "--label-table",
                str(table),
                "--out",
                str(out),
                "--statistics-json",
                "--no-qc",
            ]
        )
        == 0
    )
    written = out / "statistics" / "case1.json"
    stats = json.loads(written.read_text())
    assert list(stats) == ["liver", "spleen", "stomach", "kidney_left"]
    assert stats["liver"] == {"volume": 1200.0, "intensity": 75.5}
    assert stats["spleen"] == {"volume": 0.0, "intensity": 0.0}  # touches the border
    assert stats["stomach"] == {"volume": 0.0, "intensity": 0.0}  # absent
    assert stats["kidney_left"] == {"volume": 450.0, "intensity": 5.0}
    ref = _independent_statistics(lab, img, {1: "liver", 2: "spleen", 3: "stomach", 4: "kidney_left"})
    assert written.read_text() == json.dumps(ref, indent=4)  # the same file, byte for byte


def test_statistics_json_needs_images(tmp_path, capsys):
    from medseg.cli import main

    lab, _, table = _stats_phantom(tmp_path)
    assert (
        main(
            [
                "report",
                "--labels",
                str(lab),
                "--label-table",
                str(table),
                "--out",
                str(tmp_path / "r"),
                "--statistics-json",
                "--no-qc",
            ]
        )
        == 2
    )
    assert "--statistics-json needs --images" in capsys.readouterr().err
