"""Validation Dice per structure with sliding-window inference on the preprocessed cases."""

from __future__ import annotations

import numpy as np

from medseg.inference.sliding_window import window_scores


def validate(model, dataset, inference, table, device, *, floor: float = 0.0) -> dict:
    """Mean Dice over validation cases for each structure of ``table`` (NaN where a structure is in none)."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    was_training = model.training
    model.eval()
    rows = []
    for item in dataset:
        logits = window_scores(
            model,
            item["image"][None],
            roi_size=inference.roi_size,
            overlap=inference.overlap,
            sw_batch_size=inference.sw_batch_size,
            blend=inference.blend,
            device=device,
            floor=floor,
        )
        pred = one_hot(logits.argmax(1, keepdim=True).cpu(), table.num_classes)
        ref = one_hot(item["label"][None].long(), table.num_classes)
        rows.append(metric(pred, ref)[0].numpy())
    model.train(was_training)
    per_class = np.nanmean(np.stack(rows), axis=0) if rows else np.full(table.num_classes - 1, np.nan)
    names = {lab.index: lab.name for lab in table.labels}
    return {names[i + 1]: float(d) for i, d in enumerate(per_class) if (i + 1) in names}
