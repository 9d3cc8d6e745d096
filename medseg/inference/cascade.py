"""A two-stage cascade (nnU-Net's ``3d_cascade_fullres``) as one model: ``CascadePredictor``.

``medseg train`` writes a cascade (``medseg.training.cascade``) as ONE checkpoint file, ``RUN/best.pt``: a medseg
checkpoint of stage 2 (the full-resolution network; its labels, preprocessing, inference settings and input profile
are the file's own, so every tool that reads checkpoints reads it) whose first key is the marker
``medseg_cascade`` and which carries stage 1 (the low-resolution network) whole under ``cascade``::

    {"medseg_cascade": 1, <stage 2's checkpoint: format_version, model, labels, preprocessing, ...>,
     "config": <the cascade config>,
     "cascade": {"stage1": <stage 1's checkpoint>, "image_channels": N, "prior_channels": K - 1, "stages": {...}}}

It loads with ``torch.load(weights_only=True)``, like any checkpoint. ``is_cascade_checkpoint`` recognises it by
the marker (a few hundred bytes read), so ``medseg.inference.load`` hands it to ``CascadePredictor`` and never to
the plain checkpoint predictor (which would take stage 2 for the whole model).

``CascadePredictor.predict`` reads the case once, segments it with stage 1 (at its low resolution; labels on the
input grid), then runs stage 2: the image channels on stage 2's grid, normalised by stage 2's intensity scheme,
and after them the prior, ``prior_channels``: one indicator channel per structure (indices 1 .. K-1; background
left out) of stage 1's labels, taken to stage 2's grid by nearest-neighbour sampling: 1 above the intensity
floor where stage 1 found the structure, the floor elsewhere. The prior channels never get the intensity
normalisation (a CT window would squash 0 and 1 into 0.444 and 0.446). Training builds the same channels from the
same stage-1 labels on the input grid (``medseg.training.cascade``), so both see the same input.
The result sits on the input's grid like any model's; ``meta["cascade"]`` records stage 1's time and grid.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from medseg.errors import CheckpointError
from medseg.inference.predictor import CheckpointOptions, CheckpointPredictor, default_inference
from medseg.io.geometry import closest_ras_view
from medseg.io.readers import read_volume
from medseg.io.volume import Volume
from medseg.labels import LabelTable
from medseg.models.checkpoint import build_model, load_checkpoint, saved_with_marker
from medseg.transforms.intensity import floor_value
from medseg.transforms.spatial import resample

MARKER = "medseg_cascade"
FORMAT_VERSION = 1
_STAGE_KEYS = ("state_dict", "model", "labels", "preprocessing", "inference")


def prior_channels(labels, num_classes: int, absent: float = 0.0):
    """A label map ``(1, *spatial)`` (or ``(*spatial)``) -> float32 ``(num_classes - 1, *spatial)``: channel ``c - 1``
    is ``absent + 1`` where the label is ``c`` and ``absent`` elsewhere (background has no channel, as in nnU-Net's
    cascade).

    ``absent`` is the intensity scheme's floor (``floor_value``; 0 without one): the value the sliding window pads
    every channel with beyond the image's border, and training pads its patches with, so the prior says "absent"
    there too, and a window of air with no structure is still skipped (``inference.skip_background``)."""
    import torch

    lab = torch.as_tensor(labels)
    lab = lab[0] if lab.ndim == 4 else lab
    index = torch.arange(1, num_classes, device=lab.device).view(-1, *([1] * lab.ndim))
    return (lab.long()[None] == index).float() + float(absent)


def is_cascade_checkpoint(path) -> bool:
    """Cheap: a ``torch.save`` zip whose pickle starts with the cascade marker (reads a few hundred bytes)."""
    return saved_with_marker(path, MARKER)


class _CascadeInput(NamedTuple):
    """A case's channels (read once) with stage 1's labels on their grid."""

    volumes: list
    prior: Volume


def _stage1_checkpoint(ckpt: dict, path) -> dict:
    """Stage 1 of a cascade checkpoint, checked against stage 2 (labels, channels)."""
    cas = ckpt.get("cascade")
    if not isinstance(cas, dict) or not isinstance(cas.get("stage1"), dict):
        raise CheckpointError("a cascade checkpoint without its stage 1 ('cascade.stage1'); retrain it", path=path)
    if int(ckpt.get(MARKER, 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"cascade format {ckpt[MARKER]} is newer than this medseg reads ({FORMAT_VERSION}); upgrade medseg",
            path=path,
        )
    s1 = cas["stage1"]
    missing = [k for k in _STAGE_KEYS if k not in s1]
    if missing:
        raise CheckpointError(f"the cascade's stage 1 lacks {missing}: the file is damaged", path=path)
    labels = LabelTable.from_dict(ckpt["labels"], source=str(path))
    if not LabelTable.from_dict(s1["labels"], source=str(path)).same_structures(labels):
        raise CheckpointError("the cascade's two stages segment different structures: the file is damaged", path=path)
    n_image, n_prior = int(cas.get("image_channels", 0)), int(cas.get("prior_channels", -1))
    if (
        n_prior != labels.num_classes - 1
        or n_image < 1
        or int(s1["model"].get("in_channels", 1)) != n_image
        or int(ckpt["model"]["in_channels"]) != n_image + n_prior
    ):
        raise CheckpointError(
            f"the cascade's channels do not add up (stage 1 takes {s1['model'].get('in_channels')}, stage 2 "
            f"{ckpt['model']['in_channels']} = {n_image} image + {n_prior} prior for {labels.num_classes} classes): "
            "the file is damaged",
            path=path,
        )
    return s1


class CascadePredictor(CheckpointPredictor):
    """A cascade checkpoint as a ``Predictor``: ``stage1`` (a ``CheckpointPredictor`` at low resolution) feeds its
    labels to stage 2 (this predictor's own network) as prior channels; see the module's docstring."""

    def __init__(self, models, *, stage1: CheckpointPredictor, **kwargs):
        super().__init__(models, **kwargs)
        self.stage1 = stage1
        self.in_channels = stage1.in_channels  # image channels per case (stage 2 adds the prior itself)

    @classmethod
    def from_checkpoint(  # type: ignore[override]
        cls,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        device=None,
        expected_labels: LabelTable | None = None,
        progress: bool = False,
        folds: Sequence | None = None,
        checkpoint: str = "final",
        **inference_overrides,
    ) -> "CascadePredictor":
        """Load a cascade checkpoint; inference overrides (``CheckpointOptions``) apply to both stages."""
        if not isinstance(path, (str, os.PathLike)):
            raise CheckpointError("a cascade model is one file; it cannot be an ensemble member", path=path[0])
        if folds is not None or checkpoint != "final":
            raise CheckpointError(
                "folds/checkpoint choose the weights of an nnU-Net folder, not of a cascade", path=path
            )
        options = CheckpointOptions.parse(inference_overrides)
        ckpt = load_checkpoint(path)
        s1 = _stage1_checkpoint(ckpt, path)
        labels = LabelTable.from_dict(ckpt["labels"], source=str(path))
        if expected_labels is not None and not labels.same_structures(expected_labels):
            raise CheckpointError(
                f"checkpoint segments {labels.names} (table {labels.name!r}) but {expected_labels.names} "
                f"(table {expected_labels.name!r}) was asked for; use a checkpoint trained for that label table",
                path=path,
            )
        s1["path"] = str(path)
        stage1 = CheckpointPredictor(
            [build_model(s1)],
            labels=labels,
            preprocessing=s1["preprocessing"],
            inference={**default_inference(), **s1["inference"], **options.overrides},
            device=device,
            provenance={"in_channels": int(s1["model"].get("in_channels", 1))},
            progress=progress,
        )
        provenance = {
            "model_path": str(path),
            "model_sha256": ckpt["file_sha256"],
            "weights_sha256": ckpt.get("weights_sha256"),
            "model_name": f"cascade:{s1['model']['name']}+{ckpt['model']['name']}",
            "trained_with": ckpt.get("versions", {}),
            "in_channels": int(ckpt["model"]["in_channels"]),
            "cascade": {
                "stage1_weights_sha256": s1.get("weights_sha256"),
                "stage1_spacing": list(s1["preprocessing"]["spacing"]),
                "stage2_spacing": list(ckpt["preprocessing"]["spacing"]),
            },
        }
        return cls(
            [build_model(ckpt)],
            stage1=stage1,
            labels=labels,
            preprocessing=ckpt["preprocessing"],
            inference={**default_inference(), **ckpt["inference"], **options.overrides},
            device=device,
            provenance=provenance,
            progress=progress,
        )

    def _network_input(self, source, findings: list):
        """Stage 2's input: the image channels (``CheckpointPredictor``'s steps 1-3), then stage 1's labels taken to
        the same grid (oriented, nearest-neighbour sampled) as one channel per structure (``prior_channels``), not
        normalised."""
        import torch

        if not isinstance(source, _CascadeInput):  # (predict passes one; a direct call segments with stage 1 here)
            volumes = self._volumes(source)
            source = _CascadeInput(volumes, self.stage1.predict(volumes))
        volume, x, grid, t_read = super()._network_input(source.volumes, findings)
        view, _, _, reverse = closest_ras_view(np.asarray(source.prior.array)[None], volume.affine)
        prior = resample(view, grid.size, grid.steps, mode="nearest", reverse=reverse)
        absent = floor_value(self.preprocessing) or 0.0
        x = torch.cat([x, prior_channels(prior, self.labels.num_classes, absent)[None].to(x.dtype)], dim=1)
        return volume, x, grid, t_read

    def _volumes(self, source) -> list:
        """The case's channels, each read once (stage 1 and stage 2 both use them)."""
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        return [s if isinstance(s, Volume) else read_volume(s) for s in sources]

    def predict(self, source, *, keep_probabilities: bool = False) -> Volume:
        """Segment one case (as ``CheckpointPredictor.predict``): stage 1, then stage 2 with its prior."""
        volumes = self._volumes(source)
        first = self.stage1.predict(volumes)
        result = super().predict(_CascadeInput(volumes, first), keep_probabilities=keep_probabilities)
        result.meta["cascade"] = {
            "stage1_seconds": first.meta.get("seconds"),
            "stage1_network_grid": first.meta.get("network_grid"),
            "stage1_confidence": first.meta.get("confidence"),
        }
        return result


def load(
    path,
    *,
    device=None,
    progress: bool = False,
    folds=None,
    checkpoint: str = "final",
    expected_labels: LabelTable | None = None,
    **options,
) -> CascadePredictor:
    """The ``medseg.inference.load`` format's loader."""
    return CascadePredictor.from_checkpoint(
        path,
        device=device,
        expected_labels=expected_labels,
        progress=progress,
        folds=folds,
        checkpoint=checkpoint,
        **options,
    )


def run_summary(path) -> dict:
    """What ``medseg run`` records of a cascade file: the checkpoint's fields without weights (both stages' hashes)."""
    ckpt = load_checkpoint(path)
    s1 = _stage1_checkpoint(ckpt, path)
    keep: dict[str, Any] = {k: v for k, v in ckpt.items() if k not in ("state_dict", "cascade")}
    keep["model"] = {**ckpt["model"], "name": f"cascade:{s1['model']['name']}+{ckpt['model']['name']}"}
    keep["cascade"] = {
        "stage1_weights_sha256": s1.get("weights_sha256"),
        "stage1_spacing": list(s1["preprocessing"]["spacing"]),
        "stages": ckpt["cascade"].get("stages", {}),
    }
    return keep
