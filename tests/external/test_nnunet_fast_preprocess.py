"""The fast preset's preprocessing of nnU-Net models (medseg.adapters.nnunet.fast_preprocess) and the read-ahead
``prepare`` step of ``NnunetPredictor`` that ``medseg run``'s reader threads call.

The fast route resamples linearly, slab by slab, from the image as read: with the data resampling set to order 1,
nnU-Net's own route (``inference.preprocess``: scipy's ``zoom`` / ``map_coordinates`` on a float copy) is an
independent implementation of the same arithmetic, so the two must agree to float32 rounding -- crop, normalisation,
grid, the separate low-resolution axis and the slab seams included. (With nnU-Net's order 3 they differ by the
spline's overshoot; bench_nnunet.py prints the label agreement.)
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medseg.adapters.nnunet import fast_preprocess as fp
from medseg.adapters.nnunet import inference as nn


def _model(scheme="CTNormalization", spacing=(3.0, 2.0, 2.0), order=1, transpose=(0, 1, 2)):
    conf = {
        "spacing": list(spacing),
        "normalization_schemes": [scheme],
        "use_mask_for_norm": [False],
        "patch_size": [8, 8, 8],
        "resampling_fn_data_kwargs": {"order": order, "order_z": 0, "force_separate_z": None},
    }
    plans = {
        "transpose_forward": list(transpose),
        "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "foreground_intensity_properties_per_channel": {
            "0": {"percentile_00_5": -500.0, "percentile_99_5": 800.0, "mean": 50.0, "std": 200.0}
        },
    }
    return SimpleNamespace(plans=plans, conf=conf)


def _ct(shape=(60, 52, 47), seed=0):
    """int16 CT-like data (x, y, z): smooth structures, a zero border on two sides (the crop)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = (gaussian_filter(rng.normal(size=shape), 2.0) * 4000).astype(np.int16)
    img[:5] = 0
    img[:, :, -4:] = 0
    return img


@pytest.mark.parametrize(
    "case",
    ["downsample", "separate_z", "zscore", "rescale", "transposed"],
)
def test_fast_preprocessing_equals_nnunets_route_at_order_1(case, monkeypatch):
    monkeypatch.setattr(fp, "SLAB_VOXELS", 3 * 40 * 40)  # several slabs and a short last one
    img, spacing_xyz = _ct(), (0.8, 0.9, 1.1)
    model = _model()
    if case == "separate_z":  # 4 mm slices, 0.8 mm pixels: z resampled alone, nearest (order_z 0)
        spacing_xyz, model = (0.8, 0.8, 4.0), _model(spacing=(4.0, 1.5, 1.7))
    elif case == "zscore":
        model = _model("ZScoreNormalization", spacing=(1.5, 1.2, 2.0))
    elif case == "rescale":
        model = _model("RescaleTo01Normalization", spacing=(2.2, 0.6, 1.0))  # upsampling along one axis
    elif case == "transposed":
        model = _model(spacing=(2.0, 1.7, 2.5), transpose=(2, 0, 1))
    ref, ref_props = nn.preprocess(img[None].astype(np.float32).transpose(0, 3, 2, 1), list(spacing_xyz)[::-1], model)
    got, props = fp.preprocess_fast(img[None], spacing_xyz, model)
    assert props == ref_props and got.dtype == np.float32
    assert ref.shape == got.shape and got.shape[1:] != img.shape
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 2e-5 * max(scale, 1.0), (case, float(np.abs(got - ref).max()))
    if case == "separate_z":
        do_sep, axis = nn.separate_z(None, [4.0, 0.9, 0.8], [4.0, 1.5, 1.7])
        assert do_sep and axis == 0


def test_fast_preprocessing_is_near_the_spline_and_reads_the_input_as_is():
    """nnU-Net's order 3: close but not equal (the spline's overshoot); the image is not converted or changed."""
    img = _ct(seed=3)
    before = img.copy()
    model = _model(order=3)
    ref, _ = nn.preprocess(img[None].astype(np.float32).transpose(0, 3, 2, 1), [1.1, 0.9, 0.8], model)
    got, _ = fp.preprocess_fast(img[None], (0.8, 0.9, 1.1), model)
    diff = np.abs(got - ref)
    assert 0 < float(diff.mean()) < 0.05 * float(np.abs(ref).mean())
    assert np.array_equal(img, before) and img.dtype == np.int16


def test_nonzero_bbox_without_a_full_mask():
    rng = np.random.default_rng(2)
    data = np.zeros((2, 23, 19, 17), dtype=np.int16)
    data[0, 4:9, 3:5, 6:7] = 1
    data[1, 15, 2, 12] = -3
    assert fp.nonzero_bbox(data, rows=4) == nn.bbox_of(nn.nonzero_mask(data))
    empty = np.zeros((1, 5, 6, 7), dtype=np.int16)
    assert fp.nonzero_bbox(empty) == nn.bbox_of(nn.nonzero_mask(empty)) == [[0, 5], [0, 6], [0, 7]]
    noisy = (rng.random((1, 30, 20, 10)) > 0.999).astype(np.float32)
    assert fp.nonzero_bbox(noisy, rows=7) == nn.bbox_of(nn.nonzero_mask(noisy))


# ---------------------------------------------------------------- the predictor: prepare ahead, labels in place
def _tiny_folder(root):
    """An nnU-Net result folder holding a small randomly initialised PlainConvUNet (no training)."""
    from medseg.adapters.nnunet.folder import architecture, build_network

    folder = root / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_all").mkdir(parents=True)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2,
            "features_per_stage": [4, 8],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 2,
            "strides": [[1, 1, 1], [2, 2, 2]],
            "n_conv_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    model = _model(spacing=(2.0, 2.0, 2.0), order=3)
    conf = {
        **model.conf,
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [8, 16, 16],
        "median_image_size_in_voxels": [20, 30, 30],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch,
    }
    plans = {
        **model.plans,
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": [2.0, 2.0, 2.0],
        "original_median_shape_after_transp": [20, 30, 30],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "configurations": {"3d_fullres": conf},
    }
    labels = {"background": 0, "liver": 1, "spleen": 2}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"})
    )
    cls, kw = architecture(conf)
    torch.manual_seed(0)
    net = build_network(cls, kw, 1, len(labels))
    state = {
        "network_weights": net.state_dict(),
        "optimizer_state": {},
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": 0.0,
        "current_epoch": 0,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": "all", "dataset_json": {}},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(state, folder / "fold_all" / "checkpoint_final.pth")
    return folder


def test_prepared_case_gives_the_same_labels_and_skips_the_preprocessing(tmp_path, monkeypatch):
    pytest.importorskip("dynamic_network_architectures")
    import medseg.adapters  # noqa: F401  (registers the nnU-Net format)
    from medseg.inference.load import load_predictor
    from medseg.io.volume import Volume

    folder = _tiny_folder(tmp_path)
    affine = np.diag([0.9, 0.8, 1.2, 1.0])
    volume = Volume(_ct((40, 44, 30)), affine, "")
    pred = load_predictor(folder, device="cpu", preset="fast", amp="off", mirror=False)
    plain = pred.predict(volume)
    assert not plain.meta["prepared_ahead"] and plain.array.shape == volume.shape and plain.array.flags.c_contiguous
    pred.prepare(volume)
    calls = []
    monkeypatch.setattr(fp, "preprocess_fast", lambda *a, **k: calls.append(1))  # not called again
    ahead = pred.predict(volume)
    assert ahead.meta["prepared_ahead"] and not calls and not pred._ready
    assert np.array_equal(ahead.array, plain.array)
    assert ahead.meta["voxels"] == {n: int((plain.array == i).sum()) for i, n in ((1, "liver"), (2, "spleen"))}
    # another Volume object (the same voxels) is not the prepared one: preprocessed again
    monkeypatch.undo()
    pred.prepare(volume)
    again = pred.predict(Volume(volume.array, affine, ""))
    assert not again.meta["prepared_ahead"] and len(pred._ready) == 1
    # the faithful preset prepares too (nnU-Net's route); its labels are nnU-Net's export's
    faithful = load_predictor(folder, device="cpu", amp="off", mirror=False)
    faithful.prepare(volume)
    assert faithful.predict(volume).meta["prepared_ahead"]


def test_reader_threads_prepare_what_segment_predicts(monkeypatch):
    from medseg.runner import local

    loaded = SimpleNamespace(image=object())
    monkeypatch.setattr(local, "read_case", lambda ctx, case: loaded)
    seen = []
    predictor = SimpleNamespace(prepare=seen.append)
    case = SimpleNamespace(case_id="c1", channels=())
    assert local.read_and_prepare(None, case, predictor) is loaded and seen == [loaded.image]
    multi = SimpleNamespace(case_id="c2", channels=("b.nii.gz",))
    local.read_and_prepare(None, multi, predictor)
    assert seen[-1] == [loaded.image, "b.nii.gz"]

    def broken(source):
        raise MemoryError("no room")

    # a failing prepare is left to predict (which repeats it and reports it in its stage)
    assert local.read_and_prepare(None, case, SimpleNamespace(prepare=broken)) is loaded
    assert local.read_and_prepare(None, case, object()) is loaded  # predictors without the step
