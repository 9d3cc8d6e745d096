"""Segmentation metrics against a reference label map (``metrics.csv``).

Per case x structure:

- ``dice``, ``iou``: overlap of prediction and reference.
- ``hd95_mm``, ``assd_mm``: 95% Hausdorff and average symmetric surface
  distance in mm; ``nsd``: normalised surface Dice at ``nsd_tolerance_mm``
  (definitions in ``medseg.reporting.surface``).
- ``volume_pred_ml``, ``volume_ref_ml``; ``volume_error_ml`` = pred - ref
  (signed), ``volume_error_pct`` = 100 x (pred - ref) / ref; ``abs_volume_error_ml``
  and ``abs_volume_error_pct`` their absolute values.

Empty structures are explicit in ``status``; a metric that is undefined is an
empty cell (never 0 or 1 standing in for "undefined"):

=============  ==========  ====================  ==========================
status         dice, iou   hd95, assd            nsd        volume_error_pct
=============  ==========  ====================  ==========================
both_present   computed    computed              computed   computed
pred_empty     0           empty (no surface)    0          -100
ref_empty      0           empty (no surface)    0          empty (ref is 0)
both_empty     empty       empty                 empty      empty
=============  ==========  ====================  ==========================
"""

from __future__ import annotations

import numpy as np

from medseg.io.volume import Volume, label_boxes, require_same_grid
from medseg.labels import LabelTable
from medseg.reporting.surface import assd, hd95, nsd, surface_distances
from medseg.reporting.volumes import as_label_array

COLUMNS = [
    "case_id",
    "structure",
    "label",
    "status",
    "dice",
    "iou",
    "hd95_mm",
    "assd_mm",
    "nsd",
    "nsd_tolerance_mm",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_error_ml",
    "volume_error_pct",
    "abs_volume_error_ml",
    "abs_volume_error_pct",
]
DEFAULT_NSD_TOLERANCE_MM = 2.0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    a, b = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if a + b == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(pred & ref)) / (a + b)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union of two boolean masks; NaN when both are empty."""
    union = int(np.count_nonzero(pred | ref))
    if union == 0:
        return float("nan")
    return int(np.count_nonzero(pred & ref)) / union


def metric_rows(
    case_id: str,
    pred: Volume,
    ref: Volume,
    table: LabelTable,
    *,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    surface: bool = True,
) -> list[dict]:
    """Rows of ``metrics.csv`` for one case; ``pred`` and ``ref`` must share a grid.

    ``surface=False`` skips the surface distances (their cells stay empty).
    """
    require_same_grid(pred, ref, what="prediction")
    p, r = as_label_array(pred), as_label_array(ref)
    vv_ml = ref.voxel_volume_mm3 / 1000.0
    nan = float("nan")
    # Per-label bounding boxes, so each structure is measured on the crop holding it in either map.
    boxes_p, boxes_r = label_boxes(p), label_boxes(r)  # from the values present, whatever the largest
    rows = []
    for lab in table.labels:
        sl = _union_box(lab.index, boxes_p, boxes_r)
        pm, rm = (p[sl] == lab.index, r[sl] == lab.index) if sl is not None else (np.zeros(0, bool), np.zeros(0, bool))
        n_p, n_r = int(np.count_nonzero(pm)), int(np.count_nonzero(rm))
        status = {
            (True, True): "both_present",
            (False, True): "pred_empty",
            (True, False): "ref_empty",
            (False, False): "both_empty",
        }[(n_p > 0, n_r > 0)]
        vp, vr = n_p * vv_ml, n_r * vv_ml
        row = {
            "case_id": case_id,
            "structure": lab.name,
            "label": lab.index,
            "status": status,
            "dice": dice(pm, rm),
            "iou": iou(pm, rm),
            "hd95_mm": nan,
            "assd_mm": nan,
            "nsd": nan,
            "nsd_tolerance_mm": nsd_tolerance_mm,
            "volume_pred_ml": vp,
            "volume_ref_ml": vr,
            "volume_error_ml": vp - vr,
            "abs_volume_error_ml": abs(vp - vr),
            "volume_error_pct": 100.0 * (vp - vr) / vr if n_r else nan,
            "abs_volume_error_pct": 100.0 * abs(vp - vr) / vr if n_r else nan,
        }
        if status == "both_present" and surface:
            d_pr, d_rp = surface_distances(pm, rm, ref.spacing)
            row.update(hd95_mm=hd95(d_pr, d_rp), assd_mm=assd(d_pr, d_rp), nsd=nsd(d_pr, d_rp, nsd_tolerance_mm))
        elif status in ("pred_empty", "ref_empty"):
            row["nsd"] = 0.0
        rows.append(row)
    return rows


def _union_box(index: int, boxes_p: dict, boxes_r: dict) -> tuple[slice, ...] | None:
    """Bounding box of label ``index`` in the prediction or the reference; None when in neither."""
    found = [b[index] for b in (boxes_p, boxes_r) if index in b]
    if not found:
        return None
    return tuple(slice(min(b[a].start for b in found), max(b[a].stop for b in found)) for a in range(3))


def dice_summary(metrics_csv) -> str:
    """``Dice (mean over N case(s)): liver 0.961, spleen 0.944 ...`` from ``metrics.csv``, in the table's order
    (what ``medseg evaluate`` prints)."""
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    means = df.groupby("structure", sort=False)["dice"].mean()
    parts = ", ".join(f"{name} {value:.3f}" if value == value else f"{name} n/a" for name, value in means.items())
    return f"Dice (mean over {df['case_id'].nunique()} case(s)): {parts}"
