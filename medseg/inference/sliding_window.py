"""Sliding-window scores with MONAI's inferer, configured from an InferenceConfig."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def window_scores(model, image: torch.Tensor, *, roi_size, overlap: float, sw_batch_size: int, blend: str = "gaussian", device=None) -> torch.Tensor:
    """Class scores (logits) for a ``(B, C, *spatial)`` image, stitched from overlapping windows.

    Windows run on ``device`` (the model's); the stitched output stays there too.
    """
    from monai.inferers import sliding_window_inference

    device = device or next(model.parameters()).device
    return sliding_window_inference(
        image.to(device),
        roi_size=tuple(int(r) for r in roi_size),
        sw_batch_size=int(sw_batch_size),
        predictor=model,
        overlap=float(overlap),
        mode=blend,
        padding_mode="constant",
        cval=0.0,
    )
