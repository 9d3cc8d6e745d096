"""MONAI bundles run by medseg: compared with MONAI's own bundle tooling, refused when they hold code.

The comparisons build a bundle folder in the model zoo's layout (spleen_ct_segmentation's
inference.json, wholeBody_ct_segmentation's YAML-style variant) around a tiny MONAI UNet
trained for a few steps on a phantom, then run the bundle with ``monai.bundle.ConfigParser``
(the reference; it evaluates the bundle's expressions, as MONAI does) and with medseg's
predictor on the same NIfTI file, on oblique and flipped grids.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import medseg_cli, run_volumetry

sys.path.insert(0, str(Path(__file__).parent))
import bundle_fixture as bf  # noqa: E402

from medseg.errors import CheckpointError, ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    return bf.train_unet()


@pytest.fixture
def one_thread():
    """Small networks on a shared 2-core machine: one thread is many times faster than two fighting for it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_weights(seed: int = 0) -> dict:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(**{k: v for k, v in bf.UNET.items() if k != "_target_"}).state_dict()


def _phantom_image(tmp_path: Path, seed: int, name: str = "img.nii.gz", **kw):
    from medseg.data.phantoms import make_phantom

    case = make_phantom(seed, fov_mm=(250.0, 190.0, 130.0), **kw)
    return case, bf.write_nifti(case.image, tmp_path / name)


def _predict(bundle: Path, image: Path, **kw):
    from medseg.inference.load import load_predictor

    return load_predictor(bundle, device="cpu", **kw)


# ------------------------------------------------------------------------------------ against MONAI


@pytest.mark.slow
def test_spleen_layout_matches_monai_bundle_on_an_oblique_flipped_grid(tmp_path, trained, one_thread):
    bundle = bf.write_bundle(tmp_path / "bundle", trained)
    case, img = _phantom_image(tmp_path, 7, spacing=(3.1, 3.3, 4.5), flips=(True, False, True), oblique_deg=12.0)
    ref_labels, ref_probs = bf.run_monai_bundle(bundle, img, tmp_path / "ref")

    predictor = _predict(bundle, img)
    assert predictor.labels.names == ["liver", "spleen"] and predictor.labels.name == "Phantom abdomen"
    assert predictor.inference["roi_size"] == bf.ROI and predictor.inference["overlap"] == 0.5
    assert predictor.inference["sw_batch_size"] == 2 and predictor.inference["blend"] == "gaussian"
    out = predictor.predict(img, keep_probabilities=True)

    from medseg.io.readers import read_volume

    stored = read_volume(img).affine  # the NIfTI's affine (float32 in the header), the phantom's within rounding
    assert out.shape == case.image.shape and np.array_equal(out.affine, stored)
    assert np.allclose(stored, case.image.affine, atol=1e-4)
    assert ref_labels.shape == out.shape
    agree = float((out.array == ref_labels).mean())
    assert agree >= 0.999, agree
    assert (out.array == 1).sum() > 500  # the model segments the liver: the comparison is not of empty maps
    gt_liver = np.asarray(case.labels.array) == 1
    dice = 2 * (gt_liver & (out.array == 1)).sum() / (gt_liver.sum() + (out.array == 1).sum())
    assert dice > 0.3, dice  # it lands on the liver, on the input's own (oblique, flipped) grid
    probs, affine = out.meta["probabilities"]
    assert probs.shape == (*case.image.shape, 3) and np.array_equal(affine, stored)
    np.testing.assert_allclose(np.moveaxis(probs, -1, 0), ref_probs, atol=1e-4)
    # the bundle's SaveImaged is MONAI's business: medseg wrote nothing into the bundle or its output_dir
    assert not (bundle / "eval").exists()


@pytest.mark.slow
def test_yaml_wholebody_layout_matches_monai_bundle(tmp_path, trained, one_thread):
    """YAML config, NormalizeIntensityd(nonzero) + ScaleIntensityd, constant blending, AsDiscreted before
    Invertd (nearest): labels inverted, not scores; a transform switched off with ``_disabled_``."""
    pre = [
        {"_target_": "LoadImaged", "keys": "@image_key", "reader": "NibabelReader"},
        {"_target_": "monai.transforms.EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [5.0, 6.0, 7.0], "mode": "bilinear"},
        {"_target_": "ThresholdIntensityd", "keys": "@image_key", "threshold": -500, "above": True, "cval": -500},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
        {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "@image_key",
            "a_min": 0,
            "a_max": 1,
            "b_min": 5,
            "b_max": 9,
            "_disabled_": True,
        },
    ]
    post = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "@image_key",
            "nearest_interp": True,
            "to_tensor": True,
            "device": "@device",
        },
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "separate_folder": False},
    ]
    cfg = bf.inference_config(
        image_key="img",
        preprocessing={"_target_": "Compose", "transforms": pre},
        inferer={
            "_target_": "SlidingWindowInferer",
            "roi_size": [20, 24, 16],
            "sw_batch_size": 3,
            "overlap": 0.25,
            "mode": "constant",
            "padding_mode": "replicate",
            "device": "$torch.device('cpu')",
        },
        postprocessing={"_target_": "Compose", "transforms": post},
        dataset={"_target_": "Dataset", "data": "$[{'img': i} for i in @datalist]", "transform": "@preprocessing"},
    )
    meta = bf.metadata()
    meta["network_data_format"]["outputs"]["pred"]["labels"] = {"background": 0, "liver": 1, "spleen": 2}
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    bundle = bf.write_bundle(tmp_path / "bundle", trained, config=cfg, meta=meta, yaml_config=True)
    case, img = _phantom_image(tmp_path, 11, spacing=(2.7, 3.4, 5.0), flips=(False, True, True), oblique_deg=0.0)
    ref_labels, _ = bf.run_monai_bundle(bundle, img, tmp_path / "ref", config_name="inference.yaml")

    predictor = _predict(bundle, img)
    assert [s["name"] for s in predictor.preprocessing["transforms"]][
        -1
    ] == "ScaleIntensityd"  # the disabled one left out
    assert predictor.inference["blend"] == "constant" and predictor.inference["roi_size"] == [20, 24, 16]
    out = predictor.predict(img, keep_probabilities=True)
    assert out.shape == case.image.shape and np.allclose(out.affine, case.image.affine, atol=1e-4)
    agree = float((out.array == ref_labels).mean())
    assert agree >= 0.999, agree
    assert len(np.unique(out.array)) >= 2
    probs, _ = out.meta["probabilities"]  # inverted separately (the bundle inverts labels): on the input's grid
    assert probs.shape == (*case.image.shape, 3)
    np.testing.assert_allclose(probs.sum(-1)[out.array > 0], 1.0, atol=1e-4)


_ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks: see one_thread


@pytest.mark.slow
def test_cli_predict_and_run_take_a_bundle(tmp_path, trained):
    """``medseg predict --model BUNDLE`` and ``medseg run ... predict.model=BUNDLE``: labels named from
    metadata.json."""
    import nibabel as nib

    bundle = bf.write_bundle(tmp_path / "bundle", trained)
    (tmp_path / "in").mkdir()
    case, img = _phantom_image(tmp_path / "in", 5, name="c1.nii.gz", spacing=(4.0, 4.0, 5.0))
    out = tmp_path / "pred"
    r = medseg_cli(
        "predict",
        "--model",
        bundle,
        img,
        "--out",
        out,
        "--no-progress",
        "--overlap",
        "0.25",
        cwd=tmp_path,
        env=_ONE_THREAD,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads((out / "c1.json").read_text())
    assert [lab["name"] for lab in side["labels"]["labels"]] == ["liver", "spleen"]
    assert side["model"]["model_name"] == "monai_bundle:UNet" and side["inference"]["overlap"] == 0.25
    lab = nib.load(str(out / "c1.nii.gz"))
    assert lab.shape == case.image.shape and np.allclose(lab.affine, case.image.affine)
    assert side["voxels"]["liver"] == int((np.asarray(lab.dataobj) == 1).sum()) > 0

    run = tmp_path / "run"
    record, vols = run_volumetry(tmp_path / "in", run, bundle, cwd=tmp_path, env=_ONE_THREAD)
    assert record["model"]["name"] == "monai_bundle:UNet" and len(record["model"]["sha256"]) == 64
    assert sorted(vols["structure"]) == ["liver", "spleen"] and set(vols["label_table"]) == {"Phantom abdomen"}


# ------------------------------------------------------------------------------------ refusals

PWNED = "$__import__('os').system('touch PWNED')"


def _set(cfg: dict, path: str, value) -> dict:
    node = cfg
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    "path, value, where, what",
    [
        ("preprocessing.transforms.4.a_min", PWNED, "preprocessing.transforms[4].a_min", "is an expression"),
        ("preprocessing.transforms.3", PWNED, "preprocessing.transforms[3]", "is an expression"),
        (
            "preprocessing.transforms",
            "$[__import__('os').system('touch PWNED')]",
            "preprocessing.transforms",
            "is an expression",
        ),
        (
            "preprocessing.transforms.2",
            {"_target_": "Lambdad", "keys": "image", "func": PWNED},
            "preprocessing.transforms[2]._target_",
            "not a transform medseg runs",
        ),
        (
            "preprocessing.transforms.2",
            {"_target_": "os.system", "command": "touch PWNED"},
            "preprocessing.transforms[2]._target_",
            "not a transform medseg runs",
        ),
        (
            "preprocessing.transforms.2._target_",
            "$__import__('os').system",
            "preprocessing.transforms[2]._target_",
            "is an expression",
        ),
        (
            "pixdim",
            "$__import__('os').system('touch PWNED') or [4, 4, 4]",
            "preprocessing.transforms[3].pixdim -> @pixdim",
            "is an expression",
        ),
        (
            "preprocessing.transforms.4.b_max",
            {"_target_": "subprocess.Popen", "args": ["touch", "PWNED"]},
            "preprocessing.transforms[4].b_max",
            "builds an object",
        ),
        (
            "preprocessing.transforms.5.select_fn",
            "$lambda x: x > 0",
            "preprocessing.transforms[5].select_fn",
            "keyword 'select_fn' of CropForegroundd is not supported",
        ),
        ("network_def._target_", "torch.nn.Identity", "network_def._target_", "not a network medseg runs"),
        ("network_def.channels", PWNED, "network_def.channels", "is an expression"),
        ("network_def.act", "%configs/other.json#act", "network_def.act", "is a macro"),
        ("network_def.spatial_dims", 2, "network_def.spatial_dims", "medseg runs 3D bundles"),
        (
            "network_def.kernel_size",
            "@network_def#kernel_size",
            "network_def.kernel_size",
            "nest too deeply (a cycle?)",
        ),
        ("inferer", {"_target_": "SlidingWindowInferer", "roi_size": "@nowhere"}, "inferer.roi_size", "names no key"),
        (
            "inferer",
            {"_target_": "SaliencyInferer", "cam_name": "GradCAM", "target_layers": "x"},
            "inferer._target_",
            "not an inferer medseg runs",
        ),
        ("inferer", PWNED, "inferer", "is an expression"),
        (
            "postprocessing.transforms.1.transform",
            "$__import__('os').system('touch PWNED')",
            "postprocessing.transforms[1].transform",
            "inverts the bundle's own preprocessing only",
        ),
        (
            "postprocessing.transforms.1.post_func",
            PWNED,
            "postprocessing.transforms[1].post_func",
            "keyword 'post_func' of Invertd is not supported",
        ),
        (
            "postprocessing.transforms.0",
            {"_target_": "Activationsd", "keys": "pred", "other": PWNED},
            "postprocessing.transforms[0].other",
            "keyword 'other' of Activationsd is not supported",
        ),
    ],
)
def test_code_in_the_bundle_is_refused_with_one_line_and_never_runs(tmp_path, monkeypatch, path, value, where, what):
    monkeypatch.chdir(tmp_path)
    cfg = _set(bf.inference_config(), path, value)
    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights(), config=cfg)
    from medseg.adapters.monai_bundle.bundle import load_bundle

    with pytest.raises(ConfigError) as err:
        load_bundle(bundle)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("bundle/configs/inference.json: "), msg
    assert f": {where}: " in msg and what in msg, msg
    assert not (tmp_path / "PWNED").exists()


def test_cli_refuses_an_expression_with_one_line_and_runs_nothing(tmp_path):
    cfg = _set(bf.inference_config(), "preprocessing.transforms.3.pixdim", PWNED)
    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights(), config=cfg)
    _, img = _phantom_image(tmp_path, 3, spacing=(6.0, 6.0, 6.0))
    r = medseg_cli("predict", "--model", bundle, img, "--out", tmp_path / "o", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "preprocessing.transforms[3].pixdim" in lines[0] and "medseg does not evaluate bundle code" in lines[0]
    assert not (tmp_path / "PWNED").exists()


def test_runner_keys_with_code_are_never_read(tmp_path, monkeypatch, one_thread):
    """``imports``, ``initialize``, ``run``, ``device``... drive MONAI's runner: medseg neither evaluates nor needs
    them."""
    monkeypatch.chdir(tmp_path)
    cfg = bf.inference_config(imports=[PWNED], initialize=[PWNED], run=[PWNED], device=PWNED, network=PWNED)
    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights(), config=cfg)
    _, img = _phantom_image(tmp_path, 3, spacing=(6.0, 6.0, 6.0))
    out = _predict(bundle, img).predict(img)
    assert out.shape == nib_shape(img)
    assert not (tmp_path / "PWNED").exists()


def nib_shape(path):
    import nibabel as nib

    return nib.load(str(path)).shape


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_payload_in_model_pt_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    weights = {"model": _random_weights(), "evil": _Payload(marker)}
    bundle = bf.write_bundle(tmp_path / "bundle", weights)
    from medseg.adapters.monai_bundle.bundle import load_bundle

    with pytest.raises(CheckpointError) as err:
        load_bundle(bundle)
    assert "\n" not in str(err.value) and "weights-only" in str(err.value)
    assert not marker.exists()


def test_torchscript_only_is_refused(tmp_path):
    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights())
    (bundle / "models" / "model.pt").rename(bundle / "models" / "model.ts")
    from medseg.adapters.monai_bundle.bundle import load_bundle

    with pytest.raises(CheckpointError, match="does not run TorchScript"):
        load_bundle(bundle)


def test_nested_and_dataparallel_state_dicts_load(tmp_path):
    from medseg.adapters.monai_bundle.bundle import load_bundle

    sd = _random_weights(3)
    for i, weights in enumerate(({"state_dict": sd}, {"model": {f"module.{k}": v for k, v in sd.items()}}, sd)):
        b = load_bundle(bf.write_bundle(tmp_path / f"b{i}", weights))
        net = b.build_network()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())


def test_weights_for_another_network_are_refused(tmp_path):
    from medseg.adapters.monai_bundle.bundle import load_bundle

    cfg = bf.inference_config()
    cfg["network_def"]["channels"] = [8, 16, 32]
    b = load_bundle(bf.write_bundle(tmp_path / "b", _random_weights(), config=cfg))
    with pytest.raises(CheckpointError, match="do not fit the network_def"):
        b.build_network()


# ------------------------------------------------------------------------------------ reading


def test_format_table_detects_bundles_and_not_nnunet_folders(tmp_path):
    from medseg.inference import load as external

    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights())
    assert external.detect(bundle).name == "monai_bundle"
    assert external.detect(tmp_path) is None
    (tmp_path / "nn").mkdir()
    for f in ("plans.json", "dataset.json"):
        (tmp_path / "nn" / f).write_text("{}")
    assert external.detect(tmp_path / "nn").name == "nnunet"
    summary = external.run_summary(bundle)
    assert summary["model"]["name"] == "monai_bundle:UNet" and len(summary["file_sha256"]) == 64
    assert [lab["name"] for lab in summary["labels"]["labels"]] == ["liver", "spleen"]


def test_labels_from_metadata_variants(tmp_path):
    from medseg.adapters.monai_bundle.bundle import load_bundle

    def labels(meta, cfg=None, name="b"):
        return load_bundle(bf.write_bundle(tmp_path / name, _random_weights(), config=cfg, meta=meta)).labels

    assert labels(bf.metadata({"0": "background", "1": "liver", "2": "spleen"})).names == ["liver", "spleen"]
    md = bf.metadata()
    md["labels"] = {"liver": 2, "spleen": 1, "background": 0}  # a labels dict wins over channel_def
    t = labels(md, name="b2")
    assert [(lab.index, lab.name) for lab in t.labels] == [(1, "spleen"), (2, "liver")]
    md = bf.metadata()
    del md["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert labels(md, name="b3").names == ["label_1", "label_2"]
    with pytest.raises(CheckpointError, match="outside the network's 3 classes"):
        labels(bf.metadata({"0": "background", "3": "kidney"}), name="b4")
    # one sigmoid channel: a binary map named from channel 0
    cfg = bf.inference_config()
    cfg["network_def"]["out_channels"] = 1
    cfg["postprocessing"]["transforms"][0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
    cfg["postprocessing"]["transforms"][2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
    from monai.networks.nets import UNet

    kw = {k: v for k, v in cfg["network_def"].items() if k != "_target_"}
    b = load_bundle(
        bf.write_bundle(tmp_path / "b5", UNet(**kw).state_dict(), config=cfg, meta=bf.metadata({"0": "spleen"}))
    )
    assert [(lab.index, lab.name) for lab in b.labels.labels] == [(1, "spleen")]
    # several sigmoid channels overlap: not one label map
    cfg["network_def"]["out_channels"] = 3
    with pytest.raises(ConfigError, match="overlapping structures"):
        load_bundle(bf.write_bundle(tmp_path / "b6", _random_weights(), config=cfg))


def test_options_that_do_not_apply_are_refused(tmp_path):
    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights())
    with pytest.raises(ConfigError, match="do not apply to MONAI bundles"):
        _predict(bundle, None, amp="bf16")
    with pytest.raises(CheckpointError, match="one models/model.pt"):
        _predict(bundle, None, folds=[0])


def test_preprocessing_that_drops_the_geometry_is_refused(tmp_path, one_thread):
    cfg = bf.inference_config()
    cfg["preprocessing"]["transforms"][-1] = {"_target_": "EnsureTyped", "keys": "image", "data_type": "numpy"}
    bundle = bf.write_bundle(tmp_path / "bundle", _random_weights(), config=cfg)
    _, img = _phantom_image(tmp_path, 3, spacing=(6.0, 6.0, 6.0))
    with pytest.raises(CheckpointError, match="drops the image's geometry"):
        _predict(bundle, img).predict(img)


@pytest.mark.parametrize(
    "net",
    [
        {
            "_target_": "monai.networks.nets.SegResNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "init_filters": 8,
            "blocks_down": [1, 1],
            "blocks_up": [1],
            "dropout_prob": 0.2,
        },
        {
            "_target_": "DynUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "kernel_size": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "upsample_kernel_size": [[2, 2, 2]] * 2,
            "filters": [4, 8, 16],
            "norm_name": "instance",
            "deep_supervision": True,
            "deep_supr_num": 1,
        },
        {
            "_target_": "AttentionUnet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8],
            "strides": [2],
        },
        {
            "_target_": "SwinUNETR",
            "spatial_dims": 3,
            "img_size": 64,
            "in_channels": 1,
            "out_channels": 3,
            "feature_size": 12,
            "depths": [1, 1, 1, 1],
            "use_checkpoint": False,
        },
    ],
)
def test_supported_networks_build_from_network_def(tmp_path, net, one_thread):
    """Each network of the zoo's bundles, built from its literal network_def with the bundle's weights
    (SwinUNETR's img_size, which current MONAI refuses and which never changed the weights, is dropped)."""
    import monai.networks.nets as nets

    from medseg.adapters.monai_bundle.bundle import load_bundle

    name = net["_target_"].rsplit(".", 1)[-1]
    kw = {k: v for k, v in net.items() if k not in ("_target_", "img_size")}
    torch.manual_seed(1)
    ref = getattr(nets, name)(**kw).eval()
    bundle = load_bundle(bf.write_bundle(tmp_path / "b", ref.state_dict(), config=bf.inference_config(network_def=net)))
    built = bundle.build_network()
    assert bundle.network == name and type(built) is type(ref)
    n = 64 if name == "SwinUNETR" else 32  # SwinUNETR's instance norms need more than one voxel at the bottom
    x = torch.randn(1, 1, n, n, n)
    with torch.no_grad():
        assert torch.equal(built(x), ref(x))
