"""A ``Predictor`` (``medseg.inference.protocol``) for nnU-Net v2 folders: same inputs and outputs as medseg
checkpoints, nnU-Net's steps inside.

``NnunetPredictor.predict`` reads the channels through medseg's checks (channel
count, same grid, NaN/Inf policy), puts them in nnU-Net's array order (the order
SimpleITK and nnU-Net's NibabelIO give: ``array.transpose(2, 1, 0)``, spacing
reversed), runs ``nnunet_inference`` (nnU-Net's preprocessing, sliding window,
export) and returns the label map on the input grid with the input's affine.
The label table, names included, is the model's ``dataset.json``.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medseg.adapters.nnunet import fast_preprocess
from medseg.adapters.nnunet import inference as nn
from medseg.adapters.nnunet.folder import load_nnunet_folder
from medseg.errors import CheckpointError, ConfigError, GeometryError, InputError
from medseg.inference.channels_last import channels_last_network
from medseg.inference.predictor import (
    ChannelReader,
    default_inference,
    resolve_device,
)
from medseg.io.volume import Volume
from medseg.precision import autocast_dtype
from medseg.provenance import file_sha256, peak_rss_mb, release_freed_memory

#: Options that apply to nnU-Net models: ``overlap`` is ``1 - tile_step_size`` (nnU-Net: 0.5), ``mirror``
#: switches the checkpoint's mirroring off, ``nonfinite`` as for medseg checkpoints; then medseg's faster
#: paths (``NNUNET_FAITHFUL`` holds each one's default: nnU-Net's own step).
NNUNET_OPTIONS = (
    "overlap",
    "mirror",
    "nonfinite",
    "preset",
    "amp",
    "sw_batch_size",
    "skip_background",
    "air_hu",
    "export",
    "logits_dtype",
    "label_chunk",
    "channels_last",
    "cast",
    "compile",
    "resample",
)

#: nnU-Net's own inference, step for step (the default).
#:
#: - ``amp``: ``"nnunet"`` as nnU-Net (float16 autocast on CUDA, none on a CPU), or ``off``/``bf16``/``fp16``/``auto``
#:   (``medseg.precision``);
#: - ``sw_batch_size``: windows per forward pass;
#: - ``mirror``: ``True`` every combination of the checkpoint's mirror axes, ``"single"`` each axis alone, ``False``;
#: - ``skip_background``: windows of one constant value run once and are reused (no label change), and on CT windows
#:   entirely below ``air_hu`` are not run (their voxels background where no other window covers them);
#: - ``export``: ``"nnunet"`` resamples every class's scores to the input grid, ``"labels"`` decides the label on
#:   the network grid and interpolates scores only near boundaries;
#: - ``logits_dtype``: ``"float16"`` as nnU-Net accumulates the windows, or ``"float32"``;
#: - ``channels_last``: the network and its windows in channels-last memory layout, its instance norms kept in it
#:   (``medseg.inference.channels_last``);
#: - ``cast``: with a reduced-precision ``amp``, ``"autocast"`` runs the network under ``torch.autocast`` (normalisation
#:   layers in float32), ``"weights"`` casts a copy of the network to that dtype and runs it wholly in it (no
#:   float32 round trip around every normalisation; benchmarks/bench_nnunet.py measures both);
#: - ``compile``: ``True`` the network (after the cast) compiled by ``torch.compile`` with frozen weights, once per
#:   predictor (the first window pays the compile; later cases reuse it), eager where compiling fails; ``"auto"``
#:   once the network's eager passes so far plus those still to run in the case would take
#:   ``nnunet_inference.COMPILE_WORTH_S`` or more (a heavy network from its second pass; a light one in a batch).
#:
#: - ``resample``: ``"nnunet"`` resamples the input as nnU-Net (third-order spline on a float32 copy of the whole
#:   image, its prefilter in float64), ``"torch"`` normalises and resamples it slab by slab from the type it was read
#:   in, linear with PyTorch (``medseg.adapters.nnunet.fast_preprocess``; nnU-Net's route where a channel normalises
#:   within the non-zero mask or the configuration is 2D).
#:
#: Faithful compiles heavy networks (``"auto"``) in nnU-Net's own precision: the same operations in another order
#: and fused, as another thread count or CPU would run them (full-width 32..320 window, float32: logits within
#: 5e-6 of eager, identical argmax; 1.46 s against 3.04 s per pass). ``compile: false`` runs them eagerly.
NNUNET_FAITHFUL = {
    "amp": "nnunet",
    "sw_batch_size": 1,
    "mirror": True,
    "skip_background": False,
    "air_hu": -500.0,
    "export": "nnunet",
    "logits_dtype": "float16",
    "channels_last": False,
    "cast": "autocast",
    "compile": "auto",
    "resample": "nnunet",
}
#: ``preset="fast"``: the switches measured in benchmarks/bench_nnunet.py to keep label agreement >= 0.99 on the CPU.
#: On a trained bench model (benchmarks/results/2026-11-30_nnunet_trained_model.txt): bf16 keeps mean Dice 0.998-0.999
#: with nnUNetPredictor (the full-width 32..320 network trained: 0.9974 at 6.5x, benchmarks/results/
#: 2026-12-01_nnunet_trained_full_width.txt); single-axis mirroring (0.933) and TotalSegmentator's tile step 0.8
#: (0.958) do not, so the fast preset keeps nnU-Net's mirroring and step. ``cast="weights"`` rather than autocast: at
#: nnU-Net's full width (32..320) windows took 97.7 s against 120.3 s
#: (benchmarks/results/2026-11-30_nnunet_full_width.txt). Then ``channels_last`` with layout-keeping instance norms
#: (``medseg.inference.channels_last``) and no compile: the full-width bf16 window took 0.61-0.70 s eager against
#: 0.98-1.04 s channels-first, and compiling it as well saved only 0.03 s a pass for 17 s of compile (the narrow
#: network: 0.041 s eager, 0.034 s compiled, 12 s of compile), so eager is faster on one case and ``compile: true``
#: pays only over several cases of a batch (benchmarks/results/2026-12-01_channels_last_norm.txt). ``resample`` stays
#: nnU-Net's spline: ``resample: torch`` (the input normalised and resampled linearly slab by slab from its stored
#: type, ``fast_preprocess``; memory in benchmarks/results/2026-12-08_nnunet_memory.txt) agreed 0.948 with the
#: faithful labels on the tests' barely trained model, below the preset's 0.99, and is not yet measured on a trained
#: one; it is an option (``--set resample=torch``) until it is. Options given next to the preset override it.
NNUNET_FAST = {
    "amp": "auto",
    "sw_batch_size": 1,
    "mirror": True,
    "skip_background": True,
    "air_hu": -500.0,
    "export": "labels",
    "logits_dtype": "float32",
    "channels_last": True,
    "cast": "weights",
    "compile": False,
    "resample": "nnunet",
}
NNUNET_PRESETS = {"faithful": NNUNET_FAITHFUL, "fast": NNUNET_FAST}


_CHOICES = {
    "amp": ("nnunet", "off", "bf16", "fp16", "auto"),
    "mirror": (True, False, "single"),
    "export": ("nnunet", "labels"),
    "logits_dtype": ("float16", "float32"),
    "cast": ("autocast", "weights"),
    "compile": (True, False, "auto"),
    "resample": ("nnunet", "torch"),
}


@dataclass(frozen=True)
class NnunetOptions:
    """The inference options of an nnU-Net model (``NNUNET_OPTIONS``), as given (values are not converted): a
    preset's switches, then the options given next to it. ``parse`` checks them; ``as_dict`` is what the
    predictor records (in this field order)."""

    overlap: Any = 0.5
    nonfinite: str = "refuse"
    preset: str = "faithful"
    label_chunk: Any = 1 << 20
    amp: Any = "nnunet"
    sw_batch_size: Any = 1
    mirror: Any = True
    skip_background: Any = False
    air_hu: Any = -500.0
    export: str = "nnunet"
    logits_dtype: str = "float16"
    channels_last: Any = False
    cast: str = "autocast"
    compile: Any = "auto"
    resample: str = "nnunet"

    @classmethod
    def parse(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        model_kind: str = "nnU-Net models",
        follows: str = "nnU-Net's own inference",
    ) -> "NnunetOptions":
        """The settings for ``overrides`` (a preset, then single options), checked; an unknown key names
        ``model_kind`` and whose inference medseg ``follows`` for it."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(NNUNET_OPTIONS)
        if unknown:
            raise ConfigError(
                f"option(s) {sorted(unknown)} do not apply to {model_kind} (medseg follows {follows} "
                f"for them); accepted: {list(NNUNET_OPTIONS)}"
            )
        preset = overrides.get("preset", "faithful")
        if preset not in NNUNET_PRESETS:
            raise ConfigError(f"preset={preset!r}: expected one of {list(NNUNET_PRESETS)}")
        out = cls(**{"preset": preset, **NNUNET_PRESETS[preset], **overrides})
        if not 0 <= float(out.overlap) < 1:
            raise ConfigError(f"overlap={out.overlap!r}: expected a number in [0, 1)")
        for key, allowed in _CHOICES.items():
            if getattr(out, key) not in allowed:
                raise ConfigError(f"{key}={getattr(out, key)!r}: expected one of {list(allowed)}")
        if int(out.sw_batch_size) < 1:
            raise ConfigError(f"sw_batch_size={out.sw_batch_size!r}: expected a whole number >= 1")
        return out

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def nnunet_inference_options(overrides: dict | None = None) -> dict:
    """The nnU-Net inference settings for ``overrides`` (a preset, then single options), checked."""
    return NnunetOptions.parse(overrides).as_dict()


def _amp_dtype(amp: str, device):
    if amp == "nnunet":  # predict_sliding_window_return_logits: autocast only on CUDA (float16)
        import torch

        return torch.float16 if device.type == "cuda" else None
    return autocast_dtype(amp, device)


def folder_sha256(model) -> str:
    """One hash over what defines the model: plans.json, dataset.json and each fold's checkpoint."""
    h = hashlib.sha256()
    files = [model.folder / "plans.json", model.folder / "dataset.json"]
    files += [model.folder / f"fold_{f}" / model.checkpoint for f in model.folds]
    for f in files:
        h.update(f.relative_to(model.folder).as_posix().encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


#: Cases ``NnunetPredictor.prepare`` keeps for their ``predict``: a run's reader threads prepare at most ``workers``
#: ahead, each taken by the next ``predict``; the oldest go first should an interrupted run leave some behind.
_READY_MAX = 4


@dataclass
class _Ready:
    """One case read and preprocessed (``NnunetPredictor.prepare``): the network input and what export needs."""

    volume: Volume
    findings: list
    x: Any  # (C, ...) float32 in nnU-Net's order; None once taken
    props: dict
    seconds_read: float
    seconds_pre: float


def _source_key(source) -> tuple:
    """What identifies a case's source between ``prepare`` and ``predict``: the ``Volume`` object itself (its id; the
    kept ``_Ready`` holds it, so the id is not reused meanwhile), or the path."""
    items = source if isinstance(source, (list, tuple)) else [source]
    return tuple(("volume", id(s)) if isinstance(s, Volume) else ("path", str(s)) for s in items)


def _label_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Voxels per label value, a slab at a time (no full-size temporaries)."""
    counts = np.zeros(max(n_classes, int(labels.max(initial=0)) + 1), dtype=np.int64)
    rows = max(1, (1 << 21) // max(1, labels[:1].size))  # bincount counts in 8-byte integers: 16 MB a slab
    for k in range(0, labels.shape[0], rows):
        block = np.bincount(labels[k : k + rows].ravel(), minlength=counts.size)
        counts[: block.size] += block
    return counts


class NnunetPredictor(ChannelReader):
    """An nnU-Net v2 model (its folds) as a ``Predictor``: medseg's input checks, nnU-Net's steps."""

    def __init__(self, model, *, device=None, progress: bool = False, options: NnunetOptions | None = None):
        options = options if options is not None else NnunetOptions.parse()
        self.nnunet = model
        self.device = resolve_device(device)
        self.models = [net.to(self.device) for net in model.networks()]
        # (cast dtype, channels-last, compiled) -> the networks so prepared, made once per predictor
        self._prepared: dict = {}
        # cases read and preprocessed ahead by prepare() (a run's reader threads), by source
        self._ready: collections.OrderedDict = collections.OrderedDict()
        self._ready_lock = threading.Lock()
        self.labels = model.labels.table
        self.in_channels = model.in_channels
        self.progress = progress
        self.inference = {**default_inference(), **options.as_dict()}
        self.inference.update(
            {"roi_size": list(model.conf["patch_size"]), "blend": "gaussian", "tta_flips": [], "engine": "nnunet"}
        )
        self.preprocessing = {
            "intensity": "nnunet",
            "spacing": list(model.conf["spacing"]),
            "normalization_schemes": list(model.conf["normalization_schemes"]),
            "configuration": model.configuration,
        }
        self.provenance = {
            "model_path": str(model.folder),
            "model_sha256": folder_sha256(model),
            "weights_sha256": None,
            "model_name": f"nnunet:{model.network_class}",
            "format": "nnunetv2",
            "trainer": model.trainer,
            "configuration": model.configuration,
            "folds": list(model.folds),
            "checkpoint": model.checkpoint,
            "in_channels": model.in_channels,
            "trained_with": {},
        }

    def window_options(self) -> dict:
        """Keyword arguments of ``nnunet_inference.predict_logits`` for this predictor's settings."""
        import torch

        inf = self.inference
        skip = bool(inf["skip_background"])
        return {
            "mirror": inf["mirror"],
            "batch": int(inf["sw_batch_size"]),
            "amp_dtype": _amp_dtype(inf["amp"], self.device),
            "logits_dtype": torch.float32 if inf["logits_dtype"] == "float32" else None,
            "skip_constant": skip,
            "air_below": nn.air_threshold(self.nnunet, float(inf["air_hu"])) if skip else None,
            "channels_last": bool(inf["channels_last"]),
            "cast_weights": inf["cast"] == "weights",
            "compile": inf["compile"],
        }

    def networks(self, options: dict) -> list:
        """The folds' networks to run with ``options`` (``window_options()``): with ``cast_weights``, copies in the
        amp dtype; with ``channels_last``, copies laid out channels-last with layout-keeping instance norms; with
        ``compile``, compiled; made on the first case and kept for the next ones (the loaded networks stay as
        loaded)."""

        dtype = options["amp_dtype"] if options["cast_weights"] else None
        layout = bool(options.get("channels_last"))
        key = (dtype, layout, options["compile"] or False)
        if key == (None, False, False):
            return self.models
        base = (dtype, layout, False)
        if base not in self._prepared:  # the cast / laid-out copies, shared by the compiled wrappers
            nets = [nn.in_dtype(net, dtype) for net in self.models] if dtype else list(self.models)
            if layout:
                nets = [
                    channels_last_network(n if n is not m else copy.deepcopy(m))
                    for n, m in zip(nets, self.models, strict=False)
                ]
            self._prepared[base] = nets
        if key not in self._prepared:
            self._prepared[key] = [nn.compiled(net, when=options["compile"]) for net in self._prepared[base]]
        return self._prepared[key]

    def _logits(self, x: np.ndarray, stats: dict):
        """nnU-Net's sliding window over the preprocessed case, with this predictor's switches."""
        options = self.window_options()
        nets = self.networks(options)
        logits = nn.predict_logits(
            nets,
            x,
            self.nnunet,
            step=1.0 - float(self.inference["overlap"]),
            device=self.device,
            **options,
            stats=stats,
        )
        if options["compile"]:  # whether torch.compile ran ("auto" leaves light networks eager), and why not
            stats["compiled"] = all(getattr(n, "_compiled", None) is not None and n.failed is None for n in nets)
            stats["compile_failed"] = next((n.failed for n in nets if getattr(n, "failed", None)), None)
        return logits

    def prepare(self, source) -> None:
        """Read and preprocess ``source`` ahead of its ``predict`` (``medseg run``'s reader threads call this while the
        network runs the previous case): the next ``predict`` of the same source (the same ``Volume`` object, or the
        same paths) takes the network input from here. Thread-safe; at most ``_READY_MAX`` cases are kept."""
        ready = self._preprocess(source)
        with self._ready_lock:
            self._ready[_source_key(source)] = ready
            while len(self._ready) > _READY_MAX:
                self._ready.popitem(last=False)

    def _preprocess(self, source) -> _Ready:
        """Read the case (medseg's checks) and preprocess it: nnU-Net's route, or (``resample: "torch"``) slab by
        slab from the image as read."""
        t0 = time.monotonic()
        findings: list = []
        volume, channels = self.read(source, findings)
        t_read = time.monotonic() - t0
        spacing_xyz = [float(s) for s in np.linalg.norm(volume.affine[:3, :3], axis=0)]
        if self.inference["resample"] == "torch" and fast_preprocess.applies(self.nnunet):
            x, props = fast_preprocess.preprocess_fast(channels, spacing_xyz, self.nnunet)
        else:
            # nnU-Net's (z, y, x); always a copy (the read image stays as read), which preprocessing then normalises
            # in place
            data = np.array(channels, dtype=np.float32).transpose(0, 3, 2, 1)
            x, props = nn.preprocess(
                data, spacing_xyz[::-1], self.nnunet, fill_holes=not self.inference["skip_background"], inplace=True
            )
            del data
        del channels
        if not np.all(np.isfinite(x)):
            raise InputError(
                "intensities overflow 32-bit floats after nnU-Net's normalisation", path=volume.source or None
            )
        return _Ready(volume, findings, x, props, t_read, time.monotonic() - t0 - t_read)

    def _take_ready(self, source) -> _Ready | None:
        with self._ready_lock:
            return self._ready.pop(_source_key(source), None)

    def predict(self, source, *, keep_probabilities: bool = False) -> Volume:
        """Segment one image (or one per channel) as nnU-Net would; ``result.meta`` as for medseg checkpoints
        (with ``keep_probabilities``: ``(array (x, y, z, classes) float32, affine)`` on the input's grid;
        ``prepared_ahead``: the case was read and preprocessed by ``prepare``, its seconds those it took there)."""
        release_freed_memory()  # the previous case's freed arrays: not kept under this case's peak
        t0 = time.monotonic()
        ready = self._take_ready(source)
        ahead = ready is not None
        if ready is None:
            ready = self._preprocess(source)
        volume, x, props = ready.volume, ready.x, ready.props
        ready.x = None
        t1 = time.monotonic()
        stats: dict = {}
        logits = self._logits(x, stats)
        t_windows = time.monotonic() - t1
        grid = [int(s) for s in x.shape[1:]]
        del x
        labels, probs = self._export(logits, props, volume, keep_probabilities)
        del logits
        t_export = time.monotonic() - t1 - t_windows
        if labels.shape != volume.shape:
            raise GeometryError(
                f"prediction shape {labels.shape} differs from the input's {volume.shape} (internal error)",
                path=volume.source,
            )
        counts = _label_counts(labels, self.labels.num_classes)
        meta = {
            "seconds": round(time.monotonic() - t0 + (ready.seconds_read + ready.seconds_pre if ahead else 0.0), 3),
            "seconds_read": round(ready.seconds_read, 3),
            "seconds_preprocess": round(ready.seconds_pre, 3),
            "seconds_windows": round(t_windows, 3),
            "seconds_export": round(t_export, 3),
            "prepared_ahead": ahead,
            "network_grid": grid,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "confidence": {lab.name: None for lab in self.labels.labels},
            "voxels": {lab.name: int(counts[lab.index]) for lab in self.labels.labels},
            "findings": ready.findings,
            "engine": "nnunet",
            **stats,
        }
        if probs is not None:
            meta["probabilities"] = (np.ascontiguousarray(probs.transpose(3, 2, 1, 0)), volume.affine.copy())
        return Volume(labels, volume.affine.copy(), volume.source, meta)

    def _export(self, logits, props: dict, volume: Volume, keep_probabilities: bool):
        """The label map ``(x, y, z)`` on the input grid (and the probabilities, nnU-Net's order): the label-only
        export writes straight into the C-ordered map, slab by slab; nnU-Net's export resamples every class."""
        if self.inference["export"] == "labels" and not keep_probabilities and nn.labels_only_applies(self.nnunet):
            dtype = np.uint8 if max(self.labels.num_classes - 1, 0) < 255 else np.uint16
            labels = np.zeros(volume.shape, dtype=dtype)
            nn.labels_only(
                logits, props, self.nnunet, chunk=int(self.inference["label_chunk"]), out=labels.transpose(2, 1, 0)
            )
            return labels, None
        seg, probs = nn.export(logits, props, self.nnunet, probabilities=keep_probabilities)
        return np.ascontiguousarray(seg.transpose(2, 1, 0)), probs


def from_folder(
    path, *, device=None, progress=False, folds=None, checkpoint="final", expected_labels=None, **inference
):
    """The ``nnunet`` format's loader: the folder's predictor, its options (``NnunetOptions``) checked first."""
    options = NnunetOptions.parse(inference)
    model = load_nnunet_folder(path, folds=folds, checkpoint=checkpoint)
    if expected_labels is not None and not model.labels.table.same_structures(expected_labels):
        raise CheckpointError(
            f"model segments {model.labels.table.names} but {expected_labels.names} was asked for", path=Path(path)
        )
    return NnunetPredictor(model, device=device, progress=progress, options=options)


def run_summary(path) -> dict:
    """What ``medseg run`` records of its model, for an nnU-Net folder: the fields of a loaded medseg checkpoint
    it reads (path, file_sha256 -- here over plans, dataset and every fold's checkpoint --, model name, labels).
    The folder is loaded and checked (weights-only) before any case runs."""
    model = load_nnunet_folder(path)
    return {
        "path": str(model.folder),
        "file_sha256": folder_sha256(model),
        "weights_sha256": None,
        "model": {"name": f"nnunet:{model.network_class}"},
        "labels": model.labels.table.to_dict(),
    }
