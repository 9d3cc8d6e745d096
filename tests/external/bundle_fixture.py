"""Write MONAI bundle folders for the tests: a spleen_ct_segmentation-style layout around a tiny MONAI UNet.

``train_unet`` trains MONAI's ``UNet`` for a few iterations on one medseg phantom
(liver, spleen) with the bundle's own preprocessing, so its label maps follow the
anatomy; ``write_bundle`` writes ``configs/inference.json`` (or ``.yaml``),
``configs/metadata.json`` and ``models/model.pt`` (a state dict). The configs carry
the glue keys of real zoo bundles (``imports``, ``device``, ``network``,
``dataset``, ``evaluator``, ``checkpointloader``, ``initialize``, ``run``) with
their ``$`` expressions: MONAI's runner needs them, medseg must never read them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

#: The labels the tiny model learns (phantom label values; kidneys are background here).
LABELS = {"0": "background", "1": "liver", "2": "spleen"}
PIXDIM = [6.0, 6.0, 6.0]
ROI = [24, 24, 24]
UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "instance",
}

PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "@image_key"},
    {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
    {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
    {
        "_target_": "ScaleIntensityRanged",
        "keys": "@image_key",
        "a_min": -160,
        "a_max": 240,
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    },
    {
        "_target_": "CropForegroundd",
        "keys": "@image_key",
        "source_key": "@image_key",
        "margin": 2,
        "allow_smaller": True,
    },
    {"_target_": "EnsureTyped", "keys": "@image_key", "device": "@device"},
]


def inference_config(**changes) -> dict:
    """A spleen_ct_segmentation-style inference.json (``changes`` replace top-level keys)."""
    cfg = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "pixdim": PIXDIM,
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/nonexistent",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "displayable_configs": {"sw_batch_size": 2, "sw_overlap": 0.5},
        "network_def": dict(UNET),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": copy.deepcopy(PREPROCESSING)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": ROI,
            "sw_batch_size": "@displayable_configs#sw_batch_size",
            "overlap": "@displayable_configs#sw_overlap",
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "@image_key",
                    "meta_key_postfix": "meta_dict",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "separate_folder": False,
                },
            ],
        },
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": True,
        },
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }
    cfg.update(changes)
    return cfg


def metadata(labels: dict | None = None, **changes) -> dict:
    md = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "name": "Phantom abdomen",
        "monai_version": "1.6.1",
        "task": "phantom liver/spleen",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": ROI,
                    "dtype": "float32",
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 3,
                    "spatial_shape": ROI,
                    "dtype": "float32",
                    "channel_def": dict(labels or LABELS),
                }
            },
        },
    }
    md.update(changes)
    return md


def write_bundle(
    folder: Path, state_dict: dict, *, config: dict | None = None, meta: dict | None = None, yaml_config: bool = False
) -> Path:
    import torch

    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else inference_config()
    if yaml_config:
        import yaml

        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(cfg, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta if meta is not None else metadata(), indent=2))
    torch.save(state_dict, folder / "models" / "model.pt")
    return folder


def write_nifti(volume, path: Path) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(volume.array), np.asarray(volume.affine)), str(path))
    return Path(path)


def train_unet(iterations: int = 80, seed: int = 0) -> dict:
    """A state dict of ``UNET`` trained on phantom 1 (liver=1, spleen=2; 6 mm, the bundle's preprocessing)."""
    import torch
    from monai.data import MetaTensor
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import Compose, Orientationd, ScaleIntensityRanged, Spacingd

    from medseg.data.phantoms import make_phantom

    torch.manual_seed(seed)
    case = make_phantom(1, spacing=(4.0, 4.0, 4.0), fov_mm=(260.0, 200.0, 140.0))
    lab = np.where(np.asarray(case.labels.array) <= 2, case.labels.array, 0).astype(np.float32)
    aff = torch.as_tensor(case.image.affine, dtype=torch.float64)
    d = {
        "image": MetaTensor(torch.as_tensor(np.asarray(case.image.array, np.float32))[None], affine=aff),
        "label": MetaTensor(torch.as_tensor(lab)[None], affine=aff.clone()),
    }
    d = Compose(
        [
            Orientationd(keys=["image", "label"], axcodes="RAS"),
            Spacingd(keys=["image", "label"], pixdim=PIXDIM, mode=("bilinear", "nearest")),
            ScaleIntensityRanged(keys="image", a_min=-160, a_max=240, b_min=0.0, b_max=1.0, clip=True),
        ]
    )(d)
    img, seg = d["image"].as_tensor()[None], d["label"].as_tensor()[None].long()
    kw = {k: v for k, v in UNET.items() if k != "_target_"}
    net = UNet(**kw)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    pad = [(0, (-n) % 4) for n in img.shape[2:]]  # the whole volume per step, padded to the UNet's factor 4
    x = torch.nn.functional.pad(img, [p for a in reversed(pad) for p in a])
    y = torch.nn.functional.pad(seg, [p for a in reversed(pad) for p in a])
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is 10-30x faster than two on a busy 2-core machine
    try:
        for _ in range(iterations):
            opt.zero_grad()
            out = loss(net(x), y)
            out.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def run_monai_bundle(bundle: Path, image: Path, out_dir: Path, config_name: str = "inference.json"):
    """The reference: MONAI's own ``ConfigParser`` on the bundle's config (it evaluates the bundle's
    expressions: it is the tool being compared against), the bundle's network, weights, preprocessing,
    inferer and postprocessing run as ``SupervisedEvaluator`` runs them on one case. Returns
    ``(labels (x, y, z), probabilities (C, x, y, z) or None)`` from the postprocessed prediction."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config_name))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["output_dir"] = str(out_dir)
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")
    ck = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(ck.get("model", ck) if isinstance(ck, dict) and "model" in ck else ck)
    net.eval()
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    key = parser.get("image_key", "image")
    batch = list_data_collate([pre({key: str(image)})])
    with torch.no_grad():
        batch["pred"] = inferer(batch[key], net)
    item, probs = decollate_batch(batch)[0], None
    for t in post.transforms:  # Compose's order; the scores just before AsDiscreted are kept for comparison
        if type(t).__name__ == "AsDiscreted":
            probs = np.asarray(item["pred"].detach().cpu().numpy())
        item = t(item)
    return np.asarray(item["pred"].detach().cpu().numpy())[0], probs
