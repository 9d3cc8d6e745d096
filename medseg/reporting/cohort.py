"""Cohort tables from ``volumes.csv``: outlier flags, ``volumes_wide.csv`` and ``summary.csv``.

Outliers (columns added to the long table):

- ``robust_z``: 0.6745 x (volume - median) / MAD, with median and MAD (median
  absolute deviation) of the structure's volumes over the cases where it is
  ``present`` (Iglewicz & Hoaglin's modified z-score). Empty when fewer than
  ``min_cases`` cases have it present, when the MAD is 0, or for rows that have
  no volume to judge (``absent``, ``not_in_label_table``).
- ``outlier``: True/False; with a reference range for the structure (see
  ``read_reference_ranges``) it is ``volume_ml`` outside [low_ml, high_ml],
  else ``|robust_z| > z_threshold`` (3.5). Empty where it cannot be judged.
- ``outlier_basis``: ``reference_range`` or ``robust_z`` (empty when not judged).

``volumes_wide.csv``: one row per case; ``<structure>_ml`` for every structure
in the label table (empty when the structure is absent), then
``<structure>_status`` so a lower bound (``touches_border``) is never mistaken
for a full volume.

``summary.csv``: per structure, counts by status and the statistics of
``volume_ml`` over the cases where it is ``present`` (n, mean, sd with ddof=1,
median, q1, q3, iqr, min, max), plus the number of flagged outliers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg import safe_yaml
from medseg.errors import InputError
from medseg.reporting.volumes import FOUND as JUDGED  # statuses with a measured volume

Z_THRESHOLD = 3.5
MIN_CASES = 5


def read_reference_ranges(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Reference volume ranges per structure from a CSV (``structure,low_ml,high_ml``) or YAML
    (``{structure: [low_ml, high_ml]}``); an empty bound is open."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputError("reference ranges file not found", path=p)
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            data = safe_yaml.load_file(p) or {}
            items = [(str(k), v[0], v[1]) for k, v in data.items()]
        else:
            df = pd.read_csv(p)
            missing = {"structure", "low_ml", "high_ml"} - set(df.columns)
            if missing:
                raise InputError(f"missing column(s) {sorted(missing)}; expected structure,low_ml,high_ml", path=p)
            items = list(zip(df["structure"].astype(str), df["low_ml"], df["high_ml"], strict=False))
        return {s: (_bound(lo, -np.inf), _bound(hi, np.inf)) for s, lo, hi in items}
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"cannot read reference ranges ({type(exc).__name__}: {exc}); expected structure,low_ml,high_ml", path=p
        ) from None


def _bound(value, default: float) -> float:
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def add_outlier_flags(
    df,
    reference_ranges: dict[str, tuple[float, float]] | None = None,
    *,
    z_threshold: float = Z_THRESHOLD,
    min_cases: int = MIN_CASES,
):
    """Add ``robust_z``, ``outlier`` and ``outlier_basis`` to a long volumes table (a copy)."""
    import pandas as pd

    df = df.copy(deep=False)  # copy-on-write (pandas 3): the columns written below are new, the caller's unchanged
    df["robust_z"] = np.nan
    df["outlier"] = pd.array([pd.NA] * len(df), dtype="boolean")
    df["outlier_basis"] = pd.array([pd.NA] * len(df), dtype="string")
    ranges = reference_ranges or {}
    for structure, idx in df.groupby("structure").groups.items():
        part = df.loc[idx]
        judged = part.index[part["status"].isin(JUDGED)]
        ref_vals = part.loc[part["status"] == "present", "volume_ml"].to_numpy(dtype=float)
        if ref_vals.size >= min_cases:
            med = np.median(ref_vals)
            mad = np.median(np.abs(ref_vals - med))
            if mad > 0:
                df.loc[judged, "robust_z"] = 0.6745 * (df.loc[judged, "volume_ml"].to_numpy(dtype=float) - med) / mad
        if structure in ranges:
            lo, hi = ranges[structure]
            v = df.loc[judged, "volume_ml"].to_numpy(dtype=float)
            df.loc[judged, "outlier"] = (v < lo) | (v > hi)
            df.loc[judged, "outlier_basis"] = "reference_range"
        else:
            z = df.loc[judged, "robust_z"]
            scored = z.index[z.notna()]
            df.loc[scored, "outlier"] = z[scored].abs() > z_threshold
            df.loc[scored, "outlier_basis"] = "robust_z"
    return df


def wide_frame(df, structures: list[str]):
    """One row per case: ``<structure>_ml`` (empty when absent) then ``<structure>_status``."""
    import pandas as pd

    cases = list(dict.fromkeys(df["case_id"]))
    listed = df.loc[df["structure"].isin(structures), ["case_id", "structure", "volume_ml", "status"]]
    vol = listed.pivot(index="case_id", columns="structure", values="volume_ml")
    status = listed.pivot(index="case_id", columns="structure", values="status")
    vol = vol.where(status != "absent")
    out = pd.DataFrame({"case_id": cases})
    for s in structures:
        out[f"{s}_ml"] = vol[s].reindex(cases).to_numpy() if s in vol else np.nan
    for s in structures:
        out[f"{s}_status"] = status[s].reindex(cases).to_numpy() if s in status else ""
    return out


def summary_frame(df, structures: list[str]):
    """Per structure: counts by status and statistics of the ``present`` volumes (mL)."""
    import pandas as pd

    rows = []
    slim = df[[c for c in ("structure", "status", "volume_ml", "outlier") if c in df]]  # not a copy of every column
    parts = dict(iter(slim.groupby("structure", sort=False)))  # one pass, not one scan of the table per structure
    for s in structures:
        part = parts[s] if s in parts else slim.iloc[0:0]
        v = part.loc[part["status"] == "present", "volume_ml"].to_numpy(dtype=float)
        row = {"structure": s, "n_cases": len(part), "n_present": int(v.size)}
        for st in ("touches_border", "below_min_size", "absent"):
            row[f"n_{st}"] = int((part["status"] == st).sum())
        q1, med, q3 = np.percentile(v, [25, 50, 75]) if v.size else (np.nan,) * 3
        row.update(
            mean_ml=v.mean() if v.size else np.nan,
            sd_ml=v.std(ddof=1) if v.size > 1 else np.nan,
            median_ml=med,
            q1_ml=q1,
            q3_ml=q3,
            iqr_ml=q3 - q1,
            min_ml=v.min() if v.size else np.nan,
            max_ml=v.max() if v.size else np.nan,
        )
        row["n_outliers"] = int(part["outlier"].fillna(False).sum()) if "outlier" in part else 0
        rows.append(row)
    return pd.DataFrame(rows)
