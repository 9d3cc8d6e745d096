"""The documented, keyword-only functions users call; the CLI is a thin shell over these.

- ``train(config=, manifest=, out=)``               -> a run directory with ``best.pt``
- ``predict(model=, inputs=, out=)``                -> one label map (+ JSON sidecar) per input
- ``report(labels=, out=, images=, label_table=)``  -> ``volumes.csv``
- ``evaluate(pred=, ref=, out=, label_table=)``     -> ``metrics.csv``

Errors in the user's input raise ``medseg.MedsegError`` subclasses with a
one-line message naming the file. Each function delegates to the stage's own
module (``training.loop``, ``inference.batch``, ``reporting.tables``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

PathLike = str | os.PathLike


def train(
    *,
    config: PathLike,
    manifest: PathLike,
    out: PathLike,
    overrides: Sequence[str] | None = None,
    progress: bool = True,
    device=None,
    resume: bool = False,
    fold: int | None = None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    nproc: int = 1,
):
    """Train a model from a YAML config and a data manifest; returns a ``TrainResult``.

    ``resume`` continues the run in ``out`` (same config) after its last finished
    epoch; ``fold`` validates on the manifest's cases of that fold; ``epochs`` and
    ``max_minutes`` are shortcuts for ``training.epochs`` / ``training.max_minutes``;
    ``nproc > 1`` trains with that many DistributedDataParallel processes.
    """
    from medseg.config import load_config
    from medseg.training.loop import train as _train

    overrides = list(overrides or [])
    if epochs is not None:
        overrides.append(f"training.epochs={int(epochs)}")
    if max_minutes is not None:
        overrides.append(f"training.max_minutes={float(max_minutes)}")
    cfg = load_config(config, overrides=overrides)
    table = cfg.label_table(base=Path(config).parent)
    return _train(config=cfg, manifest=manifest, out_dir=out, label_table=table, progress=progress, device=device, resume=resume, fold=fold,
                  nproc=nproc)


def predict(
    *,
    model: PathLike | Sequence[PathLike],
    inputs: Sequence[PathLike],
    out: PathLike,
    device=None,
    progress: bool = True,
    overwrite: bool = False,
    expected_labels=None,
    dicom_seg: bool = True,
    save_probabilities: bool = False,
    **inference_overrides,
):
    """Segment every input with one loaded model (several checkpoints: an ensemble).

    ``inference_overrides`` change the checkpoint's inference settings, e.g.
    ``sw_batch_size=8, amp="off", tta_flips=[2]``. See ``medseg.inference.batch.predict_many``.
    """
    from medseg.inference.batch import predict_many

    return predict_many(model=model, inputs=inputs, out=out, device=device, progress=progress, overwrite=overwrite,
                        expected_labels=expected_labels, dicom_seg=dicom_seg, save_probabilities=save_probabilities,
                        **inference_overrides)


def report(
    *,
    labels: Sequence[PathLike],
    out: PathLike,
    images: Sequence[PathLike] | None = None,
    label_table=None,
    case_ids: Sequence[str] | None = None,
    **options,
) -> Path:
    """Write ``OUT/volumes.csv`` (+ cohort tables, QC montages, report.html); returns the CSV path.

    ``options``: ``min_size_ml``, ``reference_ranges``, ``resample_order``, ``qc``,
    ``html``, ``window``; see ``medseg.reporting.tables.write_volumes_report``.
    """
    from medseg.reporting.tables import write_volumes_report

    return write_volumes_report(labels=labels, out=out, images=images, label_table=label_table, case_ids=case_ids, **options)


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

    ``options``: ``nsd_tolerance_mm``, ``surface``; see ``medseg.reporting.tables.write_metrics_report``.
    """
    from medseg.reporting.tables import write_metrics_report

    return write_metrics_report(pred=pred, ref=ref, out=out, label_table=label_table, case_ids=case_ids, **options)
