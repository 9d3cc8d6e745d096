"""A ``Predictor`` (``medseg.inference.protocol``) for MONAI bundles: same inputs and outputs as medseg checkpoints,
the bundle's MONAI steps inside.

``BundlePredictor.predict`` reads the channels through medseg's checks (channel count,
same grid, NaN/Inf policy), hands them to the bundle's preprocessing as MONAI's
``LoadImaged`` + ``EnsureChannelFirstd`` would (a channel-first float32 ``MetaTensor``
with the image's RAS affine), runs the bundle's inferer with its window size, batch,
overlap and blending, then its postprocessing (activation, ``Invertd``, ``AsDiscreted``...).
When the bundle's postprocessing stops short of a label map on the input's grid, medseg
finishes it (argmax, or 0.5 for one sigmoid channel; ``Invertd`` with nearest-neighbour
interpolation), so the result always lies on the input's exact grid with its affine.
Every transform and network is MONAI's own class, built from the literal settings
``monai_bundle`` read (nothing of the bundle is evaluated).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medseg.adapters.monai_bundle import bundle as mb
from medseg.errors import CheckpointError, ConfigError, GeometryError, InputError, MedsegError
from medseg.inference.predictor import (
    ChannelReader,
    FillValue,
    check_nonfinite_policy,
    default_inference,
    finite_min,
    resolve_device,
)
from medseg.io.volume import Volume
from medseg.provenance import peak_rss_mb

#: Options that apply to bundles: the window batch and overlap (default: the bundle's), ``nonfinite`` as for
#: medseg checkpoints. The rest of the inference is the bundle's.
BUNDLE_OPTIONS = ("overlap", "sw_batch_size", "nonfinite")
_GEOMETRY_STEPS = ("Orientationd", "Spacingd", "CropForegroundd", "DivisiblePadd", "SpatialPadd")


@dataclass(frozen=True)
class BundleOptions:
    """The options of a MONAI bundle (``BUNDLE_OPTIONS``); None: the bundle's own value."""

    overlap: Any = None
    sw_batch_size: Any = None
    nonfinite: str = "refuse"

    @classmethod
    def parse(cls, inference: Mapping[str, Any] | None = None) -> "BundleOptions":
        overrides = {k: v for k, v in dict(inference or {}).items() if v is not None}
        unknown = set(overrides) - set(BUNDLE_OPTIONS)
        if unknown:
            raise ConfigError(
                f"option(s) {sorted(unknown)} do not apply to MONAI bundles (medseg follows the bundle's "
                f"own inference for them); accepted: {list(BUNDLE_OPTIONS)}"
            )
        if "overlap" in overrides and not 0 <= float(overrides["overlap"]) < 1:
            raise ConfigError(f"overlap={overrides['overlap']!r}: expected a number in [0, 1)")
        if "sw_batch_size" in overrides and int(overrides["sw_batch_size"]) < 1:
            raise ConfigError(f"sw_batch_size={overrides['sw_batch_size']!r}: expected a positive integer")
        out = cls(**overrides)
        check_nonfinite_policy(out.nonfinite)
        return out

    def given(self) -> dict:
        """The window settings given (not the bundle's)."""
        return {k: getattr(self, k) for k in ("overlap", "sw_batch_size") if getattr(self, k) is not None}


def _fill_value(array: np.ndarray) -> tuple[float | None, str]:
    return finite_min(array), "the image's finite minimum"


class BundlePredictor(ChannelReader):
    """A MONAI bundle as a ``Predictor``: medseg's input checks, the bundle's own transforms and inferer."""

    def __init__(self, bundle, *, device=None, progress: bool = False, options: BundleOptions | None = None):
        options = options if options is not None else BundleOptions.parse()
        given = options.given()
        self.bundle = bundle
        self.device = resolve_device(device)
        self.models = [bundle.build_network().to(self.device)]
        self.labels = bundle.labels
        self.in_channels = bundle.in_channels
        self.progress = progress
        ik = bundle.inferer_kwargs
        sliding = bundle.inferer == "SlidingWindowInferer"
        self.inference = {**default_inference(), "nonfinite": options.nonfinite}
        self.inference.update(
            {
                "roi_size": list(np.broadcast_to(ik["roi_size"], (3,))) if sliding else None,
                "overlap": float(given.get("overlap", ik.get("overlap", 0.25))) if sliding else 0.0,
                "sw_batch_size": int(given.get("sw_batch_size", ik.get("sw_batch_size", 1))) if sliding else 1,
                "blend": ik.get("mode", "constant") if sliding else None,
                "amp": "off",
                "tta_flips": [],
                "skip_background": False,
                "channels_last": False,
                "engine": "monai_bundle",
                "inferer": bundle.inferer,
            }
        )
        self._overrides = {k: self.inference[k] for k in ("overlap", "sw_batch_size") if sliding and k in given}
        self.preprocessing = {
            "intensity": "monai_bundle",
            "transforms": [{"name": s.name, **s.kwargs} for s in bundle.preprocessing],
            "postprocessing": [{"name": s.name, **s.kwargs} for s in bundle.postprocessing],
        }
        self.provenance = {
            "model_path": str(bundle.folder),
            "model_sha256": mb.bundle_sha256(bundle),
            "weights_sha256": None,
            "model_name": f"monai_bundle:{bundle.network}",
            "format": "monai_bundle",
            "bundle_version": bundle.metadata.get("version"),
            "config": bundle.config_file.name,
            "in_channels": bundle.in_channels,
            "trained_with": {},
        }

    def nonfinite_fill(self) -> FillValue:
        """NaN/Inf voxels become the image's finite minimum."""
        return _fill_value

    def _input(self, volume: Volume, channels: np.ndarray):
        """What the bundle's LoadImaged + EnsureChannelFirstd give: channel-first float32 with the RAS affine."""
        import torch
        from monai.data import MetaTensor

        array = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))
        affine = torch.as_tensor(np.asarray(volume.affine, dtype=np.float64))
        meta = {
            "original_affine": affine.clone(),
            "spatial_shape": np.asarray(volume.shape[:3]),
            "original_channel_dim": "no_channel" if self.in_channels == 1 else 0,
            "space": "RAS",
            "filename_or_obj": "",
        }
        return MetaTensor(array, affine=affine, meta=meta)

    def _scores(self, x, volume: Volume):
        """The bundle's inferer on the preprocessed image: the first head's scores ``(C, ...)`` in float32 on the
        CPU."""
        import torch

        inferer = mb.build_inferer(self.bundle, **self._overrides)
        with torch.no_grad():
            pred = inferer(x[None].as_tensor().to(self.device), self.models[0])
        if isinstance(pred, (tuple, list)):  # deep supervision heads: the first is the prediction
            pred = pred[0]
        pred = pred[0].float().cpu()
        if not bool(torch.isfinite(pred).all()):
            raise MedsegError(
                "the network's scores hold NaN/Inf values for this image, so no label can be trusted; "
                "the bundle's weights may be broken",
                path=volume.source or None,
            )
        return pred

    def _postprocess(self, data: dict, pred, pre, keep_probabilities: bool):
        """The bundle's postprocessing, finished by medseg where it stops short of a label map on the input's grid:
        (data with the label map, (probabilities, whether on the input's grid) or None)."""
        import torch
        from monai.transforms import AsDiscreted, Invertd

        b = self.bundle
        data[b.pred_key] = pred
        activated = inverted = discrete = False
        probs = None
        for step, op in mb.build_postprocessing(b, pre):
            data = op(data)
            activated |= step.name == "Activationsd"
            inverted |= step.name == "Invertd"
            discrete |= step.name == "AsDiscreted"
            if keep_probabilities and activated and not discrete:
                probs = (data[b.pred_key].detach().clone(), inverted)
        sigmoid = any(s.name == "Activationsd" and s.kwargs.get("sigmoid") for s in b.postprocessing)
        if keep_probabilities and probs is None:  # the bundle applies no activation: medseg's for the record
            raw = torch.sigmoid(pred) if b.out_channels == 1 else torch.softmax(pred, dim=0)
            probs = (raw, False)
        if not discrete:
            if activated or not sigmoid:
                kwargs = {"threshold": 0.5} if sigmoid or b.out_channels == 1 else {"argmax": True}
            else:
                kwargs = {"threshold": 0.0}
            data = AsDiscreted(keys=b.pred_key, **kwargs)(data)
        if not inverted:
            data = Invertd(keys=b.pred_key, transform=pre, orig_keys=b.image_key, nearest_interp=True)(data)
        return data, probs

    def _label_map(self, data: dict, volume: Volume) -> np.ndarray:
        import torch

        b = self.bundle
        labels = np.asarray(torch.as_tensor(data[b.pred_key]).detach().cpu().numpy())
        if labels.ndim == 4:
            if labels.shape[0] != 1:
                raise CheckpointError(
                    f"the bundle's postprocessing leaves {labels.shape[0]} channels, not one label map", path=b.folder
                )
            labels = labels[0]
        labels = np.ascontiguousarray(np.rint(labels).astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))
        if labels.shape != volume.shape:
            raise GeometryError(
                f"prediction shape {labels.shape} differs from the input's {volume.shape}: the bundle's "
                "postprocessing does not invert its preprocessing",
                path=volume.source,
            )
        return labels

    def _probabilities_on_input(self, probs, data: dict, pre) -> np.ndarray:
        """``(x, y, z, classes)`` float32 on the input's grid (inverted linearly when the bundle did not)."""
        import torch
        from monai.transforms import Invertd

        b = self.bundle
        p, on_input = probs
        if not on_input:
            d = Invertd(keys=b.pred_key, transform=pre, orig_keys=b.image_key, nearest_interp=False)(
                {b.image_key: data[b.image_key], b.pred_key: p}
            )
            p = d[b.pred_key]
        p = np.asarray(torch.as_tensor(p).float().cpu().numpy())
        return np.ascontiguousarray(np.moveaxis(p, 0, -1))

    def predict(self, source, *, keep_probabilities: bool = False) -> Volume:
        """Segment one image (or one per channel) as the bundle would; ``result.meta`` as for medseg checkpoints
        (with ``keep_probabilities``: ``(array (x, y, z, classes) float32, affine)`` on the input's grid)."""
        import torch
        from monai.data import MetaTensor

        b = self.bundle
        t0 = time.monotonic()
        findings: list = []
        volume, channels = self.read(source, findings)
        t_read = time.monotonic() - t0
        pre = mb.build_preprocessing(b)
        data = pre({b.image_key: self._input(volume, channels)})
        del channels
        x = data[b.image_key]
        if (
            not isinstance(x, MetaTensor)
            or not x.applied_operations
            and any(s.name in _GEOMETRY_STEPS for s in b.preprocessing)
        ):
            raise CheckpointError(
                "the bundle's preprocessing drops the image's geometry (EnsureTyped with data_type "
                "numpy or track_meta false), so its prediction cannot be put back on the input's grid",
                path=b.config_file,
            )
        if not bool(torch.isfinite(x).all()):
            raise InputError(
                "intensities overflow 32-bit floats after the bundle's preprocessing", path=volume.source or None
            )
        network_grid = [int(s) for s in x.shape[1:]]
        t1 = time.monotonic()
        pred = self._scores(x, volume)
        t_windows = time.monotonic() - t1
        data, probs = self._postprocess(data, pred, pre, keep_probabilities)
        labels = self._label_map(data, volume)
        counts = {lab.name: int((labels == lab.index).sum()) for lab in self.labels.labels}
        meta = {
            "seconds": round(time.monotonic() - t0, 3),
            "seconds_read": round(t_read, 3),
            "seconds_windows": round(t_windows, 3),
            "network_grid": network_grid,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "confidence": {lab.name: None for lab in self.labels.labels},
            "voxels": counts,
            "findings": findings,
            "engine": "monai_bundle",
        }
        if probs is not None:
            meta["probabilities"] = (self._probabilities_on_input(probs, data, pre), volume.affine.copy())
        return Volume(labels, volume.affine.copy(), volume.source, meta)


def from_folder(
    path, *, device=None, progress=False, folds=None, checkpoint="final", expected_labels=None, **inference
):
    """The ``monai_bundle`` format's loader: the bundle's predictor, its options (``BundleOptions``) checked first."""
    if folds is not None or checkpoint != "final":
        raise CheckpointError(
            "folds/checkpoint choose nnU-Net weights; a MONAI bundle has one models/model.pt", path=Path(path)
        )
    options = BundleOptions.parse(inference)
    bundle = mb.load_bundle(path)
    if expected_labels is not None and not bundle.labels.same_structures(expected_labels):
        raise CheckpointError(
            f"model segments {bundle.labels.names} but {expected_labels.names} was asked for", path=Path(path)
        )
    return BundlePredictor(bundle, device=device, progress=progress, options=options)


def run_summary(path) -> dict:
    """What ``medseg run`` records of a bundle before any case runs: path, one hash over the config,
    metadata.json and model.pt, model name and labels (the bundle is read and checked, weights-only)."""
    bundle = mb.load_bundle(path)
    return {
        "path": str(bundle.folder),
        "file_sha256": mb.bundle_sha256(bundle),
        "weights_sha256": None,
        "model": {"name": f"monai_bundle:{bundle.network}"},
        "labels": bundle.labels.to_dict(),
    }
