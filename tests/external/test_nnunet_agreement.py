"""medseg against nnU-Net v2's own predictor, on an nnU-Net model trained here (slow; needs nnunetv2).

The models: nnU-Net's planner and trainer on five anisotropic CT phantoms
(3.5 x 3.5 x 12 mm: the slice axis is resampled separately), 3d_fullres folds 0
and 1 and 2d fold 0, one epoch of two iterations each (tests/external/nnunet_fixture.py).
Built once per test session. Compared on a held-out phantom: the preprocessed array, the
logits, the probabilities and the label map, and the names ``medseg predict``
writes. The fixtures are in tests/external/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import medseg_cli
from nnunet_plans import reference_predictor

nnunetv2 = pytest.importorskip(
    "nnunetv2",
    reason="nnunetv2 is not installed (test-only: pip install 'medseg[nnunet]', "
    "or nnunetv2 --no-deps next to the pinned torch)",
)

pytestmark = pytest.mark.slow


def _reference(folder: Path, image, folds=None) -> dict:
    """nnU-Net's own predictor on ``image``: its preprocessing, logits, label map and probabilities."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = reference_predictor()
    p.initialize_from_trained_model_folder(str(folder), use_folds=folds, checkpoint_name="checkpoint_final.pth")
    img, props = SimpleITKIO().read_images([str(i) for i in (image if isinstance(image, (list, tuple)) else [image])])
    pre = p.configuration_manager.preprocessor_class(verbose=False)
    data, _, pprops = pre.run_case_npy(
        img.copy(), None, dict(props), p.plans_manager, p.configuration_manager, p.dataset_json
    )
    logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    # what predict_single_npy_array does after these two steps (running it again would double the time)
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), p.plans_manager, p.configuration_manager, p.label_manager, pprops, return_probabilities=True
    )
    return {
        "img": img,
        "spacing": props["spacing"],
        "data": data,
        "logits": logits,
        "seg": seg,
        "probs": probs,
        "folds": [str(f) for f in nnUNetPredictor.auto_detect_available_folds(str(folder), "checkpoint_final.pth")],
    }


def _assert_same_output(out, ref):
    ref_seg = ref["seg"].transpose(2, 1, 0)  # nnU-Net's (z, y, x) -> the file's (x, y, z)
    assert out.array.shape == ref_seg.shape
    assert len(np.unique(ref_seg)) >= 2, "the reference predicts one class only: the comparison would prove nothing"
    agree = float((out.array == ref_seg).mean())
    assert agree >= 0.999, f"label agreement {agree:.5f}"
    probs, affine = out.meta["probabilities"]
    np.testing.assert_allclose(probs, ref["probs"].transpose(3, 2, 1, 0), rtol=0, atol=5e-3)
    np.testing.assert_array_equal(affine, out.affine)


@pytest.fixture(scope="session")
def reference(nnunet_model):
    return _reference(*nnunet_model)


@pytest.fixture(scope="session")
def ours(nnunet_model):
    from medseg.adapters.nnunet.folder import load_nnunet_folder

    folder, _ = nnunet_model
    return load_nnunet_folder(folder)


def test_preprocessing_matches_nnunet(ours, reference):
    from medseg.adapters.nnunet import inference as nn

    assert ours.folds == reference["folds"] == ["0", "1"]
    data, props = nn.preprocess(reference["img"], reference["spacing"], ours)
    spacing = [reference["spacing"][i] for i in ours.plans["transpose_forward"]]
    assert spacing != props["network_spacing"] and nn.separate_z(None, spacing, props["network_spacing"]) == (True, 0)
    assert data.shape == reference["data"].shape
    np.testing.assert_allclose(data, reference["data"], rtol=0, atol=1e-4)


def test_logits_match_nnunet(ours, reference):
    import torch

    from medseg.adapters.nnunet import inference as nn

    logits = nn.predict_logits(ours.networks(), reference["data"], ours)
    assert logits.dtype == torch.float16 and logits.shape == reference["logits"].shape
    np.testing.assert_allclose(logits.float().numpy(), reference["logits"].float().numpy(), rtol=2e-3, atol=2e-3)


def test_label_map_and_probabilities_match_nnunet(nnunet_model, reference):
    from medseg.inference.load import load_predictor

    folder, image = nnunet_model
    pred = load_predictor(folder, device="cpu")
    _assert_same_output(pred.predict(image, keep_probabilities=True), reference)


def test_2d_configuration_matches_nnunet(nnunet_model):
    """nnU-Net's 2d configuration (slice by slice along its first axis, the slice spacing kept)."""
    from medseg.adapters.nnunet import inference as nn
    from medseg.adapters.nnunet.folder import load_nnunet_folder
    from medseg.inference.load import load_predictor

    folder3d, image = nnunet_model
    folder = folder3d.parent / folder3d.name.replace("__3d_fullres", "__2d")
    ref = _reference(folder, image)
    model = load_nnunet_folder(folder)
    assert len(model.conf["patch_size"]) == 2
    data, _ = nn.preprocess(ref["img"], ref["spacing"], model)
    np.testing.assert_allclose(data, ref["data"], rtol=0, atol=1e-4)
    _assert_same_output(load_predictor(folder, device="cpu").predict(image, keep_probabilities=True), ref)


def test_medseg_predict_cli_names_structures_from_dataset_json(nnunet_model, tmp_path):
    folder, image = nnunet_model
    out = tmp_path / "out"
    r = medseg_cli("predict", "--model", folder, image, "--out", out, "--folds", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    sidecars = [p for p in out.glob("*.json") if p.name != "run.json"]
    assert len(sidecars) == 1
    side = json.loads(sidecars[0].read_text())
    names = [lab["name"] for lab in side["labels"]["labels"]]
    dataset = json.loads((folder / "dataset.json").read_text())
    assert names == [k for k in dataset["labels"] if k != "background"]
    assert side["model"]["format"] == "nnunetv2" and side["model"]["folds"] == ["1"]


def test_mr_two_channels_masked_zscore_and_regions_match_nnunet(nnunet_mr_model):
    from medseg.adapters.nnunet import inference as nn
    from medseg.adapters.nnunet.folder import load_nnunet_folder
    from medseg.inference.load import load_predictor

    folder, images = nnunet_mr_model
    model = load_nnunet_folder(folder)
    assert model.folds == ["all"] and model.in_channels == 2
    assert model.conf["normalization_schemes"] == ["ZScoreNormalization"] * 2 and model.conf["use_mask_for_norm"] == [
        True,
        True,
    ]
    assert model.labels.regions and [lab.name for lab in model.labels.table.labels] == [
        "organs",
        "kidneys",
        "kidney_left",
    ]
    ref = _reference(folder, images, folds=("all",))
    data, props = nn.preprocess(ref["img"], ref["spacing"], model)
    assert props["shape_after_cropping"] != props["shape_before_cropping"]  # the crop to the body did something
    np.testing.assert_allclose(data, ref["data"], rtol=0, atol=1e-4)
    out = load_predictor(folder, device="cpu").predict([str(i) for i in images], keep_probabilities=True)
    assert set(np.unique(out.array)) <= {0, 1, 3, 4}
    _assert_same_output(out, ref)
