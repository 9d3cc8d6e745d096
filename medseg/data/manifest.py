"""Data manifests: CSV lists of cases (``data_manifests/README.md`` has the schema).

Columns: ``case_id, image`` (+ ``image_1``, ``image_2``... for extra channels
such as T2/FLAIR), ``label`` for training and evaluation, ``split`` (train /
val / test), optional ``fold`` (an integer) and ``sha256`` (of the image file).
Paths are relative to the manifest file.

``read_manifest`` resolves paths and, given a label table, checks every case
before anything starts: missing or unreadable files, label maps whose shape or
affine differs from their image, label values outside the table, and hashes
that do not match. All problems are reported together, with the case ids.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from medseg.data.label_sources import check_table_against_values, values_in
from medseg.errors import InputError
from medseg.io.atomic import unescape_frame
from medseg.io.readers import read_grid, read_volume
from medseg.provenance import file_sha256

SPLITS = ("train", "val", "test")
_EXTRA_IMAGE = re.compile(r"^image_(\d+)$")


def image_columns(df) -> list[str]:
    """``image`` then ``image_1``, ``image_2``... in channel order."""
    extra = sorted((int(m.group(1)), c) for c in df.columns if (m := _EXTRA_IMAGE.match(c)))
    return ["image"] + [c for _, c in extra]


def read_manifest(path: str | Path, *, require_labels: bool = False, label_table=None, check_hashes: bool = True):
    """Read a manifest; resolve paths; report every problem at once (``InputError``).

    ``require_labels``: every training and validation case needs a label map; test cases may
    have none (an nnU-Net folder's ``imagesTs/``), since they are only predicted.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputError("manifest not found", path=p)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"cannot read as CSV ({exc})", path=p) from None
    df = unescape_frame(df)  # the quote write_csv puts before a formula-like id or path
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
    if "fold" in df.columns:
        bad = [c for c, f in zip(df["case_id"], df["fold"], strict=False) if f != "" and not f.lstrip("-").isdigit()]
        if bad:
            raise InputError(f"fold must be an integer; cases {bad[:5]}", path=p)

    problems: list[str] = []
    cols = image_columns(df) + (["label"] if "label" in df.columns else [])
    for col in cols:
        resolved = []
        for case, rel, split in zip(df["case_id"], df[col], df["split"], strict=False):
            if rel == "":
                resolved.append("")
                if col != "label" or require_labels and split != "test":  # test cases need no label: they are predicted
                    problems.append(f"{case}: empty {col}")
                continue
            f = Path(rel) if Path(rel).is_absolute() else (p.parent / rel)
            if not f.exists():
                problems.append(f"{case}: {col} {rel} not found")
            resolved.append(str(f.resolve()) if f.exists() else str(f))
        df[col] = resolved
    if check_hashes and "sha256" in df.columns:
        for case, img, want in zip(df["case_id"], df["image"], df["sha256"], strict=False):
            if want and Path(img).is_file() and file_sha256(img) != want.lower():
                problems.append(
                    f"{case}: image {Path(img).name} does not match its sha256 (changed since the manifest was "
                    "written?)"
                )
    if label_table is not None and "label" in df.columns:
        problems += _check_cases(df, label_table, image_columns(df))
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise InputError(f"{len(problems)} problem(s) found before training: {shown}", path=p)
    return df


def _check_cases(df, table, image_cols: list[str]) -> list[str]:
    """Label maps on their image's grid, with values from the table (files that exist only)."""
    problems, values = [], {}
    for row in df.itertuples(index=False):
        row = row._asdict()
        case, label = row["case_id"], row.get("label", "")
        paths = [row[c] for c in image_cols] + ([label] if label else [])
        if not all(p and Path(p).is_file() for p in paths):
            continue  # missing files are reported already
        try:
            grids = [read_grid(p) for p in paths]
            if label:
                values[case] = values_in(case, label, read_volume(label).array)
        except InputError as exc:
            problems.append(f"{case}: unreadable ({exc}); training reads NIfTI, NRRD and MHA files")
            continue
        ref_shape, ref_affine = grids[0]
        for col, (shape, affine) in zip(image_cols[1:] + (["label"] if label else []), grids[1:], strict=False):
            if shape != ref_shape:
                problems.append(f"{case}: {col} shape {shape} differs from image shape {ref_shape}")
            elif not np.allclose(affine, ref_affine, atol=1e-3):
                problems.append(
                    f"{case}: {col} affine differs from the image's by {np.abs(affine - ref_affine).max():.3g} mm"
                )
    return problems + check_table_against_values(table, values)


def manifest_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
