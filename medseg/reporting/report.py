"""Reports from label maps on disk: the ``report`` folder and ``metrics.csv``.

Called by ``medseg.api.report`` / ``medseg.api.evaluate`` and by the CLI verbs.
Reads files, loops over cases, writes outputs atomically; the measurements
live in ``volumes``, ``metrics``/``surface``, ``cohort``, ``qc`` and ``html``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

import medseg
from medseg.data.label_names import common_structures, explicit_table, one_table, renumbered, tables_for
from medseg.errors import InputError
from medseg.io.atomic import write_csv
from medseg.io.geometry import align_to
from medseg.io.paths import refuse_overwriting_inputs, safe_name
from medseg.io.readers import case_id_for, read_volume
from medseg.io.volume import Volume, same_grid
from medseg.labels import LabelTable
from medseg.reporting import cohort
from medseg.reporting.html import write_html
from medseg.reporting.metrics import COLUMNS, DEFAULT_NSD_TOLERANCE_MM, metric_rows
from medseg.reporting.qc import write_montage
from medseg.reporting.quality import add_cohort_verdicts, assess_from_files
from medseg.reporting.resample import image_on_label_grid
from medseg.reporting.volumes import structure_rows, volumes_frame

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def report_label_table(label_table: LabelTable | PathLike | None, labels: Sequence[PathLike]) -> LabelTable:
    """The label table a report of ``labels`` uses (``medseg.data.label_names.one_table``); the label maps
    must number it alike (TotalSegmentator's statistics read each map's values as they are)."""
    table, maps = one_table(labels, explicit_table(label_table))
    for path, mapping in zip(labels, maps, strict=False):
        if any(k != v for k, v in mapping.items()):
            raise InputError(
                f"numbers its structures otherwise than table {table.name!r}; --statistics-json needs label "
                "maps numbered alike",
                path=path,
            )
    return table


def _sidecar_of(path: PathLike) -> Path:
    return Path(path).parent / f"{case_id_for(path)}.json"


def _provenance(label_path: PathLike) -> dict:
    """Model name and checksum from a ``predict`` sidecar next to the label map (empty when there is none)."""
    sidecar = _sidecar_of(label_path)
    model = {}
    if sidecar.is_file():
        try:
            model = json.loads(sidecar.read_text()).get("model", {}) or {}
        except (ValueError, OSError, AttributeError):
            model = {}
    return {"model": model.get("model_name", ""), "model_sha256": model.get("model_sha256", "")}


def _checked_case_ids(
    labels: Sequence[PathLike], images: Sequence[PathLike] | None, case_ids: Sequence[str] | None
) -> list[str]:
    """The case ids (given, else from the label map names), after checking there are label maps, one image per
    label map when images are given, and no id twice."""
    if not labels:
        raise InputError("no label maps given")
    if images is not None and len(images) != len(labels):
        raise InputError(
            f"{len(labels)} label maps but {len(images)} images; give one image per label map, in the same order"
        )
    ids = list(case_ids) if case_ids else [case_id_for(p) for p in labels]
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise InputError(
            f"case ids {dup} occur more than once (from the label map names); give distinct file names or case_ids"
        )
    return ids


def write_volumes_report(
    *,
    labels: Sequence[PathLike],
    out: PathLike,
    images: Sequence[PathLike] | None = None,
    label_table: LabelTable | PathLike | None = None,
    case_ids: Sequence[str] | None = None,
    min_size_ml: float | None = None,
    reference_ranges: PathLike | dict | None = None,
    resample_order: int = 1,
    qc: bool = True,
    html: bool = True,
    window: tuple[float, float] | None = None,
    expected_of: Callable[[str], dict] | None = None,
) -> Path:
    """Write the report folder and return the path of ``OUT/volumes.csv``.

    - ``volumes.csv``: one row per case x structure (``medseg.reporting.volumes``), with
      provenance (source files, how the image was sampled, model name and checksum from
      a ``predict`` sidecar, label table, medseg version) and outlier flags
      (``medseg.reporting.cohort``).
    - ``volumes_wide.csv`` and ``summary.csv``: cohort tables (``medseg.reporting.cohort``).
    - ``qc/<case>.png``: montages (``qc=True``; ``medseg.reporting.qc``).
    - ``report.html``: the page for the run (``html=True``, needs ``qc``; ``medseg.reporting.html``).

    Without ``label_table`` the table is taken from the first label map's JSON
    sidecar (as ``predict`` writes it). Images on another grid than their label map
    are resampled onto it (``resample_order`` 1: linear, 0: nearest; see
    ``medseg.reporting.resample``). Needs no model and no GPU. ``expected_of``: what the model a sidecar names expects
    of its inputs, for the quality verdicts' input check (``medseg.api.report`` passes
    ``medseg.inference.outputs.expected_for_model``; None: no input check).
    """
    ids = _checked_case_ids(labels, images, case_ids)
    table, value_maps = one_table(labels, explicit_table(label_table))
    out_dir = Path(out)
    targets = [out_dir / n for n in ("volumes.csv", "volumes_wide.csv", "summary.csv", "report.html")]
    refuse_overwriting_inputs(
        targets + ([out_dir / "qc" / f"{_safe_name(c)}.png" for c in ids] if qc else []),
        list(labels) + list(images or []),
    )
    ranges = (
        reference_ranges
        if isinstance(reference_ranges, dict) or reference_ranges is None
        else cohort.read_reference_ranges(reference_ranges)
    )
    rows, montages = [], {}
    for i, (cid, lab_path) in enumerate(zip(ids, labels, strict=False)):
        lab = _on_table(read_volume(lab_path), value_maps[i])
        img_array, sampling = None, ""
        if images is not None:
            img_array, sampling = image_on_label_grid(read_volume(images[i]), lab, order=resample_order)
        case_rows = structure_rows(cid, lab, table, img_array, min_size_ml=min_size_ml)
        assess_from_files(case_rows, lab_path, lab, img_array, expected_of=expected_of)  # qc verdicts (issue 33)
        prov = _provenance(lab_path)
        for row in case_rows:
            row.update(
                source_labels=str(lab_path),
                source_image=str(images[i]) if images is not None else "",
                intensity_sampling=sampling,
                **prov,
            )
        rows += case_rows
        if qc:
            montages[cid] = write_montage(
                out_dir / "qc" / f"{_safe_name(cid)}.png",
                lab.array,
                lab.affine,
                table,
                img_array,
                rows=case_rows,
                title=cid,
                window=window,
            )
        del lab, img_array
    return write_cohort(out_dir, rows, table, ranges=ranges, montages=montages if qc else None, html=html and qc)


def write_cohort(
    out_dir: PathLike,
    rows: list[dict] | pd.DataFrame,
    table: LabelTable,
    *,
    ranges: dict | None = None,
    montages: dict | None = None,
    html: bool = True,
    title: str | None = None,
) -> Path:
    """The one cohort aggregator (``medseg report`` and ``medseg run``): from per-case x structure rows (dicts, or
    a DataFrame of them from ``medseg.reporting.volumes.rows_frame``, which is then extended in place),
    ``volumes.csv`` (with outlier flags), ``volumes_wide.csv``, ``summary.csv`` and, with ``html`` and
    ``montages`` (case id -> QC picture or None), ``report.html``. Returns the path of ``volumes.csv``."""
    out_dir = Path(out_dir)
    df = volumes_frame(rows, {"label_table": table.name, "medseg_version": medseg.__version__})
    df = cohort.add_outlier_flags(df, ranges)
    df = add_cohort_verdicts(df)  # qc, qc_reasons (issue 33)
    path = out_dir / "volumes.csv"
    write_csv(path, df)
    wide = cohort.wide_frame(df, table.names)
    summary = cohort.summary_frame(df, table.names)
    write_csv(out_dir / "volumes_wide.csv", wide)
    write_csv(out_dir / "summary.csv", summary)
    if html and montages is not None:
        notes = [f"Label table {table.name}; medseg {medseg.__version__}."]
        if ranges:
            notes.append(
                f"Outliers against reference ranges for: {', '.join(sorted(ranges))}; robust z-score for the rest."
            )
        write_html(
            out_dir / "report.html",
            df,
            wide,
            summary,
            table.names,
            montages,
            notes=notes,
            **({"title": title} if title else {}),
        )
    return path


def _on_table(lab: Volume, mapping: dict[int, int], keep_unnamed: bool = True) -> Volume:
    """The label map with its values renumbered by name onto the report's table (itself when nothing moves)."""
    array = renumbered(np.asarray(lab.array), mapping, keep_unnamed=keep_unnamed)
    return lab if array is lab.array else Volume(array, lab.affine, lab.source, lab.meta)


def _safe_name(case_id: str) -> str:
    """The QC file name of a case: ``medseg.io.paths.safe_name`` (unique: ``a b`` and ``a_b`` get different files)."""
    return safe_name(case_id)


def recorded_images(labels: Sequence[PathLike]) -> list[Path] | None:
    """The image each label map was predicted from (its predict sidecar's ``source``, channel 0), when every
    label map has one that still exists; else None (the report then has no intensities)."""
    found = []
    for lab in labels:
        try:
            source = str(json.loads(_sidecar_of(lab).read_text()).get("source") or "")
        except (OSError, ValueError, AttributeError):
            return None
        first = Path(source.split(",")[0]) if source else None
        if first is None or not first.exists():
            return None
        found.append(first)
    log.info("images for the report taken from the predict sidecars")
    return found


def paired_by_case(pred: Sequence[PathLike], ref: Sequence[PathLike], what: str = "references") -> list:
    """``ref`` in the order of ``pred``'s cases when the file names name the same cases, else as given.

    Shell globs sort ``case_10_0000`` before ``case_1_0000`` but ``case_1`` before ``case_10``,
    so predictions of nnU-Net-named inputs and their references come in different orders:
    paired by position they would give a plausible, wrong Dice. Names match exactly or after
    nnU-Net's channel suffix (``_0000``); when they do not match one to one, the order given
    pairs them (the documented rule, for files named otherwise). ``medseg evaluate`` pairs its
    references this way, ``medseg report`` its images.
    """
    for key in (case_id_for, lambda f: re.sub(r"_\d{4}$", "", case_id_for(f))):
        p_ids, r_ids = [key(f) for f in pred], [key(f) for f in ref]
        if len(set(p_ids)) == len(p_ids) and sorted(p_ids) == sorted(r_ids):
            by_id = dict(zip(r_ids, ref, strict=False))
            paired = [by_id[i] for i in p_ids]
            if paired != list(ref):
                log.info("%s paired with the label maps by case name, not by the order given", what)
            return paired
    by_series = _paired_by_series(pred, ref)
    if by_series is not None:
        log.info("%s paired with the predictions by the DICOM series they were made on", what)
        return by_series
    return list(ref)


def _paired_by_series(pred: Sequence[PathLike], ref: Sequence[PathLike]) -> list | None:
    """``ref`` paired with ``pred`` by DICOM series, or None: a prediction's sidecar names its series key
    (``se...``) and ``medseg convert`` names a series' image and the label maps of its RTSTRUCT/SEG after it
    (``<study key>_<series key>.<object key>.label.nii.gz``), so the names of the two sides differ but the
    series is the same."""
    paired = []
    for p in pred:
        try:
            key = (json.loads(_sidecar_of(p).read_text()).get("dicom") or {}).get("series_key")
        except (OSError, ValueError, AttributeError):
            return None
        hits = [r for r in ref if key and f"_{key}" in Path(r).name]
        if len(hits) != 1:
            return None
        paired.append(hits[0])
    return paired if len({str(r) for r in paired}) == len(paired) else None


def write_metrics_report(
    *,
    pred: Sequence[PathLike],
    ref: Sequence[PathLike],
    out: PathLike,
    label_table: LabelTable | PathLike | None = None,
    case_ids: Sequence[str] | None = None,
    nsd_tolerance_mm: float | None = None,
    surface: bool = True,
) -> Path:
    """Write ``metrics.csv`` (``medseg.reporting.metrics``: overlap, surface distances, volume
    differences per case x structure); ``out`` is a file or folder. Label maps on grids that
    differ only in axis order are matched losslessly; other grid pairs are refused."""
    if len(pred) != len(ref) or not pred:
        raise InputError(f"{len(pred)} predictions and {len(ref)} references; give them in pairs, in the same order")
    ref = paired_by_case(pred, ref)
    given = explicit_table(label_table)
    pred_tables, ref_tables = tables_for(pred, given, "prediction"), tables_for(ref, given, "reference")
    ids = list(case_ids) if case_ids else [case_id_for(p) for p in pred]
    matched = [
        common_structures(pt, rt, p, r)
        for (pt, _), (rt, _), p, r in zip(pred_tables, ref_tables, pred, ref, strict=False)
    ]
    rows = []
    for cid, p, r, (table, mapping) in zip(ids, pred, ref, matched, strict=False):
        pv, rv = read_volume(p), _on_table(read_volume(r), mapping, keep_unnamed=False)
        if not same_grid(rv, pv):
            rv = align_to(rv, pv)
        rows += metric_rows(
            cid,
            pv,
            rv,
            table,
            surface=surface,
            nsd_tolerance_mm=DEFAULT_NSD_TOLERANCE_MM if nsd_tolerance_mm is None else nsd_tolerance_mm,
        )
    target = Path(out)
    if target.suffix.lower() != ".csv":
        target = target / "metrics.csv"
    refuse_overwriting_inputs([target], list(pred) + list(ref))
    write_csv(target, pd.DataFrame(rows, columns=COLUMNS))
    return target
