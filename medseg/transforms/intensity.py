"""Intensity normalisation shared by training and inference: one registered class per scheme.

Built-in schemes (``preprocessing.intensity``):

- ``ct_window``: clip HU to ``window`` [low, high] and scale to [0, 1].
- ``ct_clip_zscore``: clip HU to ``clip`` [low, high] (the 0.5/99.5 percentiles
  inside the labelled foreground, from ``medseg plan``), then ``(x - mean) / std``
  with the foreground's mean and std (nnU-Net's CT scheme).
- ``zscore``: per image and channel, ``(x - mean) / std`` over the voxels that
  are not zero (MR).

A scheme is one subclass of ``IntensityScheme`` registered by name (like a
model); third-party packages register theirs through the ``medseg.intensity``
entry-point group (``my_scheme = "my_pkg.norm:MyScheme"``). Config validation,
the planner, the training crop, the window-skipping floor and the NaN
replacement value all ask the scheme, so adding one touches no other file.

The array operation is ``normalize``; ``NormalizeIntensityByPresetd`` is the
keyed MONAI wrapper used in training, so both paths compute the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medseg.errors import ConfigError, InputError, UnknownComponentError
from medseg.registry import Registry

#: Intensity schemes by name; plugins through the ``medseg.intensity`` entry-point group.
INTENSITY: Registry = Registry("intensity scheme", entry_point_group="medseg.intensity")


class IntensityScheme:
    """Base class: override ``normalize``; the other methods have safe defaults.

    ``plan_for`` names the modalities (``"CT"``, ``"MR"``) for which ``medseg plan``
    chooses this scheme, and ``plan`` returns the preprocessing keys it derives
    from the data set's fingerprint.
    """

    name: ClassVar[str] = ""
    plan_for: ClassVar[tuple[str, ...]] = ()

    def validate(self, pre: Mapping) -> str | None:
        """A message when ``pre`` lacks what this scheme needs; None when it is usable."""
        return None

    def normalize(self, x: torch.Tensor, pre: Mapping) -> torch.Tensor:
        raise NotImplementedError

    def floor(self, pre: Mapping) -> float | None:
        """The normalised value of "at or below the intensity floor" (air on CT); None when there is none."""
        return None

    def fill_value(self, pre: Mapping, array: np.ndarray) -> tuple[float, str]:
        """The raw value NaN/Inf voxels become with ``nonfinite="replace"``, and what it is."""
        finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
        return (float(finite.min()) if finite.size else 0.0), "the image's smallest finite value"

    def foreground(self, pre: Mapping) -> Callable:
        """Which raw voxels are 'body' for the training crop."""
        threshold = float(pre.get("foreground_hu", -500.0))
        return lambda x: x > threshold

    def plan(self, fingerprint: dict) -> dict:
        """Preprocessing keys this scheme takes from the data set's fingerprint (``medseg plan``)."""
        return {}


def register_scheme(cls: type[IntensityScheme]) -> type[IntensityScheme]:
    """Class decorator: register ``cls`` under ``cls.name`` (a duplicate name raises)."""
    doc = (cls.__doc__ or "").strip().splitlines()
    INTENSITY.register(cls.name, description=doc[0] if doc else cls.name, plan_for=tuple(cls.plan_for))(cls)
    return cls


def get_scheme(name: str) -> IntensityScheme:
    """The scheme registered as ``name`` (an unknown name: ``UnknownComponentError`` with close matches)."""
    return INTENSITY.get(name).builder()


def check_preprocessing(pre: Any, source: str) -> None:
    """``preprocessing.intensity`` names a registered scheme that finds what it needs in ``pre`` (a
    ``PreprocessingConfig`` or its mapping); else a ``ConfigError`` naming ``source``.

    Checked where the preprocessing is built (``presets.deterministic_transforms``) and, before any work, by
    ``medseg train`` and ``medseg plan``: ``medseg.config`` stays a leaf that knows no scheme.
    """
    values = dataclasses.asdict(pre) if dataclasses.is_dataclass(pre) and not isinstance(pre, type) else dict(pre)
    try:
        scheme = get_scheme(values.get("intensity"))
    except UnknownComponentError as exc:
        raise ConfigError(f"{source}: preprocessing.intensity: {exc}") from None
    problem = scheme.validate(values)
    if problem:
        raise ConfigError(f"{source}: preprocessing.intensity {values.get('intensity')}: {problem}")


def scheme_for_modality(modality: str) -> str:
    """The scheme ``medseg plan`` uses for a modality: the first registered one whose ``plan_for`` names it."""
    for name in INTENSITY.names():
        if modality.upper() in INTENSITY.get(name).tags.get("plan_for", ()):
            return name
    return "zscore"


@register_scheme
class CTWindow(IntensityScheme):
    """Clip HU to a window and scale to [0, 1]."""

    name = "ct_window"

    def validate(self, pre):
        w = pre.get("window") or []
        if len(w) != 2 or not float(w[0]) < float(w[1]):
            return "ct_window needs window: [low, high] HU with low < high"
        return None

    def normalize(self, x, pre):
        lo, hi = (float(v) for v in pre["window"])
        return (x.float().clamp(lo, hi) - lo) / (hi - lo)

    def floor(self, pre):
        return 0.0

    def fill_value(self, pre, array):
        return float(pre["window"][0]), "the intensity window's floor"


@register_scheme
class CTClipZScore(IntensityScheme):
    """Clip HU to the foreground's 0.5/99.5 percentiles, then z-score with its mean and std (nnU-Net's CT scheme)."""

    name = "ct_clip_zscore"
    plan_for = ("CT",)

    def validate(self, pre):
        if len(pre.get("clip") or []) != 2 or not float(pre.get("std", 0)) > 0:
            return "ct_clip_zscore needs clip: [low, high] and std > 0 (medseg plan writes them)"
        return None

    def normalize(self, x, pre):
        lo, hi = (float(v) for v in pre["clip"])
        return (x.float().clamp(lo, hi) - float(pre["mean"])) / max(float(pre["std"]), 1e-6)

    def floor(self, pre):
        return (float(pre["clip"][0]) - float(pre["mean"])) / max(float(pre["std"]), 1e-6)

    def fill_value(self, pre, array):
        return float(pre["clip"][0]), "the intensity clip's floor"

    def plan(self, fp):
        f = fp["foreground"]
        return {
            "clip": [round(f["p00_5"], 1), round(f["p99_5"], 1)],
            "mean": round(f["mean"], 2),
            "std": round(max(f["std"], 1e-3), 2),
        }


@register_scheme
class ZScore(IntensityScheme):
    """Per image and channel, (x - mean) / std over the non-zero voxels (MR)."""

    name = "zscore"
    plan_for = ("MR",)

    def normalize(self, x, pre):
        x = x.float()
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            ch = x[c]
            mask = ch != 0
            vals = ch[mask] if mask.any() else ch.flatten()
            mean, std = vals.mean(), vals.std().clamp(min=1e-6)
            out[c] = (ch - mean) / std
        return out

    def foreground(self, pre):
        return lambda x: x != 0


def normalize(x: torch.Tensor, pre: Mapping) -> torch.Tensor:
    """Normalise a channel-first float tensor according to ``pre`` (a preprocessing dict)."""
    return get_scheme(pre.get("intensity", "ct_window")).normalize(x, pre)


def floor_value(pre: Mapping) -> float | None:
    """The normalised value of "at or below the intensity floor" (air on CT); None when there is none."""
    return get_scheme(pre.get("intensity", "ct_window")).floor(pre)


class NormalizeIntensityByPresetd(MapTransform):
    """Keyed wrapper of ``normalize`` (MetaTensor metadata is kept)."""

    def __init__(self, keys: KeysCollection, preprocessing: Mapping):
        super().__init__(keys)
        self.pre = dict(preprocessing)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.keys:
            x = d[key]
            out = normalize(torch.as_tensor(x), self.pre)
            if hasattr(x, "copy_meta_from"):
                from monai.data import MetaTensor

                out = MetaTensor(out, affine=x.affine, meta={k: v for k, v in x.meta.items() if k != "affine"})
            d[key] = out
        return d


class RefuseNonFinited(MapTransform):
    """NaN/Inf image voxels stop training with a one-line error naming the file: they would make every loss NaN
    or shift the normalisation silently. Prediction has ``--nonfinite refuse|replace``; training does not guess.
    (A MONAI ``Transform``, so that ``CacheDataset`` caches the deterministic steps after it.)"""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping:
        for key in self.keys:
            x = data[key]
            if torch.is_floating_point(x):
                bad = int((~torch.isfinite(x)).sum())
                if bad:
                    raise InputError(
                        f"{bad} NaN/Inf voxel(s) in the image; training needs finite intensities "
                        "(fix or mask them in the file)",
                        path=getattr(x, "meta", {}).get("filename_or_obj", key),
                    )
        return data
