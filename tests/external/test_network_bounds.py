"""plans.json and MONAI network_def values are checked against bounds before a network is built (issue 34).

Each case is a hostile value a model folder could carry: before the checks they gave AssertionError or
TypeError tracebacks, built silently (kernel size 0), or asked the allocator for hundreds of GB. Now each
is one line naming the file and the key, and nothing large is allocated.
"""

from __future__ import annotations

import copy
import json
import resource
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_nnunet_loading import PLAIN_ARCH, _plans, make_folder  # noqa: E402

from medseg.errors import CheckpointError, ConfigError  # noqa: E402

pytest.importorskip("dynamic_network_architectures", reason="nnU-Net networks need dynamic_network_architectures")


def _rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _conf(**arch_changes):
    conf = _plans()["configurations"]["3d_fullres"]
    conf["architecture"] = copy.deepcopy(PLAIN_ARCH)
    for k, v in arch_changes.items():
        if v is _DROP:
            del conf["architecture"]["arch_kwargs"][k]
        else:
            conf["architecture"]["arch_kwargs"][k] = v
    return conf


_DROP = object()


@pytest.mark.parametrize(
    "change, key",
    [
        ({"strides": "2"}, "arch_kwargs.strides"),
        ({"bogus": 1}, "arch_kwargs.bogus"),
        ({"nonlin_kwargs": {"slope": 3}}, "arch_kwargs.nonlin_kwargs['slope']"),
        ({"nonlin_kwargs": {"negative_slope": "steep"}}, "arch_kwargs.nonlin_kwargs['negative_slope']"),
        ({"n_stages": 4}, "arch_kwargs.features_per_stage"),
        ({"n_stages": 10**6}, "arch_kwargs.n_stages"),
        ({"kernel_sizes": [[0, 0, 0]] * 3}, "arch_kwargs.kernel_sizes[0]"),
        ({"kernel_sizes": [[3, 3]] * 3}, "arch_kwargs.kernel_sizes[0]"),
        ({"features_per_stage": [4, 8, 100000]}, "arch_kwargs.features_per_stage[2]"),
        ({"features_per_stage": [4, 8, 16.0]}, "arch_kwargs.features_per_stage[2]"),
        ({"n_conv_per_stage": [2, 2, 10**5]}, "arch_kwargs.n_conv_per_stage[2]"),
        ({"n_conv_per_stage_decoder": [2]}, "arch_kwargs.n_conv_per_stage_decoder"),
        ({"conv_op": "torch.nn.Conv1d"}, "arch_kwargs.conv_op"),
        ({"conv_op": "torch.nn.Conv2d"}, "arch_kwargs.norm_op"),
        ({"norm_op": "torch.nn.InstanceNorm2d"}, "arch_kwargs.norm_op"),
        ({"norm_op_kwargs": {"eps": 1e-5, "affine": "yes"}}, "arch_kwargs.norm_op_kwargs['affine']"),
        ({"dropout_op": "torch.nn.Dropout3d", "dropout_op_kwargs": {"p": 7}}, "arch_kwargs.dropout_op_kwargs['p']"),
        ({"conv_bias": "true"}, "arch_kwargs.conv_bias"),
        ({"n_conv_per_stage": _DROP}, "arch_kwargs.n_conv_per_stage"),
    ],
)
def test_hostile_arch_kwargs_are_one_line_naming_the_key(change, key):
    from medseg.adapters.nnunet.folder import architecture, build_network

    with pytest.raises(CheckpointError) as err:
        cls, kw = architecture(_conf(**change), path="plans.json")
        build_network(cls, kw, 1, 3, path="plans.json")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("plans.json: ") and key in msg, msg


@pytest.mark.parametrize(
    "patch, why",
    [
        ([4096, 4096, 4096], "MEDSEG_MAX_VOXELS"),
        ([16, 16], "3 positive whole numbers"),
        ([16, 16, 0], "3 positive whole numbers"),
        ([18, 16, 16], "total stride"),
    ],
)
def test_patch_size_is_bounded(patch, why):
    from medseg.adapters.nnunet.folder import architecture

    conf = _conf()
    conf["patch_size"] = patch
    with pytest.raises(CheckpointError, match=why) as err:
        architecture(conf, path="plans.json", where="configurations.3d_fullres.")
    assert "configurations.3d_fullres.patch_size" in str(err.value)


_BIG = r"""
import json, sys
from medseg.errors import CheckpointError
from medseg.adapters.nnunet.folder import architecture, build_network
try:
    cls, kw = architecture(json.loads(sys.argv[1]), path="plans.json")
    build_network(cls, kw, 1, 3, path="plans.json")
except CheckpointError as exc:
    print(exc)
"""


def _limited(gb: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gb << 30, gb << 30))

    return limit


def test_parameter_count_is_bounded_before_allocating(monkeypatch):
    """Every value within its bound, the whole too large (about 10**10 parameters, 40 GB): counted on the meta
    device and refused unallocated. Run under a 4 GB address-space limit, so that an attempt to build it fails
    there (as it did before the bound) instead of filling a shared machine."""
    import subprocess

    conf = _conf(features_per_stage=[2048] * 3, kernel_sizes=[[7, 7, 7]] * 3)
    t = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", _BIG, json.dumps(conf)],
        capture_output=True,
        text=True,
        preexec_fn=_limited(4),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parameters, over the limit of 1,000,000,000 (MEDSEG_MAX_PARAMETERS)" in r.stdout, r.stdout
    assert time.monotonic() - t < 60
    from medseg.adapters.nnunet.folder import architecture, build_network

    monkeypatch.setenv("MEDSEG_MAX_PARAMETERS", "1000")
    cls, kw = architecture(_conf(), path="plans.json")
    with pytest.raises(CheckpointError, match="over the limit of 1,000 "):
        build_network(cls, kw, 1, 3)


def test_folder_with_absurd_features_is_refused_at_loading(tmp_path):
    """Through load_nnunet_folder: one line naming plans.json and the configuration's key, no allocation."""
    from medseg.adapters.nnunet.folder import load_nnunet_folder

    plans = _plans(copy.deepcopy(PLAIN_ARCH))
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 100000]
    plans["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"]["order"] = "cubic"
    folder = make_folder(tmp_path, plans=plans)
    with pytest.raises(CheckpointError) as err:
        load_nnunet_folder(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(folder / "plans.json"))
    assert "configurations.3d_fullres.architecture.arch_kwargs.features_per_stage[2] = 100000" in msg
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 16]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(CheckpointError, match=r"resampling_fn_data_kwargs\['order'\] = 'cubic'"):
        load_nnunet_folder(folder)


def test_older_plans_format_is_bounded_too():
    from medseg.adapters.nnunet.folder import architecture

    old = {
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": 4,
        "unet_max_num_features": 10**6,
        "n_conv_per_stage_encoder": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "patch_size": [16, 16, 16],
        "conv_kernel_sizes": [[3, 3, 3]] * 3,
        "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    }
    with pytest.raises(CheckpointError, match="unet_max_num_features = 1000000"):
        architecture(old, path="plans.json")
    old["unet_max_num_features"] = 16
    old["pool_op_kernel_sizes"] = "2"
    with pytest.raises(CheckpointError, match="pool_op_kernel_sizes"):
        architecture(old, path="plans.json")


# ------------------------------------------------------------------------------------ MONAI bundles


def _bundle(tmp_path, **network_changes):
    import bundle_fixture as bf
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    sd = UNet(**{k: v for k, v in bf.UNET.items() if k != "_target_"}).state_dict()
    cfg = bf.inference_config()
    cfg["network_def"].update(network_changes)
    return bf.write_bundle(tmp_path / "b", sd, config=cfg)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"channels": [4, 8, 1e6]}, "network_def.channels"),
        ({"channels": [4, 8, 1000000]}, "network_def.channels"),
        ({"strides": ["2", 2]}, "network_def.strides"),
        ({"num_res_units": 10**6}, "network_def.num_res_units"),
        ({"kernel_size": 0}, "network_def.kernel_size"),
        ({"out_channels": 10**7}, "network_def.out_channels"),
        ({"act": "no_such_activation"}, "network_def: UNet cannot be built"),
    ],
)
def test_bundle_network_def_is_bounded_before_building(tmp_path, change, key):
    """channels [4, 8, 1e6]/1000000 took 1.7 GB (maxrss) before the weights were refused; now nothing is built."""
    from medseg.adapters.monai_bundle.bundle import load_bundle

    folder = _bundle(tmp_path, **change)
    before = _rss_mb()
    with pytest.raises(ConfigError) as err:
        load_bundle(folder).build_network()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("b/configs/inference.json: ") and key in msg, msg
    assert _rss_mb() - before < 200


def test_bundle_parameter_count_is_bounded(tmp_path, monkeypatch):
    from medseg.adapters.monai_bundle.bundle import load_bundle

    monkeypatch.setenv("MEDSEG_MAX_PARAMETERS", "1000")
    with pytest.raises(
        ConfigError, match=r"network_def: UNet with these values has [\d,]+ parameters, over the limit of 1,000"
    ):
        load_bundle(_bundle(tmp_path))
    monkeypatch.delenv("MEDSEG_MAX_PARAMETERS")
    assert load_bundle(tmp_path / "b").build_network() is not None
