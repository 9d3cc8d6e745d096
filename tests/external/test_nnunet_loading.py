"""nnU-Net v2 model folders: safe loading, network from plans.json, labels from dataset.json, refusals.

These build small folders in nnU-Net's layout by hand (no nnunetv2 needed; the
network tests need dynamic_network_architectures). The comparison with nnU-Net's
own predictor is in test_nnunet_agreement.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import medseg_cli, run_volumetry
from nnunet_plans import PLAIN_ARCH, plans_json

from medseg.errors import CheckpointError


def _plans(arch=PLAIN_ARCH, **conf_extra):
    return plans_json(arch, **conf_extra)


def _net(heads, in_channels=1, conf=None):
    pytest.importorskip(
        "dynamic_network_architectures", reason="nnU-Net networks need dynamic_network_architectures (the nnunet extra)"
    )
    from medseg.adapters.nnunet.folder import architecture, build_network

    cls, kw = architecture(conf or _plans()["configurations"]["3d_fullres"])
    torch.manual_seed(0)
    return build_network(cls, kw, in_channels, heads)


def make_folder(
    root: Path,
    *,
    labels=None,
    trainer="nnUNetTrainer",
    plans=None,
    extra=None,
    folds=("0",),
    heads=None,
    configuration="3d_fullres",
    regions_class_order=None,
) -> Path:
    labels = labels or {"background": 0, "liver": 1, "spleen": 2}
    folder = root / "Dataset900_T" / f"{trainer}__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}
    if regions_class_order:
        dataset["regions_class_order"] = regions_class_order
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps(plans or _plans()))
    if heads is None:
        heads = len(labels) if not regions_class_order else len(regions_class_order)
    # weights of the planned network; a stand-in tensor where only the loading is under test
    weights = {"w": torch.zeros(2)} if extra else _net(heads).state_dict()
    for f in folds:
        (folder / f"fold_{f}").mkdir()
        ckpt = {
            "network_weights": weights,
            "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None,
            # nnU-Net's training log holds numpy scalars: what a plain weights-only load refuses
            "logging": {
                "mean_fg_dice": [np.float64(0.5)],
                "ema_fg_dice": [np.float64(0.5)],
                "epoch_end_timestamps": [1.0],
            },
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {"plans": {}, "configuration": configuration, "fold": f, "dataset_json": {}},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": (0, 1, 2),
            **(extra or {}),
        }
        torch.save(ckpt, folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder


class _Payload:
    """Unpickling this would create ``marker`` (builtins.open): the stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_is_refused_and_never_runs(tmp_path):
    from medseg.adapters.nnunet.folder import load_nnunet_folder

    marker = tmp_path / "payload_ran"
    folder = make_folder(tmp_path, extra={"evil": _Payload(marker)})
    with pytest.raises(CheckpointError) as err:
        load_nnunet_folder(folder)
    msg = str(err.value)
    assert "\n" not in msg and "Unsupported global" in msg and "io.open" in msg
    assert not marker.exists()


def test_payload_refused_through_the_cli_with_one_line(tmp_path):
    marker = tmp_path / "payload_ran"
    folder = make_folder(tmp_path, extra={"evil": _Payload(marker)})
    img = tmp_path / "img.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(img))
    r = medseg_cli("predict", "--model", folder, img, "--out", tmp_path / "o", "--no-progress")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a loadable nnU-Net checkpoint" in lines[0], r.stderr
    assert not marker.exists()


def test_postprocessing_pkl_is_never_unpickled(tmp_path):
    from medseg.inference.load import load_predictor

    marker = tmp_path / "payload_ran"
    folder = make_folder(tmp_path)
    import pickle

    (folder / "postprocessing.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (folder / "crossval_results_folds_0").mkdir()
    (folder / "crossval_results_folds_0" / "postprocessing.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    pred = load_predictor(folder, device="cpu")
    assert pred.labels.names == ["liver", "spleen"]
    assert not marker.exists()


def test_numpy_scalars_load_and_weights_fit_exactly(tmp_path):
    from medseg.adapters.nnunet.folder import load_nnunet_checkpoint, load_nnunet_folder

    folder = make_folder(tmp_path, folds=("0", "1", "all"))
    ck = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert float(ck["_best_ema"]) == 0.5 and type(ck["_best_ema"]).__name__ == "float64"
    model = load_nnunet_folder(folder)
    assert model.folds == ["0", "1"] and model.mirror_axes == (0, 1, 2)  # as nnU-Net: fold_all only when named
    assert load_nnunet_folder(folder, folds=["all"]).folds == ["all"]
    nets = model.networks()
    ref = _net(3)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(nets[0](x), ref.eval()(x))
    assert load_nnunet_folder(folder, folds=[1]).folds == ["1"]
    for d in ("fold_0", "fold_1"):
        (folder / d / "checkpoint_final.pth").rename(folder / d / "checkpoint_best.pth")
    assert load_nnunet_folder(folder).folds == ["all"]  # no numbered fold left: the model trained on every case
    assert load_nnunet_folder(folder, checkpoint="best").folds == ["0", "1"]
    (folder / "fold_all" / "checkpoint_final.pth").unlink()
    with pytest.raises(CheckpointError, match="checkpoint_final.pth"):
        load_nnunet_folder(folder)


def test_region_labels_painted_in_order(tmp_path):
    from medseg.adapters.nnunet.folder import load_nnunet_folder

    labels = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": 3}
    model = load_nnunet_folder(make_folder(tmp_path, labels=labels, regions_class_order=[1, 2, 3]))
    lab = model.labels
    assert lab.regions and lab.heads == 3 and lab.regions_class_order == (1, 2, 3)
    assert [(x.index, x.name) for x in lab.table.labels] == [(1, "whole_tumor"), (2, "tumor_core"), (3, "enhancing")]
    # painting: each region's voxels (sigmoid > 0.5) get its index, later regions over earlier ones
    from medseg.adapters.nnunet import inference as nn

    logits = torch.full((3, 2, 2, 2), -5.0, dtype=torch.half)
    logits[0, 0] = 5  # whole tumour in the first plane
    logits[1, 0, 0] = 5  # core in one row of it
    logits[2, 0, 0, 0] = 5  # enhancing in one voxel of that
    props = {
        "spacing": [2.0, 2.0, 2.0],
        "network_spacing": [2.0, 2.0, 2.0],
        "shape_after_cropping": (2, 2, 2),
        "shape_before_cropping": (3, 2, 2),
        "bbox": [[1, 3], [0, 2], [0, 2]],
    }
    seg, _ = nn.export(logits, props, model)
    assert seg.shape == (3, 2, 2)
    assert (seg[0] == 0).all()  # outside the crop
    assert seg[1, 0, 0] == 3 and seg[1, 0, 1] == 2 and (seg[1, 1] == 1).all() and (seg[2] == 0).all()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"trainer": "nnUNetTrainerMedNeXt"}, "trainer 'nnUNetTrainerMedNeXt' is not supported"),
        ({"configuration": "3d_cascade_fullres"}, "cascade"),
        (
            {"plans_arch": "dynamic_network_architectures.architectures.unetr.UNETR"},
            "network class .*UNETR.* is not supported",
        ),
        ({"plans_arch": "evil.module.Net"}, "not supported"),
        ({"nonlin": "os.system"}, "arch_kwargs.nonlin = 'os.system' is not a class"),
    ],
)
def test_unsupported_models_are_refused_with_one_line(tmp_path, change, match):
    from medseg.adapters.nnunet.folder import load_nnunet_folder

    plans = _plans()
    conf = plans["configurations"]["3d_fullres"]
    if "configuration" in change:
        plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    if "plans_arch" in change:
        conf["architecture"] = {**PLAIN_ARCH, "network_class_name": change["plans_arch"]}
    if "nonlin" in change:
        conf["architecture"] = json.loads(json.dumps(PLAIN_ARCH))
        conf["architecture"]["arch_kwargs"]["nonlin"] = change["nonlin"]
    folder = make_folder(
        tmp_path,
        plans=plans,
        trainer=change.get("trainer", "nnUNetTrainer"),
        configuration=change.get("configuration", "3d_fullres"),
    )
    with pytest.raises(CheckpointError, match=match) as err:
        load_nnunet_folder(folder).networks()
    assert "\n" not in str(err.value)


def test_older_plans_format_builds_the_same_network(tmp_path):
    pytest.importorskip(
        "dynamic_network_architectures", reason="nnU-Net networks need dynamic_network_architectures (the nnunet extra)"
    )
    from medseg.adapters.nnunet.folder import architecture

    old = {
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": 4,
        "unet_max_num_features": 16,
        "n_conv_per_stage_encoder": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "patch_size": [16, 16, 16],
        "conv_kernel_sizes": [[3, 3, 3]] * 3,
        "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    }
    new = _plans()["configurations"]["3d_fullres"]
    assert architecture(old) == architecture(new)


def test_medseg_checkpoint_options_refused_for_plain_files(tmp_path):
    from medseg.inference.load import load_predictor

    with pytest.raises(CheckpointError, match="not one"):
        load_predictor(tmp_path / "x.pt", folds=[0])


def test_residual_encoder_unet_from_plans(tmp_path):
    """nnU-Net's ResEnc planner writes ResidualEncoderUNet with n_blocks_per_stage: built and loaded key for key."""
    from medseg.adapters.nnunet.folder import load_nnunet_checkpoint, load_nnunet_folder

    arch = json.loads(json.dumps(PLAIN_ARCH))
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kw = arch["arch_kwargs"]
    kw["n_blocks_per_stage"] = [1, 2, 2]
    del kw["n_conv_per_stage"]
    kw["n_conv_per_stage_decoder"] = [1, 1]
    plans = _plans(arch)
    folder = make_folder(tmp_path, plans=plans, trainer="nnUNetTrainer_onlyMirror01", heads=3)
    # the folder's weights were made for the plain U-Net: they must not fit
    with pytest.raises(CheckpointError, match="do not fit"):
        load_nnunet_folder(folder).networks()
    res = _net(3, conf=plans["configurations"]["3d_fullres"])
    assert type(res).__name__ == "ResidualEncoderUNet"
    ck = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    ck["network_weights"] = res.state_dict()
    torch.save(ck, folder / "fold_0" / "checkpoint_final.pth")
    net = load_nnunet_folder(folder).networks()[0]
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), res.eval()(x))


def test_medseg_run_pipeline_takes_an_nnunet_folder(tmp_path):
    """``medseg run ... --set predict.model=FOLDER``: validated, recorded (one hash over the folder's files), run."""
    import nibabel as nib

    folder = make_folder(tmp_path / "m")
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    img = np.zeros((24, 22, 20), np.float32)
    img[3:20, 4:18, 2:18] = rng.normal(60, 30, size=(17, 14, 16))
    nib.save(nib.Nifti1Image(img, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "in" / "c1.nii.gz"))
    out = tmp_path / "run"
    run, vols = run_volumetry(tmp_path / "in", out, folder)
    assert run["model"]["name"] == "nnunet:PlainConvUNet" and len(run["model"]["sha256"]) == 64
    assert sorted(vols["structure"]) == ["liver", "spleen"] and set(vols["label_table"]) == {"Dataset900_T"}
    assert nib.load(str(out / "cases" / "c1" / "labels.nii.gz")).shape == img.shape
