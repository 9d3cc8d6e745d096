"""Checkpoint -> label map on the input's own grid.

``Predictor.predict`` runs, in order:

1. orient   -- permute/flip the input to its closest RAS layout (exact, lossless)
2. spacing  -- resample to the checkpoint's training spacing (edge-aligned grid)
3. intensity -- the checkpoint's CT window, scaled to [0, 1]
4. windows  -- sliding-window class scores
then undoes 2 on the scores (back to the oriented grid), takes the argmax, undoes
1 on the labels, and checks that shape and affine equal the input's. The
returned label map carries the input's affine unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from medseg.errors import CheckpointError, GeometryError
from medseg.io.volume import Volume
from medseg.labels import LabelTable

log = logging.getLogger(__name__)


class Predictor:
    def __init__(self, model, *, labels: LabelTable, preprocessing: dict, inference: dict, device=None, provenance: dict | None = None):
        import torch

        from medseg.inference.sliding_window import default_device

        self.device = torch.device(device) if device else default_device()
        self.model = model.to(self.device).eval()
        self.labels = labels
        self.preprocessing = dict(preprocessing)
        self.inference = dict(inference)
        self.provenance = dict(provenance or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device=None, expected_labels: LabelTable | None = None, **inference_overrides) -> "Predictor":
        """Load a checkpoint. ``expected_labels``: refuse a checkpoint trained for another label table."""
        from medseg.checkpoint import build_model, load_checkpoint

        ckpt = load_checkpoint(path)
        labels = LabelTable.from_dict(ckpt["labels"], source=str(path))
        if expected_labels is not None and not labels.same_structures(expected_labels):
            raise CheckpointError(
                f"checkpoint segments {labels.names} (table {labels.name!r}) but {expected_labels.names} "
                f"(table {expected_labels.name!r}) was asked for; use a checkpoint trained for that label table",
                path=path,
            )
        unknown = set(inference_overrides) - set(ckpt["inference"])
        if unknown:
            from medseg.errors import ConfigError

            raise ConfigError(f"unknown inference option(s) {sorted(unknown)}; accepted: {sorted(ckpt['inference'])}")
        provenance = {
            "model_path": str(path),
            "model_sha256": ckpt["file_sha256"],
            "weights_sha256": ckpt.get("weights_sha256"),
            "model_name": ckpt["model"]["name"],
            "trained_with": ckpt.get("versions", {}),
        }
        return cls(
            build_model(ckpt),
            labels=labels,
            preprocessing=ckpt["preprocessing"],
            inference={**ckpt["inference"], **inference_overrides},
            device=device,
            provenance=provenance,
        )

    def predict(self, source: Volume | str | os.PathLike) -> Volume:
        """Segment one image (a path, a DICOM folder or a Volume); the result sits on its grid."""
        import torch

        from medseg.inference.sliding_window import window_scores
        from medseg.io.geometry import from_closest_ras, to_closest_ras
        from medseg.io.readers import read_volume
        from medseg.transforms.spatial import resample, target_shape

        t0 = time.monotonic()
        volume = source if isinstance(source, Volume) else read_volume(source)

        # 1. orient
        array, affine, ornt = to_closest_ras(np.asarray(volume.array, dtype=np.float32), volume.affine)
        oriented_shape = array.shape
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        # 2. spacing
        size = target_shape(oriented_shape, spacing, self.preprocessing["spacing"])
        x = resample(torch.from_numpy(array)[None], size, mode="trilinear")
        # 3. intensity
        lo, hi = (float(v) for v in self.preprocessing["window"])
        x = ((x.clamp(lo, hi) - lo) / (hi - lo))[None]
        # 4. windows
        inf = self.inference
        scores = window_scores(
            self.model, x, roi_size=inf["roi_size"], overlap=inf["overlap"], sw_batch_size=inf["sw_batch_size"], blend=inf["blend"], device=self.device
        )[0].float().cpu()
        # undo 2 on the scores, then argmax
        scores = resample(scores, oriented_shape, mode="trilinear")
        labels = scores.argmax(0).to(torch.uint8).numpy()
        del scores
        # undo 1
        labels = from_closest_ras(labels, ornt)

        if labels.shape != volume.shape:
            raise GeometryError(f"prediction shape {labels.shape} differs from the input's {volume.shape} (internal error)", path=volume.source)
        out = Volume(labels, volume.affine.copy(), volume.source, {"seconds": round(time.monotonic() - t0, 3)})
        log.debug("predicted %s in %.2f s", Path(volume.source).name, out.meta["seconds"])
        return out
