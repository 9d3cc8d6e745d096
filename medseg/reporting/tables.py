"""Report tables from label maps on disk: ``volumes.csv`` and ``metrics.csv``.

Called by ``medseg.api.report`` and ``medseg.api.evaluate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from medseg.errors import InputError
from medseg.labels import LabelTable

PathLike = str | os.PathLike


def _label_table(label_table: LabelTable | PathLike | None, fallback_sidecar: Path | None = None) -> LabelTable:
    import json

    from medseg.config import resolve_label_table_path

    if isinstance(label_table, LabelTable):
        return label_table
    if label_table is not None:
        return LabelTable.from_yaml(resolve_label_table_path(str(label_table)))
    if fallback_sidecar is not None and fallback_sidecar.is_file():
        return LabelTable.from_dict(json.loads(fallback_sidecar.read_text())["labels"], source=str(fallback_sidecar))
    raise InputError("no label table: pass --label-table (a YAML file or a name in configs/labels)")


def _sidecar_of(path: PathLike) -> Path:
    from medseg.io.readers import case_id_for

    return Path(path).parent / f"{case_id_for(path)}.json"


def write_volumes_report(
    *,
    labels: Sequence[PathLike],
    out: PathLike,
    images: Sequence[PathLike] | None = None,
    label_table: LabelTable | PathLike | None = None,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Write ``OUT/volumes.csv``: one row per case x structure (see ``medseg.reporting.volumes``).

    Without ``label_table`` the table is taken from the first label map's JSON
    sidecar (as ``predict`` writes it). Provenance columns (model checksum,
    medseg version) come from the sidecars when present.
    """
    import json

    import medseg
    from medseg.io.atomic import write_csv
    from medseg.io.geometry import align_to
    from medseg.io.readers import case_id_for, read_volume
    from medseg.io.volume import same_grid
    from medseg.reporting.volumes import structure_rows, volumes_frame

    if not labels:
        raise InputError("no label maps given")
    if images is not None and len(images) != len(labels):
        raise InputError(f"{len(labels)} label maps but {len(images)} images; give one image per label map, in the same order")
    table = _label_table(label_table, _sidecar_of(labels[0]))
    ids = list(case_ids) if case_ids else [case_id_for(p) for p in labels]
    rows = []
    for i, (cid, lab_path) in enumerate(zip(ids, labels)):
        lab = read_volume(lab_path)
        img = read_volume(images[i]) if images is not None else None
        if img is not None and not same_grid(lab, img):
            img = align_to(img, lab)  # same points in another axis order (DICOM vs NIfTI); else GeometryError
        sidecar = _sidecar_of(lab_path)
        model_sha = ""
        if sidecar.is_file():
            try:
                model_sha = json.loads(sidecar.read_text()).get("model", {}).get("model_sha256", "")
            except ValueError:
                pass
        for row in structure_rows(cid, lab, table, img):
            row.update(source_labels=str(lab_path), source_image=str(images[i]) if images is not None else "", model_sha256=model_sha)
            rows.append(row)
    path = Path(out) / "volumes.csv"
    write_csv(path, volumes_frame(rows, {"label_table": table.name, "medseg_version": medseg.__version__}))
    return path


def write_metrics_report(
    *,
    pred: Sequence[PathLike],
    ref: Sequence[PathLike],
    out: PathLike,
    label_table: LabelTable | PathLike | None = None,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Write ``metrics.csv`` (Dice and volume error per case x structure); ``out`` is a file or folder."""
    import pandas as pd

    from medseg.io.atomic import write_csv
    from medseg.io.geometry import align_to
    from medseg.io.readers import case_id_for, read_volume
    from medseg.io.volume import same_grid
    from medseg.reporting.metrics import COLUMNS, metric_rows

    if len(pred) != len(ref) or not pred:
        raise InputError(f"{len(pred)} predictions and {len(ref)} references; give them in pairs, in the same order")
    table = _label_table(label_table, _sidecar_of(pred[0]))
    ids = list(case_ids) if case_ids else [case_id_for(p) for p in pred]
    rows = []
    for cid, p, r in zip(ids, pred, ref):
        pv, rv = read_volume(p), read_volume(r)
        if not same_grid(rv, pv):
            rv = align_to(rv, pv)
        rows += metric_rows(cid, pv, rv, table)
    target = Path(out)
    if target.suffix.lower() != ".csv":
        target = target / "metrics.csv"
    write_csv(target, pd.DataFrame(rows, columns=COLUMNS))
    return target
