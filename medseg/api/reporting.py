"""``report``, ``evaluate``, ``dice_summary``: tables from label maps (``medseg report``/``evaluate``); see
``medseg.api``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from medseg.data.label_names import label_files
from medseg.errors import InputError
from medseg.inference.outputs import expected_for_model
from medseg.io.readers import case_id_for
from medseg.reporting import longitudinal as lon
from medseg.reporting import metrics
from medseg.reporting.report import (
    paired_by_case,
    recorded_images,
    report_label_table,
    write_metrics_report,
    write_volumes_report,
)
from medseg.reporting.totalseg_stats import write_cases

PathLike = str | os.PathLike


def report(
    *,
    labels: Sequence[PathLike],
    out: PathLike,
    images: Sequence[PathLike] | None = None,
    label_table=None,
    case_ids: Sequence[str] | None = None,
    statistics_json: bool = False,
    longitudinal: bool | PathLike = False,
    **options,
) -> Path:
    """Write ``OUT/volumes.csv`` (+ cohort tables, QC montages, report.html); returns the CSV path.

    ``labels`` and ``images`` may name folders (their label maps / images; probability maps left out). Without
    ``images``, the images the predict sidecars record are used when every one of them is still there. Each label
    map's structure names travel with it (``medseg.data.label_names``); ``label_table`` names those of maps
    that carry none.

    ``options``: ``min_size_ml``, ``reference_ranges``, ``resample_order``, ``qc``,
    ``html``, ``window``; see ``medseg.reporting.report.write_volumes_report``.
    ``statistics_json``: also ``OUT/statistics/<case>.json`` in TotalSegmentator's ``statistics.json``
    format (needs ``images``; ``medseg.reporting.totalseg_stats``).
    ``longitudinal``: also ``OUT/longitudinal.csv`` (``medseg.reporting.longitudinal``): True pairs the studies of
    one patient from the DICOM series the sidecars name; a manifest path (``case_id, subject, date``) pairs them
    by its columns.
    """
    labels = label_files(labels)
    images = label_files(images, "images", images=True) if images is not None else recorded_images(labels)
    if statistics_json and images is None:
        raise InputError(
            "--statistics-json needs --images: TotalSegmentator's statistics hold each structure's mean intensity"
        )
    if images is not None:  # labelsTr/case_1 with imagesTr/case_1_0000: globs sort them differently
        images = paired_by_case(labels, images, "images")
    path = write_volumes_report(
        labels=labels,
        out=out,
        images=images,
        label_table=label_table,
        case_ids=case_ids,
        expected_of=expected_for_model,
        **options,
    )
    if longitudinal:
        ids = list(case_ids) if case_ids else [case_id_for(p) for p in labels]
        points = (
            lon.time_points_from_dicom(labels, ids)
            if longitudinal is True
            else lon.time_points_from_manifest(longitudinal)
        )
        frame = lon.write_longitudinal(out, path, points, plots=options.get("html", True) and options.get("qc", True))
        lon.add_to_html(Path(out) / "report.html", frame, out)
    if statistics_json:
        ids = list(case_ids) if case_ids else [case_id_for(p) for p in labels]
        write_cases(labels, images, out, report_label_table(label_table, labels), ids)
    return path


def evaluate(
    *,
    pred: Sequence[PathLike],
    ref: Sequence[PathLike],
    out: PathLike,
    label_table=None,
    case_ids: Sequence[str] | None = None,
    **options,
) -> Path:
    """Write ``metrics.csv`` (Dice, IoU, HD95, ASSD, NSD, volume errors); ``out`` is a file or a folder.

    ``pred`` and ``ref`` may name folders. Structures are compared by name, each file's names read from what
    travels with it (predict sidecar, ``.labels.yaml``, dataset.json, a manifest's table); ``label_table``
    names those of files that carry none. No name in common is refused in one line.

    ``options``: ``nsd_tolerance_mm``, ``surface``; see ``medseg.reporting.report.write_metrics_report``.
    """
    return write_metrics_report(
        pred=label_files(pred, "predictions"),
        ref=label_files(ref, "references"),
        out=out,
        label_table=label_table,
        case_ids=case_ids,
        **options,
    )


def dice_summary(metrics_csv: PathLike) -> str:
    """``Dice (mean over N cases): liver 0.961, spleen 0.944 ...`` from a ``metrics.csv``, in the table's order."""
    return metrics.dice_summary(metrics_csv)
