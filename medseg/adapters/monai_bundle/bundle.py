"""MONAI bundles (``configs/inference.json|yaml``, ``configs/metadata.json``, ``models/model.pt``) read as data.

A bundle's config is a program for ``monai.bundle.ConfigParser``: ``$`` strings are Python
expressions, ``@`` strings are references, ``_target_`` names any importable class. medseg runs
none of that. It parses the files as plain JSON/YAML (``medseg.safe_yaml``) and reads only the
keys that describe inference:

- ``network_def``: one of :data:`NETWORKS` (bare name or ``monai.networks.nets.X``) with literal
  keyword arguments the class accepts;
- ``preprocessing.transforms`` / ``postprocessing.transforms``: transforms of
  :data:`PREPROCESSING` / :data:`POSTPROCESSING` with the keyword arguments listed there;
- ``inferer``: ``SlidingWindowInferer`` (or ``SimpleInferer``).

A plain reference (``"@image_key"``, ``"@displayable_configs#sw_batch_size"``) is replaced by the
literal value it names in the same config; ``"@preprocessing"`` is accepted where ``Invertd`` takes
its transform. Everything else -- an expression, a reference to an expression, an unknown
``_target_``, an unknown keyword, a macro (``%file#key``) -- is refused with one line naming the key
(``ConfigError``). Keys that only drive MONAI's own runner (``imports``, ``device``, ``dataset``,
``evaluator``, ``checkpointloader``, ``initialize``, ``run``, ...) are never read, so their
expressions are neither evaluated nor refused. Weights load with ``torch.load(weights_only=True)``
(a state dict, possibly under ``"model"``/``"state_dict"``/``"network"``); TorchScript
(``models/model.ts``) is refused.

The classes medseg instantiates are MONAI's own (looked up in the tables here, never by the
name a bundle gives), so medseg's preprocessing, windows and inversion are MONAI's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from medseg import safe_json, safe_yaml
from medseg.adapters import network_bounds as nb
from medseg.errors import CheckpointError, ConfigError, OptionalDependencyError
from medseg.labels import Label, LabelTable
from medseg.provenance import file_sha256

log = logging.getLogger(__name__)

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHTS = "models/model.pt"

#: Network classes medseg builds (``monai.networks.nets``), and keyword arguments it drops because
#: current MONAI refuses them and they never changed the weights (SwinUNETR's ``img_size``, removed in 1.5).
NETWORKS = ("UNet", "SegResNet", "SwinUNETR", "DynUNet", "AttentionUnet")
_DROPPED_NETWORK_KWARGS = {"SwinUNETR": ("img_size",)}

_COMMON = ("keys", "allow_missing_keys")
#: Transform -> keyword arguments medseg passes on. Transforms with ``None`` are taken as read:
#: medseg reads the image itself (LoadImaged, EnsureChannelFirstd) and writes its own outputs (SaveImaged).
PREPROCESSING: dict[str, tuple[str, ...] | None] = {
    "LoadImaged": None,
    "EnsureChannelFirstd": None,
    "AddChanneld": None,
    "Orientationd": ("axcodes", "as_closest_canonical", "labels"),
    "Spacingd": (
        "pixdim",
        "diagonal",
        "mode",
        "padding_mode",
        "align_corners",
        "dtype",
        "scale_extent",
        "recompute_affine",
        "min_pixdim",
        "max_pixdim",
        "ensure_same_shape",
    ),
    "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip", "dtype"),
    "ScaleIntensityRangePercentilesd": (
        "lower",
        "upper",
        "b_min",
        "b_max",
        "clip",
        "relative",
        "channel_wise",
        "dtype",
    ),
    "ScaleIntensityd": ("minv", "maxv", "factor", "channel_wise", "dtype"),
    "NormalizeIntensityd": ("subtrahend", "divisor", "nonzero", "channel_wise", "dtype"),
    "ThresholdIntensityd": ("threshold", "above", "cval"),
    "CropForegroundd": (
        "source_key",
        "margin",
        "allow_smaller",
        "k_divisible",
        "mode",
        "start_coord_key",
        "end_coord_key",
        "lazy",
    ),
    "DivisiblePadd": ("k", "mode", "method", "lazy"),
    "SpatialPadd": ("spatial_size", "method", "mode", "lazy"),
    "EnsureTyped": ("data_type", "track_meta"),
    "ToTensord": ("track_meta",),
}
#: Keyword arguments read by nothing medseg runs (the device is medseg's choice): accepted unevaluated.
_IGNORED_KWARGS = (
    "device",
    "sw_device",
    "progress",
    "meta_keys",
    "meta_key_postfix",
    "image_only",
    "reader",
    "ensure_channel_first",
    "dtype_reader",
    "simple_keys",
    "channel_dim",
    "strict_check",
    "wrap_sequence",
    "_desc_",
)
POSTPROCESSING: dict[str, tuple[str, ...] | None] = {
    "Activationsd": ("softmax", "sigmoid"),
    "AsDiscreted": ("argmax", "threshold", "dim", "keepdim"),
    "Invertd": ("transform", "orig_keys", "orig_meta_keys", "nearest_interp", "to_tensor"),
    "KeepLargestConnectedComponentd": ("applied_labels", "is_onehot", "independent", "connectivity", "num_components"),
    "EnsureTyped": ("data_type", "track_meta"),
    "ToTensord": ("track_meta",),
    "SaveImaged": None,
}
INFERERS = {
    "SlidingWindowInferer": (
        "roi_size",
        "sw_batch_size",
        "overlap",
        "mode",
        "sigma_scale",
        "padding_mode",
        "cval",
        "cache_roi_weight_map",
        "cpu_thresh",
        "buffer_steps",
        "buffer_dim",
        "with_coord",
    ),
    "SimpleInferer": (),
}
_PREFIXES = {"network": "monai.networks.nets.", "transform": "monai.transforms.", "inferer": "monai.inferers."}
_MAX_REF_DEPTH = 16


@dataclass
class Step:
    """One transform of the bundle: its MONAI class name and the literal keyword arguments medseg passes."""

    name: str
    kwargs: dict
    where: str


@dataclass
class Bundle:
    folder: Path
    config_file: Path
    network: str
    network_kwargs: dict
    preprocessing: list[Step]
    postprocessing: list[Step]
    inferer: str
    inferer_kwargs: dict
    labels: LabelTable
    in_channels: int
    out_channels: int
    image_key: str
    pred_key: str
    weights_file: Path
    metadata: dict = field(repr=False, default_factory=dict)
    weights: dict = field(repr=False, default_factory=dict)

    def build_network(self):
        """The network with the bundle's weights, in eval mode."""
        import monai.networks.nets as nets

        net = getattr(nets, self.network)(**self.network_kwargs)
        try:
            net.load_state_dict(self.weights)
        except RuntimeError as exc:
            raise CheckpointError(
                f"weights do not fit the network_def ({self.network}): {str(exc).splitlines()[0][:200]}",
                path=self.weights_file,
            ) from None
        return net.eval()


def is_bundle(p: Path) -> bool:
    """A folder with ``configs/metadata.json`` and ``configs/inference.{json,yaml,yml}``."""
    c = p / "configs"
    return p.is_dir() and (c / "metadata.json").is_file() and any((c / n).is_file() for n in CONFIG_NAMES)


# --------------------------------------------------------------------------------------------- reading


def _read(path: Path):
    if path.suffix == ".json":
        return safe_json.load_file(path)  # the YAML reader's size, depth and value limits
    import yaml

    try:
        return safe_yaml.load_file(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path=path) from None


class _Resolver:
    """Literal values of a bundle config: plain ``@`` references replaced, everything executable refused."""

    def __init__(self, config: dict, source: str):
        self.config = config
        self.source = source

    def fail(self, where: str, message: str):
        raise ConfigError(f"{self.source}: {where}: {message}")

    def lookup(self, ref: str, where: str):
        node = self.config
        for part in ref.replace("::", "#").split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                self.fail(where, f"reference '@{ref}' names no key of this config")
        return node

    def value(self, v, where: str, depth: int = 0):
        if depth > _MAX_REF_DEPTH:
            base, *chain = where.split(" -> ")
            self.fail(base, f"references nest too deeply (a cycle?): {' -> '.join(chain[:3])} ...")
        if isinstance(v, str):
            if v.startswith("$"):
                self.fail(where, f"{_short(v)} is an expression; medseg does not evaluate bundle code")
            if v.startswith("%"):
                self.fail(where, f"{_short(v)} is a macro (another file's content); medseg reads one config file")
            if v.startswith("@"):
                target = self.lookup(v[1:], where)
                return self.value(target, f"{where} -> {v}", depth + 1)
            return v
        if isinstance(v, dict):
            if "_target_" in v:
                self.fail(where, f"builds an object ({_short(v['_target_'])}); medseg takes only literal values here")
            return {str(k): self.value(x, f"{where}.{k}", depth) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]", depth) for i, x in enumerate(v)]
        if v is None or isinstance(v, (bool, int, float)):
            return v
        self.fail(where, f"unexpected value {v!r}")

    def component(self, key: str, where: str | None = None):
        """The dict at ``key`` (following a plain ``@`` reference), refusing expressions in its place."""
        where = where or key
        node = self.config.get(key) if isinstance(self.config, dict) else None
        for _ in range(_MAX_REF_DEPTH):
            if isinstance(node, str) and node.startswith("@"):
                node = self.lookup(node[1:], where)
                continue
            break
        if isinstance(node, str) and node.startswith("$"):
            self.fail(where, f"{_short(node)} is an expression; medseg does not evaluate bundle code")
        return node


def _short(v, n: int = 80) -> str:
    s = json.dumps(v) if not isinstance(v, str) else json.dumps(v)
    return s if len(s) <= n else s[: n - 4] + '..."'


def _target(node, where: str, kind: str, allowed, r: _Resolver) -> str:
    if not isinstance(node, dict) or "_target_" not in node:
        r.fail(where, f"expected a {{'_target_': ...}} {kind}")
    t = node["_target_"]
    if not isinstance(t, str):
        r.fail(f"{where}._target_", f"expected a class name, found {_short(t)}")
    if t.startswith(("$", "@", "%")):
        r.value(t, f"{where}._target_")
        r.fail(f"{where}._target_", f"{_short(t)} is a reference; medseg instantiates only classes it knows")
    name = t[len(_PREFIXES[kind]) :] if t.startswith(_PREFIXES[kind]) else t
    if kind == "transform" and "." not in name and name not in allowed and name.endswith(("D", "Dict")):
        alias = (
            name[:-1] + "d" if name.endswith("D") else name[:-4] + "d"
        )  # MONAI's aliases: NormalizeIntensityD, ...Dict
        name = alias if alias in allowed else name
    if name not in allowed:
        article = "an" if kind[0] in "aeiou" else "a"
        r.fail(
            f"{where}._target_", f"{_short(t)} is not {article} {kind} medseg runs (supported: {', '.join(allowed)})"
        )
    for special in ("_requires_", "_mode_"):
        if special in node:
            r.fail(f"{where}.{special}", f"{special} is not supported; medseg runs plain components only")
    return name


def _transforms(r: _Resolver, key: str, table: dict, *, image_key: str | None) -> list[Step]:
    node = r.component(key)
    if node is None:
        return []
    if isinstance(node, list):
        items, base = node, key
    else:
        name = _target(node, key, "transform", ("Compose",), r)
        assert name == "Compose"
        bad = set(node) - {"_target_", "transforms", "_desc_", "map_items", "unpack_items", "lazy", "log_stats"}
        if bad:
            r.fail(f"{key}.{sorted(bad)[0]}", "is not supported on Compose")
        items = node.get("transforms")
        base = f"{key}.transforms"
        if isinstance(items, str):
            r.value(items, base)  # refuses an expression
            items = r.lookup(items[1:], base)
        if not isinstance(items, list):
            r.fail(base, "expected a list of transforms")
    steps = []
    for i, item in enumerate(items):
        where = f"{base}[{i}]"
        if isinstance(item, str):
            r.value(item, where)  # refuses expressions; a reference to a transform:
            item = r.lookup(item[1:], where)
        name = _target(item, where, "transform", tuple(table), r)
        disabled = r.value(item.get("_disabled_", False), f"{where}._disabled_")
        if disabled is True or (isinstance(disabled, str) and disabled.lower() == "true"):
            continue
        allowed = table[name]
        kwargs = {}
        for k, v in item.items():
            kw = f"{where}.{k}"
            if k in ("_target_", "_disabled_", "_desc_") or k in _IGNORED_KWARGS or allowed is None:
                continue
            if name == "Invertd" and k == "transform":
                if v != "@preprocessing":
                    r.fail(kw, f"{_short(v)}: medseg inverts the bundle's own preprocessing only ('@preprocessing')")
                continue
            if k not in allowed and k not in _COMMON:
                r.fail(kw, f"keyword {k!r} of {name} is not supported (supported: {', '.join(allowed + _COMMON)})")
            kwargs[k] = r.value(v, kw)
        if allowed is not None:
            _check_keys(name, kwargs, where, image_key, r)
        steps.append(Step(name, kwargs, where))
    return steps


def _check_keys(name: str, kwargs: dict, where: str, key: str | None, r: _Resolver) -> None:
    keys = kwargs.get("keys")
    keys = [keys] if isinstance(keys, str) else keys
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        r.fail(f"{where}.keys", f"expected a key name or a list of them, found {_short(keys)}")
    if key is not None and set(keys) != {key}:
        r.fail(
            f"{where}.keys",
            f"{keys}: medseg gives the transform one image ({key!r}); transforms of other keys are not supported",
        )


def _image_key(r: _Resolver, config: dict) -> str:
    """The key the preprocessing reads (``image`` in every zoo bundle, sometimes via ``@image_key``)."""
    node = r.component("preprocessing")
    items = node.get("transforms") if isinstance(node, dict) else node
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict) and "keys" in item:
                keys = r.value(item["keys"], f"preprocessing.transforms[{i}].keys")
                keys = [keys] if isinstance(keys, str) else keys
                if isinstance(keys, list) and len(keys) == 1 and isinstance(keys[0], str):
                    return keys[0]
                r.fail(f"preprocessing.transforms[{i}].keys", f"{_short(keys)}: medseg runs bundles of one image key")
    return "image"


def _network(r: _Resolver, config: dict) -> tuple[str, dict]:
    import inspect

    import monai.networks.nets as nets

    node = r.component("network_def")
    if node is None:
        r.fail("network_def", "missing; medseg needs the network's definition")
    name = _target(node, "network_def", "network", NETWORKS, r)
    cls = getattr(nets, name)
    params = inspect.signature(cls).parameters
    kwargs = {}
    for k, v in node.items():
        if k in ("_target_", "_desc_") or k in _DROPPED_NETWORK_KWARGS.get(name, ()):
            continue
        if k not in params:
            r.fail(f"network_def.{k}", f"{name} takes no keyword {k!r}")
        kwargs[k] = r.value(v, f"network_def.{k}")
    dims = kwargs.get("spatial_dims", params["spatial_dims"].default if "spatial_dims" in params else 3)
    if dims != 3:
        r.fail(
            "network_def.spatial_dims",
            f"{_short(dims)}: medseg runs 3D bundles (a 2D bundle's slicing is its own code)",
        )
    for k in ("in_channels", "out_channels"):
        if not nb.whole(kwargs.get(k)) or not 1 <= kwargs[k] <= nb.MAX_FEATURES:
            r.fail(
                f"network_def.{k}", f"expected a whole number in 1..{nb.MAX_FEATURES}, found {_short(kwargs.get(k))}"
            )
    _check_network_bounds(name, kwargs, r)
    return name, kwargs


# ------------------------------------------------------------------ bounds on network_def, before building

_MAX_STAGES = 12
_MAX_REPEATS = 16


def _feats(v):
    return nb.whole(v) and 1 <= v <= nb.MAX_FEATURES


def _kernel(v):
    return (nb.whole(v) and v in (1, 3, 5, 7)) or (
        isinstance(v, list) and len(v) == 3 and all(_kernel(x) and nb.whole(x) for x in v)
    )


def _stride(v):
    return (nb.whole(v) and 1 <= v <= 4) or (
        isinstance(v, list) and len(v) == 3 and all(nb.whole(x) and 1 <= x <= 4 for x in v)
    )


def _up_kernel(v):
    return (nb.whole(v) and 1 <= v <= 7) or (
        isinstance(v, list) and len(v) == 3 and all(nb.whole(x) and 1 <= x <= 7 for x in v)
    )


def _repeats(v):
    return nb.whole(v) and 0 <= v <= _MAX_REPEATS


def _unit(v):
    return v is None or (nb.number(v) and 0 <= v <= 1)


def _list_of(check, lo=1, hi=_MAX_STAGES):
    def ok(v):
        return isinstance(v, list) and lo <= len(v) <= hi and all(check(x) for x in v)

    return ok


_FEATS = _list_of(_feats, 1)
#: Per network: keyword -> (check of its plain value, what is expected). The numbers that size a network
#: (channels, filters, repeats, kernels, strides) are bounded; the remaining keywords are checked by
#: building the network on the meta device (nothing allocated), which also counts its parameters.
_NETWORK_BOUNDS = {
    "UNet": {
        "channels": (_list_of(_feats, 2), f"2..{_MAX_STAGES} whole numbers of channels in 1..{nb.MAX_FEATURES}"),
        "strides": (_list_of(_stride), "a list of strides in 1..4 (one per channel step)"),
        "kernel_size": (_kernel, "an odd kernel size 1..7 (or one per axis)"),
        "up_kernel_size": (_kernel, "an odd kernel size 1..7 (or one per axis)"),
        "num_res_units": (_repeats, f"a whole number in 0..{_MAX_REPEATS}"),
        "dropout": (_unit, "a number in 0..1"),
    },
    "AttentionUnet": {
        "channels": (_list_of(_feats, 2), f"2..{_MAX_STAGES} whole numbers of channels in 1..{nb.MAX_FEATURES}"),
        "strides": (_list_of(_stride), "a list of strides in 1..4 (one per channel step)"),
        "kernel_size": (_kernel, "an odd kernel size 1..7 (or one per axis)"),
        "up_kernel_size": (_kernel, "an odd kernel size 1..7 (or one per axis)"),
        "dropout": (_unit, "a number in 0..1"),
    },
    "SegResNet": {
        "init_filters": (_feats, f"a whole number of channels in 1..{nb.MAX_FEATURES}"),
        "blocks_down": (_list_of(_repeats), f"1..{_MAX_STAGES} whole numbers in 0..{_MAX_REPEATS}"),
        "blocks_up": (_list_of(_repeats, 0), f"0..{_MAX_STAGES} whole numbers in 0..{_MAX_REPEATS}"),
        "num_groups": (_feats, f"a whole number in 1..{nb.MAX_FEATURES}"),
        "dropout_prob": (_unit, "a number in 0..1"),
    },
    "DynUNet": {
        "kernel_size": (_list_of(_kernel), f"1..{_MAX_STAGES} odd kernel sizes 1..7 (or one per axis)"),
        "strides": (_list_of(_stride), f"1..{_MAX_STAGES} strides in 1..4 (or one per axis)"),
        "upsample_kernel_size": (_list_of(_up_kernel, 0), f"0..{_MAX_STAGES} kernel sizes in 1..7"),
        "filters": (lambda v: v is None or _FEATS(v), f"whole numbers of channels in 1..{nb.MAX_FEATURES}"),
        "deep_supr_num": (lambda v: nb.whole(v) and 0 <= v <= _MAX_STAGES, f"a whole number in 0..{_MAX_STAGES}"),
        "dropout": (_unit, "a number in 0..1"),
    },
    # SwinUNETR reads tensor values while building (no meta-device count): its sizes are bounded here alone
    "SwinUNETR": {
        "feature_size": (lambda v: nb.whole(v) and 12 <= v <= 96 and v % 12 == 0, "a multiple of 12 in 12..96"),
        "depths": (_list_of(lambda v: nb.whole(v) and 1 <= v <= 8, 1, 4), "up to 4 whole numbers in 1..8"),
        "num_heads": (_list_of(lambda v: nb.whole(v) and 1 <= v <= 32, 1, 4), "up to 4 whole numbers in 1..32"),
        "patch_size": (lambda v: nb.whole(v) and 1 <= v <= 4, "a whole number in 1..4"),
        "window_size": (lambda v: nb.whole(v) and 1 <= v <= 16, "a whole number in 1..16"),
        "drop_rate": (_unit, "a number in 0..1"),
        "attn_drop_rate": (_unit, "a number in 0..1"),
        "dropout_path_rate": (_unit, "a number in 0..1"),
    },
}


def _check_network_bounds(name: str, kwargs: dict, r: _Resolver) -> None:
    """Bounds on the sizes ``network_def`` gives, then the network built on the meta device (nothing is
    allocated): a keyword the class refuses, or more than ``max_parameters()`` parameters, is one line."""
    import monai.networks.nets as nets

    for k, (ok, expected) in _NETWORK_BOUNDS.get(name, {}).items():
        if k in kwargs and not ok(kwargs[k]):
            r.fail(
                f"network_def.{k}",
                f"{_short(kwargs[k])}: expected {expected}; medseg builds networks within these "
                "bounds only (fix the bundle's value)",
            )
    cls = getattr(nets, name)
    try:
        count = nb.meta_parameter_count(lambda: cls(**kwargs))
    except Exception as exc:  # the class's own checks: one line naming network_def, never a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        r.fail("network_def", f"{name} cannot be built from these values ({type(exc).__name__}: {first})")
    limit = nb.max_parameters()
    if count is not None and count > limit:
        r.fail(
            "network_def",
            f"{name} with these values has {count:,} parameters, over the limit of {limit:,} "
            "(MEDSEG_MAX_PARAMETERS): refused before allocating it",
        )


def _inferer(r: _Resolver) -> tuple[str, dict]:
    node = r.component("inferer")
    if node is None:
        r.fail("inferer", "missing; medseg needs the bundle's inferer (SlidingWindowInferer)")
    name = _target(node, "inferer", "inferer", tuple(INFERERS), r)
    kwargs = {}
    for k, v in node.items():
        if k in ("_target_", "_desc_") or k in _IGNORED_KWARGS:
            continue
        if k not in INFERERS[name]:
            r.fail(f"inferer.{k}", f"keyword {k!r} of {name} is not supported (supported: {', '.join(INFERERS[name])})")
        kwargs[k] = r.value(v, f"inferer.{k}")
    if name == "SlidingWindowInferer":
        if "roi_size" not in kwargs:
            r.fail("inferer.roi_size", "missing")
        if kwargs.get("mode", "constant") not in ("constant", "gaussian"):
            r.fail("inferer.mode", f"{_short(kwargs['mode'])}: expected 'constant' or 'gaussian'")
        ov = kwargs.get("overlap", 0.25)
        if not isinstance(ov, (int, float)) or not 0 <= ov < 1:
            r.fail("inferer.overlap", f"{_short(ov)}: expected a number in [0, 1)")
    return name, kwargs


def _labels(metadata: dict, pred_key: str, out_channels: int, binary: bool, name: str, path: Path) -> LabelTable:
    """The label table from metadata.json: ``network_data_format.outputs.<pred>.channel_def`` (channel index
    -> name), or a ``labels`` dict (name -> index or index -> name) there or at the top level."""
    outputs = ((metadata.get("network_data_format") or {}).get("outputs") or {}) if isinstance(metadata, dict) else {}
    out = outputs.get(pred_key) or (next(iter(outputs.values())) if len(outputs) == 1 else {}) or {}
    raw = out.get("labels") if isinstance(out, dict) and isinstance(out.get("labels"), dict) else None
    raw = raw or (metadata.get("labels") if isinstance(metadata.get("labels"), dict) else None)
    raw = raw or (out.get("channel_def") if isinstance(out, dict) else None)
    by_index: dict[int, str] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            ks, vs = str(k).strip(), str(v).strip()
            if ks.lstrip("-").isdigit():
                by_index[int(ks)] = vs
            elif vs.lstrip("-").isdigit():
                by_index[int(vs)] = ks
            else:
                raise CheckpointError(f"label {k!r}: {v!r} names no channel index", path=path)
    n_labels = 2 if binary else out_channels
    if not by_index:
        log.warning(
            "%s names no labels (network_data_format.outputs.%s.channel_def); using label_1..label_%d",
            path,
            pred_key,
            n_labels - 1,
        )
        by_index = {i: f"label_{i}" for i in range(1, n_labels)}
    fg = {i: n for i, n in by_index.items() if i != 0}
    bad = [i for i in fg if not 0 < i < n_labels]
    if bad:
        raise CheckpointError(f"label indices {sorted(bad)} are outside the network's {n_labels} classes", path=path)
    if binary and not fg:  # one sigmoid channel named as channel 0
        name0 = by_index.get(0, "")
        fg = {1: name0 if name0 and name0.lower() != "background" else "foreground"}
    names = [n for n in fg.values()]
    if len(set(names)) != len(names):
        raise CheckpointError(f"label names repeat: {names}", path=path)
    return LabelTable(name, tuple(Label(i, n) for i, n in sorted(fg.items())))


def _prediction_key(r: _Resolver, post: list, image_key: str) -> str:
    """The one key the postprocessing transforms (default ``pred``), after checking their keys and options."""
    pred_keys = {
        k
        for s in post
        if s.name != "SaveImaged"
        for k in ([s.kwargs["keys"]] if isinstance(s.kwargs["keys"], str) else s.kwargs["keys"])
    }
    if len(pred_keys) > 1:
        r.fail("postprocessing", f"transforms of several keys {sorted(pred_keys)}; medseg runs one prediction key")
    pred_key = pred_keys.pop() if pred_keys else "pred"
    for s in post:
        if s.name == "Invertd" and s.kwargs.get("orig_keys", image_key) not in (image_key, [image_key]):
            r.fail(f"{s.where}.orig_keys", f"{_short(s.kwargs['orig_keys'])}: expected the image key {image_key!r}")
        if s.name == "Activationsd" and s.kwargs.get("softmax") and s.kwargs.get("sigmoid"):
            r.fail(s.where, "softmax and sigmoid together")
        if s.name == "AsDiscreted" and s.kwargs.get("dim", 0) != 0:
            r.fail(f"{s.where}.dim", "medseg reduces over the channel axis (dim 0) only")
    return pred_key


def _check_activation(r: _Resolver, post: list, out_ch: int) -> None:
    """Refuse sigmoid over several channels and one channel without sigmoid (no label map, or no threshold)."""
    sigmoid = any(s.name == "Activationsd" and s.kwargs.get("sigmoid") for s in post)
    if sigmoid and out_ch > 1:
        r.fail(
            "postprocessing",
            f"sigmoid over {out_ch} channels gives overlapping structures, not one label map; "
            "medseg runs softmax/argmax bundles and single-channel sigmoid bundles",
        )
    if out_ch == 1 and not sigmoid:
        r.fail(
            "postprocessing", "one output channel without Activationsd(sigmoid=true): medseg cannot tell its threshold"
        )


def _weights_file(folder: Path) -> Path:
    """The bundle's state dict file; refused when missing (with a word on TorchScript when only that is there)."""
    weights_file = folder / WEIGHTS
    if not weights_file.is_file():
        if (folder / "models" / "model.ts").is_file():
            raise CheckpointError(
                "only models/model.ts (TorchScript) is present; medseg does not run TorchScript "
                "(it carries its own code): give the bundle's models/model.pt (a state dict)",
                path=folder,
            )
        raise CheckpointError(f"no {WEIGHTS} in this bundle", path=folder)
    return weights_file


def load_bundle(path) -> Bundle:
    """Read and check a MONAI bundle folder; nothing of it is evaluated (see the module docstring)."""
    folder = Path(path)
    if not is_bundle(folder):
        raise CheckpointError(
            "not a MONAI bundle (expected configs/metadata.json and configs/inference.json or .yaml)", path=folder
        )
    try:
        import monai  # noqa: F401
        import torch
    except ImportError:
        raise OptionalDependencyError("running MONAI bundles needs monai: pip install monai") from None
    config_file = next(folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file())
    config = _read(config_file)
    metadata = _read(folder / "configs" / "metadata.json")
    if not isinstance(config, dict):
        raise ConfigError("expected a mapping of keys", path=config_file)
    if not isinstance(metadata, dict):
        raise ConfigError("expected a mapping of keys", path=folder / "configs" / "metadata.json")
    r = _Resolver(config, f"{folder.name}/configs/{config_file.name}")
    network, net_kwargs = _network(r, config)
    if r.component("preprocessing") is None:
        r.fail("preprocessing", "missing; medseg needs the bundle's preprocessing")
    image_key = _image_key(r, config)
    pre = _transforms(r, "preprocessing", PREPROCESSING, image_key=image_key)
    post = _transforms(r, "postprocessing", POSTPROCESSING, image_key=None)
    inferer, inf_kwargs = _inferer(r)
    pred_key = _prediction_key(r, post, image_key)
    out_ch = int(net_kwargs["out_channels"])
    _check_activation(r, post, out_ch)
    name = str(metadata.get("name") or folder.name)
    labels = _labels(metadata, pred_key, out_ch, out_ch == 1, name, folder / "configs" / "metadata.json")
    weights_file = _weights_file(folder)
    weights = load_weights(weights_file, torch)
    return Bundle(
        folder=folder,
        config_file=config_file,
        network=network,
        network_kwargs=net_kwargs,
        preprocessing=pre,
        postprocessing=post,
        inferer=inferer,
        inferer_kwargs=inf_kwargs,
        labels=labels,
        in_channels=int(net_kwargs["in_channels"]),
        out_channels=out_ch,
        image_key=image_key,
        pred_key=pred_key,
        weights_file=weights_file,
        metadata=metadata,
        weights=weights,
    )


def load_weights(path: Path, torch) -> dict:
    """A state dict from ``model.pt`` (weights only; nested under ``model``/``state_dict``/``network`` is accepted)."""
    import pickle
    import zipfile

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"not a loadable state dict (loaded weights-only; nothing in it was run): {first[:300]}", path=path
        ) from None
    for key in ("model", "state_dict", "network"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("expected a state dict (parameter name -> tensor)", path=path)
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------- building


def _transform_class(name: str):
    import monai.transforms as mt

    return getattr(mt, name)


def build_preprocessing(bundle: Bundle):
    """MONAI's Compose of the preprocessing medseg runs (reading and channel-first are medseg's)."""
    from monai.transforms import Compose

    ops = [_transform_class(s.name)(**s.kwargs) for s in bundle.preprocessing if PREPROCESSING[s.name] is not None]
    return Compose(ops)


def build_postprocessing(bundle: Bundle, preprocessing) -> list[tuple[Step, object]]:
    """The bundle's postprocessing as MONAI transforms (SaveImaged left out: medseg writes the outputs)."""
    out = []
    for s in bundle.postprocessing:
        if POSTPROCESSING[s.name] is None:
            continue
        kwargs = dict(s.kwargs)
        if s.name == "Invertd":
            kwargs["transform"] = preprocessing
            kwargs.setdefault("orig_keys", bundle.image_key)
        out.append((s, _transform_class(s.name)(**kwargs)))
    return out


def build_inferer(bundle: Bundle, **overrides):
    import monai.inferers as mi

    return getattr(mi, bundle.inferer)(**{**bundle.inferer_kwargs, **overrides})


def bundle_sha256(bundle_or_folder) -> str:
    """One hash over what defines the model: the inference config, metadata.json and models/model.pt."""
    folder = bundle_or_folder.folder if isinstance(bundle_or_folder, Bundle) else Path(bundle_or_folder)
    cfg = next(folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file())
    h = hashlib.sha256()
    for f in (cfg, folder / "configs" / "metadata.json", folder / WEIGHTS):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()
