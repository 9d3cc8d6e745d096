"""The names a label map's values stand for, read from what travels with the file, and matching by name.

A label value means nothing by itself: ``medseg convert`` numbers an RTSTRUCT's structures alphabetically
(kidney_left=1), a model numbers them as it was trained (liver=1). ``medseg report`` and ``medseg evaluate``
therefore read each file's own table and compare structures by name, never value with value.

Where a label map's names are found (first that exists):

1. the ``predict`` sidecar ``<case>.json`` beside it (its ``labels``);
2. ``<case>.labels.yaml`` beside it (``medseg convert`` writes ``X.label.nii.gz`` with ``X.labels.yaml``);
3. ``dataset.json`` in its folder or the folder above (nnU-Net: ``Dataset/labelsTr/x.nii.gz``);
4. a manifest's table in the folder above: ``<stem>_labels.yaml`` beside ``<stem>.csv`` (what
   ``medseg phantoms`` and ``medseg manifest from-folder`` write: ``ph/labels/x.nii.gz``, ``ph/manifest_labels.yaml``).

A file with none of these takes the table the user passes (``--label-table``); with none given, the
commands refuse in one line rather than guess.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.config import resolve_label_table_path
from medseg.data.label_sources import read_dataset_json
from medseg.errors import InputError
from medseg.io.readers import ITK_SUFFIXES, NIFTI_SUFFIXES, case_id_for
from medseg.labels import LabelTable

log = logging.getLogger(__name__)
PathLike = str | os.PathLike

#: Files medseg writes beside label maps that are not label maps (probabilities are 4D class scores).
NOT_LABEL_MAPS = (".probabilities.nii.gz", ".probabilities.nii")


def label_files(inputs: Sequence[PathLike], what: str = "label maps", *, images: bool = False) -> list[Path]:
    """``inputs`` with every folder replaced by its label map files (sorted), probability maps left out.

    In a folder ``medseg convert`` wrote, the label maps are its ``*.label.nii.gz`` (the series' images beside
    them are not; with ``images`` it is the other way round); a folder without NIfTI/NRRD/MHA files (a DICOM folder)
    stays as it is.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            out.append(p)
            continue
        files = sorted(
            f
            for f in p.iterdir()
            if f.is_file()
            and not f.name.startswith(".")
            and f.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)
            and not f.name.lower().endswith(NOT_LABEL_MAPS)
        )
        labelled = [f for f in files if case_id_for(f).endswith(".label")]  # medseg convert's label maps beside images
        if images:
            files = [f for f in files if f not in labelled]
        out += (files if images else labelled or files) or [p]
    if not out:
        raise InputError(f"no {what} given")
    return out


def explicit_table(label_table: LabelTable | PathLike | None) -> LabelTable | None:
    if label_table is None or isinstance(label_table, LabelTable):
        return label_table
    return LabelTable.from_yaml(resolve_label_table_path(str(label_table)))


def travelling_table(path: PathLike) -> tuple[LabelTable | None, str]:
    """The table that travels with label map ``path`` and where it was found, or ``(None, "")``."""
    p = Path(path)
    stem, folder = case_id_for(p), p.parent
    sidecar = folder / f"{stem}.json"
    if sidecar.is_file():
        table = _sidecar_table(str(sidecar))
        if table is not None:
            return table, str(sidecar)
    for cand in dict.fromkeys(
        [folder / f"{stem}.labels.yaml", folder / f"{re.sub(r'[.]label$', '', stem)}.labels.yaml"]
    ):
        if cand.is_file():
            return LabelTable.from_yaml(cand), str(cand)
    for cand in (folder / "dataset.json", folder.parent / "dataset.json"):
        if cand.is_file():
            return _dataset_table(str(cand)), str(cand)
    manifest_table = _manifest_table(str(folder.parent))
    if manifest_table is not None:
        return manifest_table
    return None, ""


def _sidecar_table(path: str) -> LabelTable | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        return None
    return LabelTable.from_dict(data["labels"], source=path)


def _dataset_table(path: str) -> LabelTable:
    return read_dataset_json(Path(path))


def _manifest_table(folder: str) -> tuple[LabelTable, str] | None:
    """``<stem>_labels.yaml`` beside ``<stem>.csv`` in ``folder``, when exactly one such pair is there."""
    try:
        found = [
            t
            for t in Path(folder).glob("*_labels.yaml")
            if t.with_name(t.name[: -len("_labels.yaml")] + ".csv").is_file()
        ]
    except OSError:
        return None
    if len(found) != 1:
        return None
    return LabelTable.from_yaml(found[0]), str(found[0])


def _key(name: str) -> str:
    """Names compare case-insensitively with spaces, dashes and underscores alike ("Kidney Left" = kidney_left)."""
    return re.sub(r"[\W_]+", "_", str(name).strip().lower()).strip("_")


def value_map(source: LabelTable, target: LabelTable) -> dict[int, int]:
    """``source`` value -> ``target`` value for the structures both name."""
    by_key = {_key(lab.name): lab.index for lab in target.labels}
    return {lab.index: by_key[_key(lab.name)] for lab in source.labels if _key(lab.name) in by_key}


def renumbered(array: np.ndarray, mapping: dict[int, int], *, keep_unnamed: bool = True) -> np.ndarray:
    """``array`` with each value ``k`` of ``mapping`` replaced by ``mapping[k]`` (the same array when nothing moves).

    Values that ``mapping`` does not hold stay as they are with ``keep_unnamed`` (a report lists them as
    ``unlisted_<value>``), unless one would then read as a named structure (refused); else they become 0.
    Works from the values present, never from the largest value.
    """
    moved = {k: v for k, v in mapping.items() if k != v}
    if not moved and keep_unnamed:
        return array
    present = set(np.unique(array).tolist()) - {0}
    others = present - set(mapping)
    if keep_unnamed and others & set(mapping.values()):
        raise InputError(
            f"value {min(others & set(mapping.values()))} is named by no label table of this file but is "
            "another structure's value after matching by name; name every value of the label map"
        )
    if not moved and not others:
        return array
    top = max([*mapping.values(), *(others if keep_unnamed else [])], default=0)
    out = np.zeros(array.shape, dtype=np.min_scalar_type(top))
    for k in present:
        v = mapping.get(k, k if keep_unnamed else 0)
        if v:
            out[array == k] = v
    return out


def _names(table: LabelTable, limit: int = 8) -> str:
    names = table.names
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def tables_for(paths: Sequence[PathLike], given: LabelTable | None, what: str) -> list[tuple[LabelTable, str]]:
    """Each file's table and its origin: the one travelling with it, else the one given; refuse a file with neither."""
    out = []
    for p in paths:
        table, origin = travelling_table(p)
        if table is None:
            if given is None:
                raise InputError(
                    f"the {what} carries no label names (no predict sidecar, .labels.yaml, dataset.json or "
                    "manifest table beside it); pass --label-table naming the structure of each value",
                    path=p,
                )
            table, origin = given, "--label-table"
        out.append((table, origin))
    return out


def common_structures(
    pred: LabelTable, ref: LabelTable, pred_path: PathLike, ref_path: PathLike
) -> tuple[LabelTable, dict[int, int]]:
    """The structures ``pred`` and ``ref`` both name (in ``pred``'s numbering) and the map of ``ref``'s values onto it.

    No name in common is a one-line refusal; names only one side has are left out with a warning.
    """
    mapping = value_map(ref, pred)
    if not mapping:
        raise InputError(
            f"the prediction {Path(pred_path).name} names [{_names(pred)}] and the reference names "
            f"[{_names(ref)}]: no structure in common, so nothing can be compared by name; give label "
            "tables that name the same structures (medseg convert --label-table numbers converted ones)",
            path=ref_path,
        )
    keep = set(mapping.values())
    only_pred = [lab.name for lab in pred.labels if lab.index not in keep]
    only_ref = [lab.name for lab in ref.labels if lab.index not in mapping]
    if only_pred or only_ref:
        log.warning(
            "%s: compared by name on %d structure(s); only in the prediction: %s; only in the reference: %s",
            case_id_for(pred_path),
            len(keep),
            ", ".join(only_pred) or "none",
            ", ".join(only_ref) or "none",
        )
    table = LabelTable(pred.name, tuple(lab for lab in pred.labels if lab.index in keep))
    return table, mapping


def one_table(paths: Sequence[PathLike], given: LabelTable | None) -> tuple[LabelTable, list[dict[int, int]]]:
    """The report's table (the one given, else the first file's) and, per file, the map of its values onto it.

    Every file must name the same structures (in any numbering): a file naming others would have its
    structures reported as absent or lost, so it is refused in one line.
    """
    tables = tables_for(paths, given, "label map")
    target = given if given is not None else tables[0][0]
    maps = []
    for p, (table, origin) in zip(paths, tables, strict=False):
        mapping = value_map(table, target)
        missing = [lab.name for lab in table.labels if lab.index not in mapping]
        absent = sorted(set(target.names) - {lab.name for lab in target.labels if lab.index in set(mapping.values())})
        if missing or absent:
            raise InputError(
                f"its label names ({origin}: {_names(table)}) are not those of the report's table "
                f"{target.name!r} ({_names(target)}); report label maps of one table together, or pass "
                "--label-table",
                path=p,
            )
        if any(k != v for k, v in mapping.items()):
            log.info("%s: values renumbered by name onto table %r", Path(p).name, target.name)
        maps.append(mapping)
    return target, maps
