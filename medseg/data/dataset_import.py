"""Manifests from the layouts public data sets come in: nnU-Net raw and Medical Segmentation Decathlon.

- nnU-Net v2 raw: ``imagesTr/<case>_0000.nii.gz`` (one file per channel:
  ``_0001``...), ``labelsTr/<case>.nii.gz``, ``imagesTs/`` (``labelsTs/`` when the set
  has test labels), and ``dataset.json``
  with ``labels`` as ``{"background": 0, "liver": 1}`` and ``channel_names``.
- Decathlon (and nnU-Net v1): ``dataset.json`` with ``training``
  (``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``),
  ``test``, ``labels`` as ``{"0": "background", "1": "liver"}`` and ``modality``.
  Decathlon images are 4D when they have several channels; medseg reads 3D
  channels, so such sets need their channels split first (reported, not guessed).

Writes the manifest (paths relative to it; optional ``fold`` column) and the
label table YAML next to it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medseg import safe_json
from medseg.data.label_sources import table_from_dataset_json_labels
from medseg.errors import InputError
from medseg.io.atomic import write_csv, write_text


def _modality(meta: dict) -> list[str]:
    chans = meta.get("channel_names") or meta.get("modality") or {}
    return [str(chans[k]) for k in sorted(chans, key=lambda x: int(x))]


def manifest_from_folder(folder: str | Path, out: str | Path, *, folds: int = 0, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out`` (manifest CSV) and ``<out stem>_labels.yaml``; return both paths."""
    import pandas as pd
    import yaml

    root = Path(folder)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError("no dataset.json; expected an nnU-Net raw or Decathlon data set folder", path=root)
    meta = safe_json.load_file(meta_path, error=InputError)  # bounded size, depth and values; one line naming the file
    name = re.sub(r"\W+", "_", str(meta.get("name") or root.name)).strip("_").lower()
    table = table_from_dataset_json_labels(meta.get("labels", {}), name)
    channels = _modality(meta) or ["image"]
    out = Path(out)
    rows = []
    if meta.get("training") and isinstance(meta["training"], list) and isinstance(meta["training"][0], dict):
        for item in meta["training"]:
            rows.append(_row(root, item["image"], item.get("label", ""), "train", n_channels=1))
        for item in meta.get("test", []):
            rows.append(_row(root, item if isinstance(item, str) else item["image"], "", "test", n_channels=1))
    else:  # nnU-Net v2 layout, found on disk
        ending = meta.get("file_ending", ".nii.gz")
        for split, img_dir, lab_dir in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
            for f in sorted((root / img_dir).glob(f"*_0000{ending}")):
                case = f.name[: -len(f"_0000{ending}")]
                imgs = [root / img_dir / f"{case}_{c:04d}{ending}" for c in range(len(channels))]
                lab: Path | str = root / lab_dir / f"{case}{ending}"
                if (
                    split == "test" and not Path(lab).is_file()
                ):  # labelsTs/ is optional: test cases are predicted, and evaluated when labelled
                    lab = ""
                rows.append(_row(root, imgs, lab, split, n_channels=len(channels), case=case))
    if not rows:
        raise InputError("no cases found (imagesTr/ empty and no 'training' list in dataset.json)", path=root)
    df = pd.DataFrame(rows)
    for col in [c for c in df.columns if c.startswith("image") or c == "label"]:
        df[col] = [_relative(p, out.parent) if p else "" for p in df[col]]
    if folds and folds > 1:
        rng = np.random.default_rng(seed)
        train_idx = np.flatnonzero(df["split"].to_numpy() == "train")
        order = rng.permutation(train_idx)
        fold = np.full(len(df), "", dtype=object)
        for k, i in enumerate(order):
            fold[i] = str(k % folds)
        df["fold"] = fold
    write_csv(out, df)
    table_path = out.with_name(out.stem + "_labels.yaml")
    write_text(
        table_path,
        "# written by medseg manifest from-folder from "
        + str(meta_path.name)
        + "\n"
        + yaml.safe_dump({**table.to_dict(), "labels": table.to_dict()["labels"]}, sort_keys=False),
    )
    return out, table_path


def _row(root: Path, images, label, split: str, *, n_channels: int, case: str | None = None) -> dict:
    imgs = (
        images
        if isinstance(images, list)
        else [root / str(images).removeprefix("./") if not Path(str(images)).is_absolute() else Path(images)]
    )
    lab = label if isinstance(label, Path) else (root / str(label).removeprefix("./") if label else "")
    case = case or re.sub(r"(\.nii(\.gz)?|\.nrrd|\.mha)$", "", Path(imgs[0]).name)
    row = {"case_id": case, "image": imgs[0]}
    for c, p in enumerate(imgs[1:], start=1):
        row[f"image_{c}"] = p
    row.update(label=lab, split=split)
    return row


def _relative(path, base: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), base.resolve())
