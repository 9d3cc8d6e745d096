"""Checkpoint(s) -> label map on the input's own grid: ``CheckpointPredictor`` (a ``Predictor``, see ``protocol``).

``CheckpointPredictor.predict`` runs, in order:

1. orient    -- permute/flip the input to its closest RAS layout (exact, lossless;
                a view: the flips are folded into step 2's gathers, no copy)
2. spacing   -- resample to the checkpoint's training spacing, on MONAI
                Spacingd's grid (first voxel centre kept, exact spacing)
3. intensity -- the checkpoint's intensity preset (CT window, z-score, ...)
4. windows   -- sliding-window class scores -> log-probabilities (averaged
                over flip TTA and over the models of an ensemble)
then undoes 2 while reducing the scores to labels (interpolating only near
boundaries; bounded memory), undoes 1 on the labels, and checks that the
shape equals the input's.
The returned label map carries the input's affine unchanged.

Inputs are checked before any of this: NaN/Inf voxels are refused (or, with
``nonfinite="replace"``, replaced by a stated value and recorded in
``result.meta["findings"]``), and a network grid larger than the voxel limit
(a broken voxel size) is refused before it is allocated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from medseg.config import InferenceConfig
from medseg.errors import CheckpointError, ConfigError, GeometryError, InputError, MedsegError
from medseg.inference.crf import crf_refine
from medseg.inference.labels_from_scores import labels_from_scores
from medseg.inference.sliding_window import default_device, prepare_model, window_scores
from medseg.io.geometry import closest_ras_view, from_closest_ras
from medseg.io.readers import max_voxels, read_volume
from medseg.io.volume import Volume, count_nonfinite, require_same_grid
from medseg.labels import LabelTable
from medseg.models.checkpoint import build_model, load_checkpoint
from medseg.provenance import peak_rss_mb
from medseg.transforms.intensity import floor_value, get_scheme, normalize
from medseg.transforms.spatial import grid_steps, resample, resampled_affine, target_shape

log = logging.getLogger(__name__)


_TORCH_NATIVE = {np.dtype(t) for t in ("float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64")}

#: What to do with NaN/Inf voxels: "refuse" (default: one line naming the file and the count) or
#: "replace" (with the intensity floor: CT window/clip low end, or the image's finite minimum for
#: z-score; the count is recorded in ``meta["findings"]``).
NONFINITE_POLICIES = ("refuse", "replace")
#: A network grid this many times the input's voxels (and over ``_GRID_FLOOR``) means a voxel size
#: no scanner writes (a header in the wrong units, a corrupt affine): refused before it is allocated.
MAX_UPSAMPLING = 64
_GRID_FLOOR = 1 << 22
#: Settings of the predictor itself (not of training), accepted like the inference options.
PREDICTOR_OPTIONS = {"nonfinite": "refuse"}

#: What NaN/Inf voxels become with ``nonfinite="replace"``: ``fill(array) -> (value or None, what it is)``.
FillValue = Callable[[np.ndarray], "tuple[float | None, str]"]


def default_inference() -> dict:
    return {**PREDICTOR_OPTIONS, **dataclasses.asdict(InferenceConfig())}


def check_nonfinite_policy(policy) -> None:
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"nonfinite={policy!r}: expected one of {list(NONFINITE_POLICIES)}")


@dataclass(frozen=True)
class CheckpointOptions:
    """Inference options given for medseg checkpoints: any key of ``default_inference()`` (training's
    ``InferenceConfig`` plus ``PREDICTOR_OPTIONS``). They override the checkpoint's own settings."""

    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, overrides: Mapping[str, Any]) -> "CheckpointOptions":
        defaults = default_inference()
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ConfigError(f"unknown inference option(s) {sorted(unknown)}; accepted: {sorted(defaults)}")
        return cls(dict(overrides))


def resolve_device(device=None):
    """``torch.device(device)``, or the default device (CUDA when present) for None."""
    import torch

    return torch.device(device) if device else default_device()


def intensity_fill_value(preprocessing: Mapping) -> FillValue:
    """The fill for NaN/Inf voxels that the preprocessing's intensity scheme gives (CT window floor...)."""

    return lambda array: get_scheme(preprocessing.get("intensity", "ct_window")).fill_value(preprocessing, array)


def finite_min(array: np.ndarray, slab_voxels: int = 1 << 24) -> float | None:
    """Smallest finite voxel, slab by slab; None when there is none."""
    step = max(1, slab_voxels // max(1, array.size // array.shape[-1]))
    best = None
    for k in range(0, array.shape[-1], step):
        s = array[..., k : k + step]
        vals = s[np.isfinite(s)]
        if vals.size:
            m = float(vals.min())
            best = m if best is None else min(best, m)
    return best


def _replace_nonfinite(array: np.ndarray, value: float, slab_voxels: int = 1 << 24) -> np.ndarray:
    """A copy of ``array`` with NaN/Inf set to ``value`` (the input itself is never changed)."""
    out = np.array(array, copy=True)
    step = max(1, slab_voxels // max(1, out.size // out.shape[-1]))
    for k in range(0, out.shape[-1], step):
        s = out[..., k : k + step]
        s[~np.isfinite(s)] = value
    return out


def _finite_channel(
    array: np.ndarray,
    source: str,
    channel: int,
    findings: list,
    *,
    several: bool,
    nonfinite: str,
    fill_value: FillValue,
) -> np.ndarray:
    """``array`` when all voxels are finite; else refuse, or (``nonfinite="replace"``) a copy with
    them replaced and a finding recorded. NaN never reaches the network (where it would spread
    and end as an all-background map) and is never taken for air."""
    n = count_nonfinite(array)
    if n == 0:
        return array
    total = int(array.size)
    share = f"{n:,} of {total:,} voxels ({100.0 * n / total:.2g}%)"
    where = f" in channel {channel}" if several else ""
    value, what = (None, "") if n == total else fill_value(array)
    if value is None:
        raise InputError(
            f"every voxel{where} is NaN or infinite ({total:,}); there is no image to segment", path=source or None
        )
    if nonfinite != "replace":
        raise InputError(
            f"{share}{where} are NaN or infinite; medseg does not segment them silently. Fix the image, or replace "
            f"them with {value:g} ({what}) with --nonfinite replace (medseg run: --set "
            "predict.inference.nonfinite=replace; Python: nonfinite='replace')",
            path=source or None,
        )
    log.warning("%s: %s%s are NaN or infinite; replaced with %g (%s)", Path(source).name, share, where, value, what)
    findings.append(
        {
            "kind": "nonfinite_voxels",
            "channel": channel,
            "count": n,
            "fraction": n / total,
            "action": f"replaced with {value:g} ({what})",
        }
    )
    return _replace_nonfinite(array, value)


def read_case_channels(
    source, *, in_channels: int, nonfinite: str, fill_value: FillValue, findings: list
) -> tuple[Volume, np.ndarray]:
    """One case's images, checked: the reference volume (channel 0) and a ``(C, X, Y, Z)`` array of all channels:
    float32 for several channels, the stored (torch-readable) type and no copy for one (unless NaN/Inf voxels
    are replaced: then a copy). ``source`` is a path, a DICOM folder or a Volume, or a list of them (one per
    channel, ``in_channels`` of them, on one grid). NaN/Inf voxels are refused, or with ``nonfinite="replace"``
    set to ``fill_value(array)``; findings about the input are appended to ``findings``."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if len(sources) != in_channels:
        raise InputError(
            f"the model takes {in_channels} image channel(s) per case, {len(sources)} given; "
            "give one file per channel (CLI: comma-separated, in the training order)",
            path=getattr(sources[0], "source", sources[0]),
        )
    vols = [s if isinstance(s, Volume) else read_volume(s) for s in sources]
    for v in vols[1:]:
        require_same_grid(v, vols[0], what="channel image")
    ref = vols[0]
    if ref.array.size == 0 or min(ref.shape) < 1:
        raise InputError(f"empty volume (shape {ref.shape}); expected an image with voxels", path=ref.source or None)
    for v in vols:
        dt = np.asarray(v.array).dtype
        if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
            raise InputError(f"image voxels are {v.array.dtype}, expected real numbers", path=v.source or None)
    arrays = [
        _finite_channel(
            np.asarray(v.array),
            v.source or ref.source,
            c,
            findings,
            several=in_channels > 1,
            nonfinite=nonfinite,
            fill_value=fill_value,
        )
        for c, v in enumerate(vols)
    ]
    if len(vols) > 1:
        return ref, np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    # One channel: a view in the stored type, not a copy (a CT is hundreds of MB at float32);
    # resampling converts only the (much smaller) network-grid samples to float.
    array = arrays[0]
    if array.dtype not in _TORCH_NATIVE or any(st < 0 for st in array.strides):
        array = np.asarray(array, dtype=np.float32)
    return ref, array[None]


def _pass_dice(a, b, n_classes: int) -> list[float]:
    """Per class, the Dice between two label grids (NaN where neither has the class)."""
    import torch

    a, b = a.reshape(-1), b.reshape(-1)
    both = torch.bincount(a[a == b], minlength=n_classes).double()
    na, nb = torch.bincount(a, minlength=n_classes).double(), torch.bincount(b, minlength=n_classes).double()
    dice = (2 * both / (na + nb)).tolist()
    return [d if (na[c] + nb[c]) > 0 else float("nan") for c, d in enumerate(dice)]


def _check_ensemble(paths: list, ckpts: list[dict], labels: LabelTable, expected_labels: LabelTable | None) -> None:
    """Refuse a checkpoint for another label table than asked, and ensemble members that differ from the first."""
    first = ckpts[0]
    if expected_labels is not None and not labels.same_structures(expected_labels):
        raise CheckpointError(
            f"checkpoint segments {labels.names} (table {labels.name!r}) but {expected_labels.names} "
            f"(table {expected_labels.name!r}) was asked for; use a checkpoint trained for that label table",
            path=paths[0],
        )
    for p, c in zip(paths[1:], ckpts[1:], strict=False):
        if not LabelTable.from_dict(c["labels"]).same_structures(labels):
            raise CheckpointError(
                f"ensemble member segments other structures than {paths[0]}; all members need one label table", path=p
            )
        if c["preprocessing"] != first["preprocessing"]:
            raise CheckpointError(f"ensemble member was trained with other preprocessing than {paths[0]}", path=p)


class _NetworkGrid(NamedTuple):
    """Where the network's input lies: its shape, the resampling steps, the oriented image's affine and shape."""

    size: tuple
    steps: Any
    affine: np.ndarray
    ornt: Any
    oriented_shape: tuple


class ChannelReader:
    """``read``: a case's channels through ``read_case_channels`` with the predictor's channel count
    (``in_channels``), NaN/Inf policy (``inference["nonfinite"]``) and fill (``nonfinite_fill()``)."""

    in_channels: int
    inference: dict
    preprocessing: dict

    def nonfinite_fill(self) -> FillValue:
        """The fill of NaN/Inf voxels: the intensity scheme's (``intensity_fill_value``)."""
        return intensity_fill_value(self.preprocessing)

    def read(self, source, findings: list) -> tuple[Volume, np.ndarray]:
        return read_case_channels(
            source,
            in_channels=self.in_channels,
            nonfinite=self.inference["nonfinite"],
            fill_value=self.nonfinite_fill(),
            findings=findings,
        )


class CheckpointPredictor(ChannelReader):
    """medseg checkpoint(s) as a ``Predictor``: one model, or an ensemble averaged in probability."""

    def __init__(
        self,
        models,
        *,
        labels: LabelTable,
        preprocessing: dict,
        inference: dict,
        device=None,
        provenance: dict | None = None,
        progress: bool = False,
    ):

        self.device = resolve_device(device)
        self.inference = {**default_inference(), **dict(inference)}
        models = models if isinstance(models, (list, tuple)) else [models]
        self.models = [
            prepare_model(m.to(self.device).eval(), channels_last=self.inference["channels_last"]) for m in models
        ]
        self.labels = labels
        self.preprocessing = dict(preprocessing)
        self.provenance = dict(provenance or {})
        self.progress = progress
        self.in_channels = int(self.provenance.get("in_channels", 1))
        check_nonfinite_policy(self.inference["nonfinite"])

    @property
    def model(self):
        return self.models[0]

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        device=None,
        expected_labels: LabelTable | None = None,
        progress: bool = False,
        folds: Sequence | None = None,
        checkpoint: str = "final",
        **inference_overrides,
    ) -> "CheckpointPredictor":
        """Load one checkpoint, or several (an ensemble: same labels and preprocessing required).

        ``expected_labels``: refuse a checkpoint trained for another label table.
        Keyword overrides change inference settings (``sw_batch_size=8, amp="off"``...; ``CheckpointOptions``).
        A model folder of another tool is loaded by ``medseg.inference.load.load_predictor`` (the formats
        ``medseg.adapters`` registers); ``folds``/``checkpoint`` choose the weights of such a folder only.
        """

        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths:
            raise CheckpointError("no checkpoint given")
        if folds is not None or checkpoint != "final":
            raise CheckpointError(
                "folds/checkpoint choose the weights of a model folder (nnU-Net v2, ...); "
                f"{paths[0]} is not one (expected plans.json, dataset.json and fold_N/)"
            )
        options = CheckpointOptions.parse(inference_overrides)
        ckpts = [load_checkpoint(p) for p in paths]
        first = ckpts[0]
        labels = LabelTable.from_dict(first["labels"], source=str(paths[0]))
        _check_ensemble(paths, ckpts, labels, expected_labels)
        provenance = {
            "model_path": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths],
            "model_sha256": first["file_sha256"] if len(paths) == 1 else [c["file_sha256"] for c in ckpts],
            "weights_sha256": first.get("weights_sha256"),
            "model_name": first["model"]["name"],
            "trained_with": first.get("versions", {}),
            "in_channels": int(first["model"].get("in_channels", 1)),
        }
        inference = {**default_inference(), **first["inference"], **options.overrides}
        return cls(
            [build_model(c) for c in ckpts],
            labels=labels,
            preprocessing=first["preprocessing"],
            inference=inference,
            device=device,
            provenance=provenance,
            progress=progress,
        )

    def _probabilities(self, x, stats: dict):
        """Log of the softmax averaged over models and flips, on the network's grid: ``(C, x, y, z)`` on the CPU.

        With one model and no flips this is ``log_softmax(logits)``, whose
        interpolated argmax equals that of the interpolated logits."""
        import torch

        inf = self.inference
        floor = floor_value(self.preprocessing)
        flips = [()] + [(a + 2,) for a in inf["tta_flips"]]
        n = len(self.models) * len(flips)
        total: Any = None
        first: Any = None
        agree: Any = None
        for model in self.models:
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                logits = window_scores(
                    model,
                    xi,
                    roi_size=inf["roi_size"],
                    overlap=inf["overlap"],
                    sw_batch_size=inf["sw_batch_size"],
                    blend=inf["blend"],
                    device=self.device,
                    num_classes=self.labels.num_classes,
                    amp=inf["amp"],
                    channels_last=inf["channels_last"],
                    skip_background=inf["skip_background"] and floor is not None,
                    floor=floor or 0.0,
                    progress=self.progress,
                    stats=stats,
                )
                if inf.get("crf_iterations", 0) > 0:
                    with torch.no_grad():
                        logits = crf_refine(logits, xi.to(logits.device), iterations=int(inf["crf_iterations"]))
                if n == 1:
                    return torch.log_softmax(logits[0].float(), dim=0).cpu()
                p = torch.softmax(logits[0].float(), dim=0)
                if dims:
                    p = torch.flip(p, (dims[0] - 1,))
                winner = p.argmax(dim=0)
                if first is None:
                    first, agree = winner, []
                else:
                    agree.append(_pass_dice(first, winner, p.shape[0]))
                total = p if total is None else total.add_(p)
        if agree:  # Dice of each further pass (mirror, ensemble member) with the first, per class, averaged
            stats["pass_agreement"] = {
                c: float(np.nanmean([a[c] for a in agree]))
                for c in range(1, p.shape[0])
                if not all(np.isnan(a[c]) for a in agree)
            }
        return total.div_(n).clamp_min_(torch.finfo(torch.float32).tiny).log_().cpu()

    def _check_grid(self, spacing, size, oriented_shape, volume: Volume) -> None:
        """Refuse a network grid over the voxel limit or far larger than the image (a broken voxel size)."""
        n_grid, limit = int(np.prod([int(n) for n in size], dtype=object)), max_voxels()
        n_input = int(np.prod([int(n) for n in oriented_shape], dtype=object))
        if n_grid > limit or (n_grid > _GRID_FLOOR and n_grid > MAX_UPSAMPLING * n_input):
            why = (
                f"over the limit of {limit:,} (MEDSEG_MAX_VOXELS)"
                if n_grid > limit
                else f"{n_grid / n_input:.0f} times the image's {n_input:,} (at most {MAX_UPSAMPLING} above "
                f"{_GRID_FLOOR:,})"
            )
            raise InputError(
                f"voxel size {tuple(round(float(s), 4) for s in spacing)} mm resampled to the network's "
                f"{tuple(self.preprocessing['spacing'])} mm gives a grid of {tuple(size)} = {n_grid:,} voxels, {why}; "
                "check the image's voxel size and units",
                path=volume.source or None,
            )

    def _network_input(self, source, findings: list):
        """Read the case, then steps 1-3: (volume, the network's input ``(1, C, x, y, z)``, its grid, read seconds).
        The full-resolution channels are released as soon as they are resampled."""
        import torch

        t0 = time.monotonic()
        volume, channels = self.read(source, findings)
        t_read = time.monotonic() - t0
        # 1. orient to the closest RAS (every channel the same way): a permuted view whose flips
        #    the resampling gathers fold in, so the full-resolution volume is never copied
        view, affine, ornt, reverse = closest_ras_view(channels, volume.affine)
        oriented_shape = tuple(view.shape[1:])
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        # 2. spacing
        size = target_shape(oriented_shape, spacing, self.preprocessing["spacing"])
        steps = grid_steps(spacing, self.preprocessing["spacing"])
        self._check_grid(spacing, size, oriented_shape, volume)
        x = resample(view, size, steps, mode="trilinear", reverse=reverse)
        del view, channels
        # 3. intensity
        x = normalize(x, self.preprocessing)[None]
        if not bool(torch.isfinite(x).all()):
            raise InputError(
                "intensities overflow 32-bit floats (|value| > 3.4e38) after resampling; the image's values or its "
                "scaling (NIfTI scl_slope/scl_inter) are broken",
                path=volume.source or None,
            )
        return volume, x, _NetworkGrid(size, steps, affine, ornt, oriented_shape), t_read

    def _labels(self, log_probs, grid: _NetworkGrid, volume: Volume, keep_probabilities: bool):
        """Undo step 2 while reducing the scores to labels: (labels on the oriented grid, confidence sums, counts,
        the probabilities kept or None). Refuses NaN/Inf scores first."""
        import torch

        bad = int((~torch.isfinite(log_probs)).sum())
        if bad:
            raise MedsegError(
                f"the network's scores hold {bad:,} NaN/Inf values for this image, so no label can be trusted; "
                "try --amp off (half precision can overflow); if that does not help, the checkpoint's weights are "
                "broken",
                path=volume.source or None,
            )
        labels, conf_sum, counts = labels_from_scores(
            log_probs,
            grid.oriented_shape,
            [1.0 / s for s in grid.steps],
            chunk=int(self.inference["label_chunk"]),
            with_confidence=True,
        )
        kept = None
        if keep_probabilities:
            kept = (log_probs.exp().permute(1, 2, 3, 0).numpy().copy(), resampled_affine(grid.affine, grid.steps))
        return labels, conf_sum, counts, kept

    def _meta(
        self,
        stats: dict,
        conf_sum,
        counts,
        *,
        seconds: float,
        t_read: float,
        t_windows: float,
        size,
        findings: list,
        kept,
    ) -> dict:
        """``result.meta``: timings, network grid, peak memory, confidence and agreement per structure, findings."""
        import torch

        confidence = {
            lab.name: (float(conf_sum[lab.index] / counts[lab.index]) if counts[lab.index] else None)
            for lab in self.labels.labels
        }
        if "pass_agreement" in stats:  # mirrored test-time passes / ensemble members: per-structure Dice between passes
            by_index = stats.pop("pass_agreement")
            stats["pass_agreement"] = {lab.name: by_index.get(lab.index) for lab in self.labels.labels}
        meta = {
            "seconds": round(seconds, 3),
            "seconds_read": round(t_read, 3),
            "seconds_windows": round(t_windows, 3),
            "network_grid": list(size),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "confidence": confidence,
            "findings": findings,
            **stats,
        }
        if kept is not None:
            meta["probabilities"] = kept
        if self.device.type == "cuda":
            meta["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return meta

    def predict(self, source, *, keep_probabilities: bool = False) -> Volume:
        """Segment one image (a path, a DICOM folder or a Volume; a list of them for multi-channel
        models); the result sits on the (first) image's grid.

        ``result.meta`` holds timing, windows run/skipped, peak memory and the
        mean winning probability per structure (``confidence``); with mirrored
        test-time passes or an ensemble, ``pass_agreement``: per structure, the
        Dice between each further pass's labels and the first's (network grid). With
        ``keep_probabilities``, ``result.meta["probabilities"]`` is
        ``(array (x, y, z, classes) float32, affine)`` on the network's grid.
        """

        t0 = time.monotonic()
        findings: list = []
        volume, x, grid, t_read = self._network_input(source, findings)  # steps 1-3
        # 4. windows -> log-probabilities on the network's grid
        stats: dict = {}
        t1 = time.monotonic()
        log_probs = self._probabilities(x, stats)
        t_windows = time.monotonic() - t1
        labels, conf_sum, counts, kept = self._labels(log_probs, grid, volume, keep_probabilities)  # undo 2
        del log_probs
        labels = from_closest_ras(labels, grid.ornt)  # undo 1
        if labels.shape != volume.shape:
            raise GeometryError(
                f"prediction shape {labels.shape} differs from the input's {volume.shape} (internal error)",
                path=volume.source,
            )
        meta = self._meta(
            stats,
            conf_sum,
            counts,
            seconds=time.monotonic() - t0,
            t_read=t_read,
            t_windows=t_windows,
            size=grid.size,
            findings=findings,
            kept=kept,
        )
        log.debug("predicted %s in %.2f s", Path(volume.source).name, meta["seconds"])
        return Volume(labels, volume.affine.copy(), volume.source, meta)


#: The name tests, benchmarks and docs use for the checkpoint predictor.
Predictor = CheckpointPredictor
