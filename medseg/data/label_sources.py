"""Where a data set's label table comes from: the data, never a default.

``table_for_manifest`` looks, in this order, for:

1. the table the user names (``medseg plan --labels TABLE``: a path or a name
   under ``configs/labels``);
2. the table ``medseg manifest from-folder`` wrote beside the manifest
   (``<manifest stem>_labels.yaml``);
3. a ``dataset.json`` (nnU-Net v2 ``{"name": index}`` or Decathlon
   ``{"index": "name"}``) beside the manifest, or in the data set folder that
   holds the label maps (``Dataset/labelsTr/x.nii.gz`` -> ``Dataset/dataset.json``);
4. a ``labels.csv`` (columns ``index`` (or ``value``/``label``/``id``) and
   ``name``), an ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``
   lines, e.g. ``labels.txt`` or ``*.label``) or a 3D Slicer ``.seg.nrrd``
   (``SegmentN_Name`` / ``SegmentN_LabelValue`` header fields) beside the manifest;
5. failing all of those, the label values found in the label maps, named
   ``label_1``, ``label_2``... with a one-line warning that says how to name them.

Whatever the source, the table is checked against the label maps before any
training: values found in a map that the table does not name (with the case
ids) and values the table names that no map contains are reported together.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from medseg import safe_json
from medseg.config import resolve_label_table_path
from medseg.errors import ConfigError, InputError
from medseg.io.readers import read_volume
from medseg.labels import Label, LabelTable

log = logging.getLogger(__name__)

#: An ITK-SNAP label description line: IDX R G B A VIS MSH "LABEL".
_ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+\d+\s+\d+\s+"(.*)"\s*$')
#: Headers of a labels.csv: the value column, then the name column.
_CSV_INDEX = ("index", "value", "label", "id", "label_value")
_CSV_NAME = ("name", "structure", "label_name", "description")


@dataclass(frozen=True)
class FoundTable:
    table: LabelTable
    source: str  # where it came from, for the config and the log
    generated: bool = False  # True when named label_1, label_2... from the values found


def clean_name(name: str, index: int) -> str:
    """A structure name usable as a column and file-name part: lower case, words joined by ``_``."""
    return re.sub(r"\W+", "_", str(name).strip().lower()).strip("_") or f"label_{index}"


def table_from_dataset_json_labels(labels: dict, name: str) -> LabelTable:
    """nnU-Net v2 (``{"liver": 1}``) or Decathlon/v1 (``{"1": "liver"}``) ``labels``; background dropped."""
    items = []
    for k, v in labels.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not str(k).isdigit():
            idx, nm = int(v), str(k)
        elif str(k).isdigit():
            idx, nm = int(k), str(v)
        else:
            raise InputError(
                f"dataset.json label entry {k!r}: {v!r} is not 'name: index' or 'index: name' (region labels are not "
                "supported)"
            )
        if idx != 0:
            items.append(Label(idx, clean_name(nm, idx)))
    return LabelTable(name, tuple(sorted(items, key=lambda lab: lab.index)))


def read_dataset_json(path: Path) -> LabelTable:
    meta = safe_json.load_file(path, error=InputError)  # bounded size, depth and values; one line naming the file
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise InputError("dataset.json has no 'labels' mapping", path=path)
    name = clean_name(meta.get("name") or path.parent.name, 0)
    return table_from_dataset_json_labels(meta["labels"], name)


def read_labels_csv(path: Path) -> LabelTable:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputError("labels CSV has no rows", path=path)
    cols = {c.strip().lower(): c for c in rows[0] if c}
    icol = next((cols[c] for c in _CSV_INDEX if c in cols), None)
    ncol = next((cols[c] for c in _CSV_NAME if c in cols and cols[c] != icol), None)
    if icol is None or ncol is None:
        raise InputError(
            f"labels CSV needs an index column ({'/'.join(_CSV_INDEX)}) and a name column ({'/'.join(_CSV_NAME)}); "
            f"found {list(rows[0])}",
            path=path,
        )
    items = []
    for r in rows:
        raw = str(r[icol]).strip()
        if not raw.lstrip("-").isdigit():
            raise InputError(f"labels CSV: index {raw!r} is not an integer", path=path)
        idx = int(raw)
        if idx != 0:
            items.append(Label(idx, clean_name(r[ncol], idx)))
    return LabelTable(clean_name(path.stem, 0), tuple(sorted(items, key=lambda lab: lab.index)))


def read_itksnap(path: Path) -> LabelTable | None:
    """An ITK-SNAP label description file, or ``None`` when the file is not one."""
    items, seen_line = [], False
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ITKSNAP_LINE.match(line)
        if not m:
            return None
        seen_line = True
        idx = int(m.group(1))
        if idx != 0:
            r, g, b = (min(255, int(m.group(i))) for i in (2, 3, 4))
            color = (r, g, b)
            items.append(Label(idx, clean_name(m.group(5), idx), color))
    if not seen_line:
        return None
    return LabelTable(clean_name(path.stem, 0), tuple(sorted(items, key=lambda lab: lab.index)))


def read_seg_nrrd_names(path: Path) -> LabelTable:
    """Segment names and label values from a 3D Slicer ``.seg.nrrd`` header (the voxels are not read)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        for _ in range(10000):  # a header is a few hundred lines; never read the data
            line = fh.readline(1 << 16)
            if not line or not line.strip():
                break
            text = line.decode("latin-1").rstrip("\r\n")
            if ":=" in text:
                key, value = text.split(":=", 1)
                fields[key.strip()] = value.strip()
    segs = sorted({int(m.group(1)) for k in fields if (m := re.match(r"Segment(\d+)_Name$", k))})
    if not segs:
        raise InputError("no SegmentN_Name fields in the header (not a 3D Slicer segmentation?)", path=path)
    items = []
    for i in segs:
        value = fields.get(f"Segment{i}_LabelValue", str(i + 1))
        layer = fields.get(f"Segment{i}_Layer", "0")
        if layer not in ("", "0"):
            raise InputError(
                f"segment {i} is on layer {layer}; overlapping segments cannot form one label map", path=path
            )
        idx = int(value)
        items.append(Label(idx, clean_name(fields[f"Segment{i}_Name"], idx)))
    return LabelTable(clean_name(path.name.split(".")[0], 0), tuple(sorted(items, key=lambda lab: lab.index)))


def label_values(df, known: dict[str, set[int]] | None = None) -> dict[str, set[int]]:
    """The label values present in each case's label map (``case_id -> values``, background included).

    ``known`` holds cases already read (the planner's fingerprint reads the training cases'
    label maps once and passes their values here): they are not read again.
    """
    out = dict(known or {})
    for case, path in zip(df["case_id"], df["label"], strict=False):
        if not path or case in out:
            continue
        try:
            data = read_volume(path).array
        except InputError as exc:
            raise InputError(f"case {case}: label map unreadable ({exc})", path=path) from None
        out[case] = values_in(case, path, data)
    return out


def values_in(case: str, path, data) -> set[int]:
    """The integer label values of one label map array; non-integer values are a one-line error naming the case."""
    import numpy as np

    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        raise InputError(f"case {case}: label map holds non-integer values; expected integer labels", path=path)
    return set(np.unique(data).astype(int).tolist())


def table_from_values(values: dict[str, set[int]], name: str) -> LabelTable:
    found = sorted(set().union(*values.values()) - {0}) if values else []
    if not found:
        raise InputError("no label map holds any structure (all background); nothing to train")
    if found[0] < 0:
        raise InputError(
            f"label maps hold negative values {[v for v in found if v < 0]}; labels are 0 (background) or positive"
        )
    return LabelTable(name, tuple(Label(v, f"label_{v}") for v in found))


def _beside(manifest: Path) -> list[Path]:
    folder = manifest.parent
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _dataset_json_candidates(manifest: Path, df) -> list[Path]:
    cands = [manifest.parent / "dataset.json"]
    labels = [p for p in (df["label"] if "label" in df.columns else []) if p]
    if labels:
        first = Path(labels[0])
        cands += [first.parent / "dataset.json", first.parent.parent / "dataset.json"]
    seen, out = set(), []
    for c in cands:
        if c.is_file() and c.resolve() not in seen:
            seen.add(c.resolve())
            out.append(c)
    return out


def table_for_manifest(
    manifest: str | Path,
    df,
    *,
    explicit: str | Path | None = None,
    values: dict[str, set[int]] | None = None,
    fallback: bool = True,
) -> FoundTable | None:
    """The label table for the manifest's data set (see the module docstring for the order).

    ``values`` (``label_values(df)``, when the caller already has it) saves reading the label maps again.
    ``fallback=False``: ``None`` instead of naming the values ``label_1``... when the data set has no table.
    """
    manifest = Path(manifest)
    if explicit:
        path = resolve_label_table_path(str(explicit), Path.cwd())
        return FoundTable(_read_any(path), f"--labels {path}")
    own = manifest.with_name(manifest.stem + "_labels.yaml")
    if own.is_file():
        return FoundTable(LabelTable.from_yaml(own), str(own))
    for dj in _dataset_json_candidates(manifest, df):
        return FoundTable(read_dataset_json(dj), str(dj))
    beside = _beside(manifest)
    for p in beside:
        if p.name.lower() == "labels.csv":
            return FoundTable(read_labels_csv(p), str(p))
    for p in beside:
        if p.suffix.lower() in (".txt", ".label", ".lut") and "label" in p.name.lower():
            t = read_itksnap(p)
            if t is not None:
                return FoundTable(t, str(p))
    for p in beside:
        if p.name.lower().endswith(".seg.nrrd"):
            return FoundTable(read_seg_nrrd_names(p), str(p))
    if not fallback:
        return None
    name = clean_name(manifest.stem, 0)
    table = table_from_values(values if values is not None else label_values(df), name)
    log.warning(
        "no label table found for %s: the structures are named %s from the values in the label maps; name them with "
        "`medseg plan --labels TABLE` (YAML, labels.csv, ITK-SNAP or dataset.json) or put labels.csv beside the "
        "manifest",
        manifest.name,
        ", ".join(table.names),
    )
    return FoundTable(table, "label values in the label maps (no table found)", generated=True)


def _read_any(path: Path) -> LabelTable:
    """A table file in any of the supported formats, chosen by name and content."""
    lower = path.name.lower()
    if lower.endswith((".yaml", ".yml")):
        return LabelTable.from_yaml(path)
    if lower.endswith(".json"):
        return read_dataset_json(path)
    if lower.endswith(".csv"):
        return read_labels_csv(path)
    if lower.endswith(".seg.nrrd"):
        return read_seg_nrrd_names(path)
    t = read_itksnap(path)
    if t is None:
        raise ConfigError(
            "label table format not recognised; expected YAML, dataset.json, labels.csv, an ITK-SNAP label "
            "description or a .seg.nrrd",
            path=path,
        )
    return t


def check_table_against_values(table: LabelTable, values: dict[str, set[int]]) -> list[str]:
    """Problems, with case ids: values a map holds that the table does not name; table values no map holds; a table
    too sparse to train (FreeSurfer-style values: the network has one output per value up to the largest)."""
    named = {lab.index for lab in table.labels}
    problems = []
    for case, vals in values.items():
        extra = sorted(vals - named - {0})
        if extra:
            problems.append(f"{case}: label values {extra} are not in label table {table.name!r}")
    present = set().union(*values.values()) if values else set()
    missing = [lab for lab in table.labels if lab.index not in present]
    if missing and values:
        problems.append(
            "label table {!r} names {} that no label map contains ({} cases checked)".format(
                table.name, ", ".join(f"{lab.index} ({lab.name})" for lab in missing), len(values)
            )
        )
    n = len(table.labels)
    if table.num_classes > max(32, 2 * (n + 1)):  # the network has one output per value up to the largest
        problems.append(
            f"label table {table.name!r} numbers {n} structures up to {table.num_classes - 1}: the network would need "
            f"{table.num_classes} outputs (logits of that many channels per voxel); renumber the label maps 1..{n} "
            "(nnU-Net requires consecutive labels too)"
        )
    return problems
