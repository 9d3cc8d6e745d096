"""nnU-Net v2 trained-model folders as medseg models.

A folder ``DatasetXXX_Name/Trainer__Plans__configuration/`` holds ``dataset.json``,
``plans.json`` and ``fold_N/checkpoint_final.pth``. This module reads it without
running anything from it:

- checkpoints load with ``torch.load(weights_only=True)`` inside
  ``torch.serialization.safe_globals`` naming only the numpy types an nnU-Net
  checkpoint pickles (numpy scalars in its training log); anything else in the
  pickle is refused with one line and never called. ``postprocessing.pkl`` is
  never opened;
- the network comes from ``plans.json`` (``architecture.network_class_name`` and
  ``arch_kwargs``, or the older ``UNet_class_name`` format) for ``PlainConvUNet``
  and ``ResidualEncoderUNet``; the classes named in ``arch_kwargs`` (conv, norm,
  dropout, non-linearity) are looked up in a fixed table, never imported by name;
- labels come from ``dataset.json`` (region-based labels are painted in
  ``regions_class_order``, as nnU-Net does).

Cascades, unknown network classes, custom readers and trainers that may change
the architecture are refused with one line naming what is not supported.
The networks are those of ``dynamic_network_architectures`` (the small
pure-PyTorch package nnU-Net builds them with), an optional dependency:
``pip install dynamic-network-architectures`` (or ``pip install medseg[nnunet]``).
Its state-dict keys are nnU-Net's, so the weights load exactly.

Preprocessing, sliding windows and export follow nnU-Net: see
``medseg.adapters.nnunet.inference``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg import safe_json
from medseg.adapters import network_bounds as nb
from medseg.errors import CheckpointError, OptionalDependencyError
from medseg.io.limits import max_voxels
from medseg.labels import Label, LabelTable

CHECKPOINT_NAMES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
SUPPORTED_NETWORKS = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet",
}
SUPPORTED_NORMALIZATION = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")
SUPPORTED_READERS = (None, "SimpleITKIO", "NibabelIO")
SUPPORTED_RESAMPLING = "resample_data_or_seg_to_shape"
#: Trainers that keep nnU-Net's default network (they change epochs, mirroring, augmentation, loss or
#: optimiser only); any other trainer may build another network and is refused.
_TRAINER_OK = re.compile(
    r"^nnUNetTrainer("
    r"|_\d+epochs?(_NoMirroring)?"
    r"|NoMirroring|_onlyMirror01(_\d+ep)?"
    r"|NoDA|DA\d+\w*|DAOrd0|_noDummy2DDA|_DASegOrd0\w*"
    r"|CELoss|DiceLoss\w*|DiceCELoss\w*|Topk\d*Loss\w*|_\w*Loss\w*"
    r"|_probabilisticOversampling\w*"
    r"|_Adam\w*|_SGD\w*|_Adan\w*|_\w*[Ll]r\w*|_Warmup\w*|_?NoDeepSupervision"
    r")$"
)
_TORCH_CLASSES = {  # arch_kwargs entries nnU-Net would import by name -> the classes, from a fixed table
    **{
        f"{p}{n}": ("torch.nn", n)
        for n in ("Conv1d", "Conv2d", "Conv3d")
        for p in ("torch.nn.modules.conv.", "torch.nn.")
    },
    **{
        f"{p}{n}": ("torch.nn", n)
        for n in ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
        for p in ("torch.nn.modules.instancenorm.", "torch.nn.")
    },
    **{
        f"{p}{n}": ("torch.nn", n)
        for n in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
        for p in ("torch.nn.modules.batchnorm.", "torch.nn.")
    },
    **{
        f"{p}{n}": ("torch.nn", n)
        for n in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")
        for p in ("torch.nn.modules.dropout.", "torch.nn.")
    },
    **{
        f"{p}{n}": ("torch.nn", n)
        for n in ("LeakyReLU", "ReLU", "PReLU", "GELU")
        for p in ("torch.nn.modules.activation.", "torch.nn.")
    },
}
_INSTALL = "pip install dynamic-network-architectures  (or: pip install 'medseg[nnunet]')"


def is_nnunet_folder(path) -> bool:
    """Cheap: a folder holding ``plans.json`` and ``dataset.json`` (the ``nnunet`` format's detector)."""
    try:
        p = Path(path)
        return p.is_dir() and (p / "plans.json").is_file() and (p / "dataset.json").is_file()
    except (OSError, TypeError, ValueError):
        return False


def _numpy_safe_globals() -> list:
    """Exactly the numpy objects an nnU-Net checkpoint pickles: scalars (``np.float64`` values in its
    training log) and the dtypes they are rebuilt with. Nothing that can call other code."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return [scalar, np.dtype, *dtypes]


def load_nnunet_checkpoint(path) -> dict:
    """``checkpoint_final.pth`` read without running code: weights-only unpickling with the numpy scalar
    types allowed; a pickle naming anything else is refused (``CheckpointError``), and never called."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError("nnU-Net checkpoint not found", path=p)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any refusal or damage -> one line, never a traceback
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(exc).__name__)
        m = re.search(r"Unsupported global: GLOBAL (\S+)", why)
        why = f"it pickles {m.group(1)}, which is not an allowed global (Unsupported global)" if m else why[:200]
        raise CheckpointError(
            f"not a loadable nnU-Net checkpoint ({why}); medseg reads nnU-Net checkpoints weights-only "
            "(tensors, plain data and numpy scalars) and never runs code from them",
            path=p,
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise CheckpointError("not an nnU-Net checkpoint: no 'network_weights' mapping", path=p)
    init = ckpt.get("init_args")
    if not isinstance(init, dict) or not isinstance(init.get("configuration"), str):
        raise CheckpointError("not an nnU-Net v2 checkpoint: no init_args.configuration", path=p)
    return ckpt


def _read_json(path: Path) -> dict:
    data = safe_json.load_file(path, error=CheckpointError)  # bounded: size, depth, values (one line naming the file)
    if not isinstance(data, dict):
        raise CheckpointError("expected a JSON object", path=path)
    return data


def configuration_dict(plans: dict, name: str, *, path=None) -> dict:
    """A configuration with its ``inherits_from`` chain resolved (as nnU-Net's PlansManager does)."""
    confs = plans.get("configurations") or {}
    if name not in confs:
        raise CheckpointError(f"plans.json has no configuration {name!r} (has {sorted(confs)})", path=path)
    conf = copy.deepcopy(confs[name])
    seen = {name}
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in seen or parent not in confs:
            raise CheckpointError(
                f"configuration {name!r} inherits from {parent!r}, which is missing or circular", path=path
            )
        seen.add(parent)
        merged = copy.deepcopy(confs[parent])
        merged.update(conf)
        conf = merged
    return conf


_OLD_KEYS = {
    "conv_kernel_sizes": "kernel_sizes",
    "pool_op_kernel_sizes": "strides",
    "n_conv_per_stage_encoder": "n_conv_per_stage",
}


def _old_plans_architecture(conf: dict, *, path=None, where: str = "") -> dict:
    """nnU-Net's conversion of the older plans format (``UNet_class_name`` ...) to ``architecture``."""
    cls = conf.get("UNet_class_name")
    if cls not in SUPPORTED_NETWORKS:
        raise CheckpointError(f"network {cls!r} is not supported; medseg runs {sorted(SUPPORTED_NETWORKS)}", path=path)
    for key in ("UNet_base_num_features", "unet_max_num_features"):
        if not nb.whole(conf.get(key)) or not 1 <= conf[key] <= nb.MAX_FEATURES:
            _refuse(path, f"{where}{key}", conf.get(key), f"a whole number of features in 1..{nb.MAX_FEATURES}")
    for key in (
        "n_conv_per_stage_encoder",
        "n_conv_per_stage_decoder",
        "conv_kernel_sizes",
        "pool_op_kernel_sizes",
        "patch_size",
    ):
        if not isinstance(conf.get(key), list) or not conf[key]:
            _refuse(path, f"{where}{key}", conf.get(key), "a non-empty list")
    n = len(conf["n_conv_per_stage_encoder"])
    if not 1 <= n <= MAX_STAGES:
        _refuse(path, f"{where}n_conv_per_stage_encoder", conf["n_conv_per_stage_encoder"], f"1..{MAX_STAGES} stages")
    dim = len(conf["patch_size"])
    kwargs = {
        "n_stages": n,
        "features_per_stage": [
            min(conf["UNet_base_num_features"] * 2**i, conf["unet_max_num_features"]) for i in range(n)
        ],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": conf["conv_kernel_sizes"],
        "strides": conf["pool_op_kernel_sizes"],
        ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): conf["n_conv_per_stage_encoder"],
        "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return {
        "network_class_name": f"{SUPPORTED_NETWORKS[cls]}.{cls}",
        "arch_kwargs": kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


# ------------------------------------------------------------------ the schema plans.json is checked against

#: Bounds of what nnU-Net's planners write (at most 7 stages of 1-2 strides and 1/3 kernels, 1-6 blocks).
MAX_STAGES = 12
MAX_CONVS_PER_STAGE = 16
KERNEL_SIZES = (1, 3, 5, 7)
MAX_STRIDE = 4
_CLASS_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin")
_ARCH_KEYS = {
    "PlainConvUNet": {
        "n_stages",
        "features_per_stage",
        "conv_op",
        "kernel_sizes",
        "strides",
        "n_conv_per_stage",
        "n_conv_per_stage_decoder",
        "conv_bias",
        "norm_op",
        "norm_op_kwargs",
        "dropout_op",
        "dropout_op_kwargs",
        "nonlin",
        "nonlin_kwargs",
        "nonlin_first",
    },
    "ResidualEncoderUNet": {
        "n_stages",
        "features_per_stage",
        "conv_op",
        "kernel_sizes",
        "strides",
        "n_blocks_per_stage",
        "n_conv_per_stage_decoder",
        "conv_bias",
        "norm_op",
        "norm_op_kwargs",
        "dropout_op",
        "dropout_op_kwargs",
        "nonlin",
        "nonlin_kwargs",
        "bottleneck_channels",
        "stem_channels",
    },
}
_REQUIRED = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder")


def _flag(v):
    return isinstance(v, bool)


def _unit(v):
    return nb.number(v) and 0 <= v <= 1


#: Keyword arguments of the classes of the fixed table: name -> check of a plain value.
_OP_KWARGS = {
    "norm": {
        "eps": lambda v: nb.number(v) and 0 < v < 1,
        "momentum": lambda v: v is None or _unit(v),
        "affine": _flag,
        "track_running_stats": _flag,
    },
    "Dropout": {"p": _unit, "inplace": _flag},
    "LeakyReLU": {"negative_slope": lambda v: nb.number(v) and abs(v) <= 10, "inplace": _flag},
    "ReLU": {"inplace": _flag},
    "PReLU": {"num_parameters": lambda v: v == 1 and nb.whole(v), "init": lambda v: nb.number(v) and abs(v) <= 10},
    "GELU": {"approximate": lambda v: v in ("none", "tanh")},
}


def _refuse(path, key: str, value, expected: str):
    raise CheckpointError(
        f"{key} = {nb.short(value)}: expected {expected}; medseg builds only networks within "
        "these bounds (as nnU-Net's planners write them): fix or re-plan this value",
        path=path,
    )


def _class_name(value) -> str:
    return _TORCH_CLASSES[value][1] if isinstance(value, str) and value in _TORCH_CLASSES else ""


def _arch_key(where: str, names: dict, k, *idx) -> str:
    return f"{where}{names.get(k, k)}" + "".join(f"[{i}]" for i in idx)


def _check_classes(short: str, kw: dict, path, key) -> tuple[int, str, int]:
    """The keywords, stage count and class names of arch_kwargs: (n_stages, conv class, spatial dimensions)."""
    unknown = sorted(set(kw) - _ARCH_KEYS[short])
    if unknown:
        raise CheckpointError(
            f"{key(unknown[0])}: {short} takes no keyword {unknown[0]!r} (it takes "
            f"{', '.join(sorted(_ARCH_KEYS[short]))}): remove it or re-plan the model",
            path=path,
        )
    blocks = "n_conv_per_stage" if short == "PlainConvUNet" else "n_blocks_per_stage"
    for k in (*_REQUIRED, blocks):
        if k not in kw:
            _refuse(path, key(k), None, f"a value ({short} needs it)")
    n = kw["n_stages"]
    if not nb.whole(n) or not 1 <= n <= MAX_STAGES:
        _refuse(path, key("n_stages"), n, f"a whole number of stages in 1..{MAX_STAGES}")
    for k in _CLASS_KEYS:
        v = kw.get(k)
        if v is None and k != "conv_op":
            continue
        if not isinstance(v, str) or v not in _TORCH_CLASSES:  # a list or dict here is no class name
            raise CheckpointError(
                f"arch_kwargs.{k} = {nb.short(v)} is not a class medseg builds nnU-Net networks with "
                "(torch convs, instance/batch norms, dropout, ReLU-family activations)",
                path=path,
            )
    conv = _class_name(kw["conv_op"])
    if conv not in ("Conv2d", "Conv3d"):
        _refuse(path, key("conv_op"), kw["conv_op"], "a 2D or 3D convolution (torch.nn.Conv2d or Conv3d)")
    dims = int(conv[4])
    for k, ok, what in (
        ("norm_op", lambda c: "Norm" in c, "a normalisation class"),
        ("dropout_op", lambda c: c.startswith("Dropout"), "a dropout class"),
        ("nonlin", lambda c: c in _OP_KWARGS and c not in ("norm", "Dropout"), "an activation class"),
    ):
        c = _class_name(kw.get(k))
        if c and not ok(c):  # a convolution given as norm_op would build, and compute something else
            _refuse(path, key(k), kw[k], what)
    for k in ("norm_op", "dropout_op"):
        c = _class_name(kw.get(k))
        if c and c != "Dropout" and not c.endswith(f"{dims}d"):
            _refuse(path, key(k), kw[k], f"the {dims}D variant, as conv_op is {conv}")
    return n, conv, dims


def _per_stage(kw: dict, path, key, n: int, dims: int, k, count, ok, what, *, vector=False):
    """One per-stage entry of arch_kwargs (a value or a list of ``count``), each item checked by ``ok``."""
    v = kw.get(k)
    items = [v] * count if not isinstance(v, list) else v
    if isinstance(v, list) and len(v) != count:
        _refuse(path, key(k), v, f"{count} entries (one per stage; n_stages is {n})")
    for i, item in enumerate(items):
        parts = item if vector and isinstance(item, list) else [item]
        if vector and isinstance(item, list) and len(item) != dims:
            _refuse(path, key(k, i), item, f"{dims} entries (one per axis)")
        if not parts or not all(nb.whole(x) and ok(x) for x in parts):
            _refuse(path, key(k, i) if isinstance(v, list) else key(k), item, what)
    return [(it if isinstance(it, list) else [it] * dims) for it in items] if vector else items


def _check_stages(short: str, kw: dict, path, key, n: int, dims: int, patch, conf_where: str) -> None:
    """The per-stage features, kernels, strides and block counts, and the patch against the total stride."""
    blocks = "n_conv_per_stage" if short == "PlainConvUNet" else "n_blocks_per_stage"

    def per_stage(k, count, ok, what, *, vector=False):
        return _per_stage(kw, path, key, n, dims, k, count, ok, what, vector=vector)

    per_stage(
        "features_per_stage",
        n,
        lambda x: 1 <= x <= nb.MAX_FEATURES,
        f"whole numbers of features in 1..{nb.MAX_FEATURES}",
    )
    per_stage("kernel_sizes", n, lambda x: x in KERNEL_SIZES, f"odd kernel sizes {KERNEL_SIZES}", vector=True)
    strides = per_stage("strides", n, lambda x: 1 <= x <= MAX_STRIDE, f"strides in 1..{MAX_STRIDE}", vector=True)
    per_stage(blocks, n, lambda x: 1 <= x <= MAX_CONVS_PER_STAGE, f"whole numbers in 1..{MAX_CONVS_PER_STAGE}")
    if n > 1:
        per_stage(
            "n_conv_per_stage_decoder",
            n - 1,
            lambda x: 1 <= x <= MAX_CONVS_PER_STAGE,
            f"whole numbers in 1..{MAX_CONVS_PER_STAGE}",
        )
    total = [math.prod(s[a] for s in strides) for a in range(dims)]
    if any(p % t for p, t in zip(patch, total, strict=False)):
        _refuse(path, f"{conf_where}patch_size", patch, f"multiples of the network's total stride {total} per axis")
    if short == "ResidualEncoderUNet":
        if kw.get("bottleneck_channels") is not None:
            per_stage(
                "bottleneck_channels",
                n,
                lambda x: 1 <= x <= nb.MAX_FEATURES,
                f"whole numbers of features in 1..{nb.MAX_FEATURES}",
            )
        s = kw.get("stem_channels")
        if s is not None and not (nb.whole(s) and 1 <= s <= nb.MAX_FEATURES):
            _refuse(path, key("stem_channels"), s, f"a whole number of features in 1..{nb.MAX_FEATURES}")


def _check_op_kwargs(kw: dict, path, key) -> None:
    """The flags and the keyword arguments given to the norm, dropout and activation classes."""
    for k in ("conv_bias", "nonlin_first"):
        if k in kw and not isinstance(kw[k], bool):
            _refuse(path, key(k), kw[k], "true or false")
    for op_key, kw_key in (
        ("norm_op", "norm_op_kwargs"),
        ("dropout_op", "dropout_op_kwargs"),
        ("nonlin", "nonlin_kwargs"),
    ):
        args = kw.get(kw_key)
        if args is None:
            continue
        if not isinstance(args, dict):
            _refuse(path, key(kw_key), args, "a mapping of keyword arguments (or null)")
        c = _class_name(kw.get(op_key))
        table = (
            _OP_KWARGS.get("norm" if "Norm" in c else "Dropout" if c.startswith("Dropout") else c, None) if c else {}
        )
        if table is None:  # e.g. a convolution given as norm_op: no keyword of it is one medseg passes on
            _refuse(path, key(op_key), kw.get(op_key), f"a {op_key.replace('_op', '')} class, not {c}")
        for name, value in args.items():
            if name not in table:
                _refuse(
                    path,
                    key(kw_key, repr(name)),
                    value,
                    f"a keyword of {c or 'no class'} ({', '.join(table) or 'none: ' + op_key + ' is null'})",
                )
            if not table[name](value):
                _refuse(path, key(kw_key, repr(name)), value, f"a plain value {c} accepts for {name}")


def check_architecture(
    short: str,
    kw: dict,
    conf: dict,
    *,
    path=None,
    where: str = "architecture.arch_kwargs.",
    conf_where: str = "",
    names: dict | None = None,
) -> int:
    """Every arch_kwargs entry medseg passes on, and the configuration's patch and spacing, against bounds
    (``CheckpointError`` naming plans.json and the key); returns the number of spatial dimensions."""
    names = names or {}

    def key(k, *idx):
        return _arch_key(where, names, k, *idx)

    n, conv, dims = _check_classes(short, kw, path, key)
    patch = conf.get("patch_size")
    if not isinstance(patch, list) or len(patch) != dims or not all(nb.whole(p) and p >= 1 for p in patch):
        _refuse(path, f"{conf_where}patch_size", patch, f"{dims} positive whole numbers (conv_op is {conv})")
    limit = max_voxels()
    if math.prod(patch) > limit:
        _refuse(path, f"{conf_where}patch_size", patch, f"at most {limit:,} voxels (MEDSEG_MAX_VOXELS)")
    _check_stages(short, kw, path, key, n, dims, patch, conf_where)
    _check_op_kwargs(kw, path, key)
    return dims


_RESAMPLING_KWARGS = {
    "is_seg": lambda v: v is False,
    "order": lambda v: nb.whole(v) and 0 <= v <= 5,
    "order_z": lambda v: nb.whole(v) and 0 <= v <= 5,
    "force_separate_z": lambda v: v is None or isinstance(v, bool),
    "separate_z_anisotropy_threshold": lambda v: nb.number(v) and v > 0,
}


def check_configuration(conf: dict, plans: dict, in_channels: int, *, path=None, where: str = "") -> None:
    """The configuration's preprocessing values inference uses (spacing, masks, resampling, transposes)."""
    dims = len(conf["patch_size"])
    spacing = conf.get("spacing")
    if not isinstance(spacing, list) or len(spacing) != dims or not all(nb.number(s) and 0 < s < 1e4 for s in spacing):
        _refuse(path, f"{where}spacing", spacing, f"{dims} positive voxel sizes in mm")
    masks = conf.get("use_mask_for_norm")
    if not isinstance(masks, list) or len(masks) != in_channels or not all(isinstance(m, bool) for m in masks):
        _refuse(path, f"{where}use_mask_for_norm", masks, f"{in_channels} true/false values (one per channel)")
    for key in ("resampling_fn_data_kwargs", "resampling_fn_probabilities_kwargs"):
        kw = conf.get(key, {})
        if not isinstance(kw, dict):
            _refuse(path, f"{where}{key}", kw, "a mapping of keyword arguments")
        for name, value in kw.items():
            if name not in _RESAMPLING_KWARGS or not _RESAMPLING_KWARGS[name](value):
                _refuse(
                    path,
                    f"{where}{key}[{name!r}]",
                    value,
                    f"one of {', '.join(_RESAMPLING_KWARGS)} with a plain value (orders 0..5, is_seg false)",
                )
    for key in ("transpose_forward", "transpose_backward"):
        t = plans.get(key, [0, 1, 2])
        if not isinstance(t, list) or sorted(t) != [0, 1, 2] or not all(nb.whole(a) for a in t):
            _refuse(path, key, t, "a permutation of [0, 1, 2]")


def architecture(conf: dict, *, path=None, where: str = "") -> tuple[str, dict]:
    """(class name, constructor kwargs with classes resolved from the fixed table), checked against the
    bounds of :func:`check_architecture` (``where``: the configuration's key prefix in messages)."""
    import importlib

    arch = conf.get("architecture")
    if arch is not None and not isinstance(arch, dict):
        _refuse(path, f"{where}architecture", arch, "a mapping with network_class_name and arch_kwargs")
    old = arch is None
    arch = arch or _old_plans_architecture(conf, path=path, where=where)
    full = str(arch.get("network_class_name", ""))
    short = full.rsplit(".", 1)[-1]
    if short not in SUPPORTED_NETWORKS or not full.startswith("dynamic_network_architectures."):
        raise CheckpointError(
            f"network class {full!r} is not supported; medseg runs nnU-Net's "
            f"{' and '.join(sorted(SUPPORTED_NETWORKS))} (dynamic_network_architectures)",
            path=path,
        )
    raw = arch.get("arch_kwargs") or {}
    if not isinstance(raw, dict):
        _refuse(path, f"{where}architecture.arch_kwargs", raw, "a mapping of keyword arguments")
    kwargs = copy.deepcopy(dict(raw))
    if old:
        check_architecture(
            short, kwargs, conf, path=path, where=where, conf_where=where, names={v: k for k, v in _OLD_KEYS.items()}
        )
    else:
        check_architecture(short, kwargs, conf, path=path, where=f"{where}architecture.arch_kwargs.", conf_where=where)
    for key in _CLASS_KEYS:  # always from the fixed table (nnU-Net imports those in _kw_requires_import)
        value = kwargs.get(key)
        if value is None:
            continue
        mod, name = _TORCH_CLASSES[value]
        kwargs[key] = getattr(importlib.import_module(mod), name)
    return short, kwargs


def build_network(class_name: str, kwargs: dict, in_channels: int, out_channels: int, *, path=None):
    """nnU-Net's network, from dynamic_network_architectures, without deep supervision (inference); its
    parameters are counted on the meta device first and refused over ``max_parameters()``."""
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise OptionalDependencyError(
            f"running nnU-Net models needs dynamic_network_architectures: {_INSTALL}"
        ) from None
    if class_name not in SUPPORTED_NETWORKS:
        raise CheckpointError(f"network class {class_name!r} is not supported", path=path)
    cls = getattr(unet, class_name)
    check_network_size(class_name, kwargs, in_channels, out_channels, path=path)
    try:
        return cls(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"plans.json describes a {class_name} that dynamic_network_architectures cannot build "
            f"({type(exc).__name__}: {first})",
            path=path,
        ) from None


def check_network_size(class_name: str, kwargs: dict, in_channels: int, out_channels: int, *, path=None) -> int | None:
    """The network's parameter count (on the meta device: nothing allocated), refused over ``max_parameters()``."""
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        return None  # the network is never built here: predicting says what to install
    cls = getattr(unet, class_name)
    try:
        count = nb.meta_parameter_count(
            lambda: cls(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **kwargs)
        )
    except (TypeError, ValueError, AssertionError, RuntimeError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"plans.json describes a {class_name} that dynamic_network_architectures cannot build "
            f"({type(exc).__name__}: {first})",
            path=path,
        ) from None
    limit = nb.max_parameters()
    if count is not None and count > limit:
        raise CheckpointError(
            f"the network plans.json describes has {count:,} parameters, over the limit of "
            f"{limit:,} (MEDSEG_MAX_PARAMETERS): refused before allocating it",
            path=path,
        )
    return count


@dataclass
class NnunetLabels:
    """nnU-Net's label handling: plain labels (softmax, argmax) or regions (sigmoid, painted in order)."""

    table: LabelTable
    heads: int
    regions: bool
    regions_class_order: tuple[int, ...] = ()


def labels_from_dataset(dataset: dict, *, path=None) -> NnunetLabels:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise CheckpointError("dataset.json: 'labels' needs 'background': 0", path=path)
    entries = [(k, v) for k, v in labels.items() if k != "ignore"]
    regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for _, v in entries)
    # the table's name: dataset.json's, else the DatasetXXX_Name folder above the model folder
    name = str(dataset.get("name") or (Path(path).parent.parent.name if path else "") or "nnunet")
    if not regions:
        values = sorted({int(v[0] if isinstance(v, (list, tuple)) else v) for _, v in entries})
        names = {int(v[0] if isinstance(v, (list, tuple)) else v): k for k, v in entries}
        table = LabelTable(name, tuple(Label(i, names[i]) for i in values if i != 0))
        if values != list(range(len(values))):
            raise CheckpointError(
                f"dataset.json labels {values} are not consecutive from 0, as nnU-Net requires", path=path
            )
        return NnunetLabels(table, heads=len(values), regions=False)
    fg = [(k, v) for k, v in entries if not (v == 0 or (isinstance(v, (list, tuple)) and set(v) == {0}))]
    order = dataset.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(fg):
        raise CheckpointError(
            f"dataset.json: region-based labels need regions_class_order with {len(fg)} entries", path=path
        )
    by_index: dict[int, str] = {}
    for (k, _), idx in zip(fg, order, strict=False):
        by_index[int(idx)] = k  # a later region painted with the same index wins, as when painting
    table = LabelTable(name, tuple(Label(i, n) for i, n in sorted(by_index.items()) if i != 0))
    return NnunetLabels(table, heads=len(fg), regions=True, regions_class_order=tuple(int(i) for i in order))


def discover_folds(folder: Path, checkpoint: str) -> list[str]:
    """The numbered folds holding ``checkpoint`` (nnU-Net's ``auto_detect_available_folds``); ``fold_all``
    only when there is no numbered one (nnU-Net needs it named explicitly: a model trained on every case
    is not averaged with the cross-validation folds)."""
    found = [d.name[len("fold_") :] for d in folder.glob("fold_*") if (d / checkpoint).is_file()]
    numbered = sorted((f for f in found if f.isdigit()), key=int)
    return numbered or (["all"] if "all" in found else [])


@dataclass
class NnunetModel:
    """Everything an nnU-Net folder says about running it (plain data), plus the folds' weights."""

    folder: Path
    configuration: str
    conf: dict
    plans: dict
    dataset: dict
    trainer: str
    folds: list[str]
    checkpoint: str
    labels: NnunetLabels
    in_channels: int
    network_class: str
    network_kwargs: dict
    mirror_axes: tuple[int, ...] | None
    weights: list = field(default_factory=list, repr=False)

    def networks(self):
        """One network per fold with its weights, in eval mode."""
        nets = []
        for fold, state in zip(self.folds, self.weights, strict=False):
            net = build_network(
                self.network_class,
                self.network_kwargs,
                self.in_channels,
                self.labels.heads,
                path=self.folder / "plans.json",
            )
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"weights of fold {fold} do not fit the network plans.json describes: "
                    f"{str(exc).splitlines()[0][:200]}",
                    path=self.folder,
                ) from None
            nets.append(net.eval())
        return nets


def _fold_checkpoints(folder: Path, fold_names: list, ck_name: str) -> tuple[list, str, str]:
    """Each fold's checkpoint, the trainer and the configuration they share (refused when they differ, or when the
    trainer is not nnUNetTrainer or a variant that changes training only)."""
    ckpts = []
    for f in fold_names:
        ckpts.append(load_nnunet_checkpoint(folder / f"fold_{f}" / ck_name))
    first = ckpts[0]
    trainer = str(first.get("trainer_name", ""))
    config_name = first["init_args"]["configuration"]
    for f, c in zip(fold_names[1:], ckpts[1:], strict=False):
        if c.get("trainer_name") != trainer or c["init_args"].get("configuration") != config_name:
            raise CheckpointError(
                f"fold {f} was trained with another trainer or configuration than fold {fold_names[0]}", path=folder
            )
    if not _TRAINER_OK.match(trainer):
        raise CheckpointError(
            f"trainer {trainer!r} is not supported: it may build another network than plans.json "
            "describes; medseg runs nnUNetTrainer and its variants that change training only",
            path=folder,
        )
    return ckpts, trainer, config_name


def _check_supported(folder: Path, plans: dict, dataset: dict, conf: dict, config_name: str) -> list:
    """Refuse what medseg does not follow: cascades, other image readers, label managers, resampling or
    normalisation. Returns the normalisation schemes."""
    if conf.get("previous_stage") or "cascade" in config_name:
        raise CheckpointError(
            f"configuration {config_name!r} is a cascade stage (needs the previous stage's "
            "segmentation); medseg does not run nnU-Net cascades",
            path=folder,
        )
    reader = plans.get("image_reader_writer")
    if reader not in SUPPORTED_READERS or dataset.get("overwrite_image_reader_writer") not in SUPPORTED_READERS:
        raise CheckpointError(
            f"image reader {dataset.get('overwrite_image_reader_writer') or reader!r} is not "
            "supported (medseg follows SimpleITKIO and NibabelIO)",
            path=folder,
        )
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise CheckpointError(f"label manager {plans['label_manager']!r} is not supported", path=folder)
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if conf.get(key) != SUPPORTED_RESAMPLING:
            raise CheckpointError(
                f"{key} {conf.get(key)!r} is not supported (medseg follows {SUPPORTED_RESAMPLING})", path=folder
            )
    schemes = conf.get("normalization_schemes") or []
    bad = [s for s in schemes if s not in SUPPORTED_NORMALIZATION]
    if bad:
        raise CheckpointError(
            f"normalization {bad} is not supported (medseg follows {list(SUPPORTED_NORMALIZATION)})", path=folder
        )
    return schemes


def load_nnunet_folder(path, *, folds=None, checkpoint: str = "final") -> NnunetModel:
    """Read and check an nnU-Net v2 trained-model folder (``folds``: e.g. ``[0, 1]`` or ``["all"]``;
    default every ``fold_*`` holding the checkpoint; ``checkpoint``: "final" or "best")."""
    folder = Path(path)
    if not is_nnunet_folder(folder):
        raise CheckpointError(
            "not an nnU-Net trained-model folder (expected plans.json, dataset.json and fold_N/)", path=folder
        )
    if checkpoint not in CHECKPOINT_NAMES:
        raise CheckpointError(f"checkpoint {checkpoint!r}: expected one of {sorted(CHECKPOINT_NAMES)}", path=folder)
    ck_name = CHECKPOINT_NAMES[checkpoint]
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    fold_names = [str(f) for f in folds] if folds else discover_folds(folder, ck_name)
    if not fold_names:
        raise CheckpointError(f"no fold_*/{ck_name} in this nnU-Net folder", path=folder)
    ckpts, trainer, config_name = _fold_checkpoints(folder, fold_names, ck_name)
    first = ckpts[0]
    conf = configuration_dict(plans, config_name, path=folder / "plans.json")
    schemes = _check_supported(folder, plans, dataset, conf, config_name)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    in_channels = len(channels)
    if in_channels < 1 or len(schemes) != in_channels:
        raise CheckpointError(
            f"dataset.json names {in_channels} channel(s) but plans.json normalises {len(schemes)}", path=folder
        )
    labels = labels_from_dataset(dataset, path=folder / "dataset.json")
    cls, kwargs = architecture(conf, path=folder / "plans.json", where=f"configurations.{config_name}.")
    check_configuration(conf, plans, in_channels, path=folder / "plans.json", where=f"configurations.{config_name}.")
    check_network_size(cls, kwargs, in_channels, labels.heads, path=folder / "plans.json")
    mirror = first.get("inference_allowed_mirroring_axes")
    return NnunetModel(
        folder=folder,
        configuration=config_name,
        conf=conf,
        plans=plans,
        dataset=dataset,
        trainer=trainer,
        folds=fold_names,
        checkpoint=ck_name,
        labels=labels,
        in_channels=in_channels,
        network_class=cls,
        network_kwargs=kwargs,
        mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else None,
        weights=[c["network_weights"] for c in ckpts],
    )
