"""Data manifests: CSV lists of cases (``data_manifests/README.md`` has the schema).

Required columns: ``case_id, image``; ``label`` for training/evaluation;
``split`` (train / val / test). Paths are relative to the manifest file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from medseg.errors import InputError

SPLITS = ("train", "val", "test")


def read_manifest(path: str | Path, *, require_labels: bool = False):
    """Read a manifest; resolve paths; report every missing file at once."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputError("manifest not found", path=p)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"cannot read as CSV ({exc})", path=p) from None
    needed = ["case_id", "image"] + (["label"] if require_labels else [])
    missing_cols = [c for c in needed if c not in df.columns]
    if missing_cols:
        raise InputError(f"missing column(s) {missing_cols}; found {list(df.columns)}", path=p)
    if df["case_id"].duplicated().any():
        dups = sorted(df.loc[df["case_id"].duplicated(), "case_id"].unique())[:5]
        raise InputError(f"duplicate case_id(s) {dups}; each case must appear once", path=p)
    if "split" not in df.columns:
        df["split"] = "train"
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise InputError(f"unknown split value(s) {bad_split}; expected one of {list(SPLITS)}", path=p)

    problems = []
    for col in [c for c in ("image", "label") if c in df.columns]:
        resolved = []
        for case, rel in zip(df["case_id"], df[col]):
            if rel == "":
                resolved.append("")
                if col == "image" or require_labels:
                    problems.append(f"{case}: empty {col}")
                continue
            f = Path(rel) if Path(rel).is_absolute() else (p.parent / rel)
            if not f.exists():
                problems.append(f"{case}: {col} {rel} not found")
            resolved.append(str(f.resolve()) if f.exists() else str(f))
        df[col] = resolved
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"{len(problems)} problem(s): {shown}", path=p)
    return df


def manifest_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
