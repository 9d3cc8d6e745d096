"""Segmentation metrics against a reference label map (``metrics.csv``).

Per case x structure: Dice, volumes of prediction and reference and their
difference. Empty structures are explicit in ``status``:

- ``both_present``: Dice as usual
- ``pred_empty`` / ``ref_empty``: Dice 0 (one side found nothing)
- ``both_empty``: Dice is undefined and left empty (not 1, not 0)
"""

from __future__ import annotations

import numpy as np

from medseg.io.volume import Volume
from medseg.labels import LabelTable

COLUMNS = ["case_id", "structure", "label", "status", "dice", "volume_pred_ml", "volume_ref_ml", "volume_error_ml", "volume_error_pct"]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    a, b = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if a + b == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(pred & ref)) / (a + b)


def metric_rows(case_id: str, pred: Volume, ref: Volume, table: LabelTable) -> list[dict]:
    """Rows of ``metrics.csv`` for one case; ``pred`` and ``ref`` must share a grid."""
    from medseg.io.volume import require_same_grid
    from medseg.reporting.volumes import as_label_array

    require_same_grid(pred, ref, what="prediction")
    p, r = as_label_array(pred), as_label_array(ref)
    vv_ml = ref.voxel_volume_mm3 / 1000.0
    rows = []
    for lab in table.labels:
        pm, rm = p == lab.index, r == lab.index
        n_p, n_r = int(np.count_nonzero(pm)), int(np.count_nonzero(rm))
        status = {(True, True): "both_present", (False, True): "pred_empty", (True, False): "ref_empty", (False, False): "both_empty"}[(n_p > 0, n_r > 0)]
        vp, vr = n_p * vv_ml, n_r * vv_ml
        rows.append({
            "case_id": case_id, "structure": lab.name, "label": lab.index, "status": status,
            "dice": dice(pm, rm), "volume_pred_ml": vp, "volume_ref_ml": vr, "volume_error_ml": vp - vr,
            "volume_error_pct": 100.0 * (vp - vr) / vr if n_r else float("nan"),
        })
    return rows
