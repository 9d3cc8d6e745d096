"""The documented, keyword-only functions users call; the CLI is a thin shell over these.

- ``train(config=, manifest=, out=)``               -> a run directory with ``best.pt``
- ``predict(model=, inputs=, out=)``                -> one label map (+ JSON sidecar) per input
- ``report(labels=, out=, images=, label_table=)``  -> ``volumes.csv``
- ``evaluate(pred=, ref=, out=, label_table=)``     -> ``metrics.csv``
- ``plan(manifest=, out=)``                         -> a training config with the data set's label table
- ``run(pipeline=, input=, out=)``                  -> a resumable batch run directory
- ``listen(ae_title=, port=, pipeline=, out=)``    -> a DICOM receiving node: each received study run through the pipeline
- ``scan_dicom(folder=, out=)``, ``convert_dicom(folder=, out=)`` -> DICOM inventory / NIfTI + sidecars
- ``import_dataset(folder=, out=)``                 -> manifest + label table from an nnU-Net/Decathlon folder
- ``phantoms(out=, n=)``, ``demo(out=)``, ``list_models()``, ``model_info(name)``

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
    labels=None,
):
    """Train a model from a YAML config and a data manifest; returns a ``TrainResult``.

    ``labels`` (a ``LabelTable`` or a table file) replaces the config's label table: the
    ``train_and_evaluate`` pipeline passes the data set's own.

    ``resume`` continues the run in ``out`` (same config) after its last finished
    epoch; ``fold`` validates on the manifest's cases of that fold; ``epochs`` and
    ``max_minutes`` are shortcuts for ``training.epochs`` / ``training.max_minutes`` (with a budget the
    learning rate follows the fraction of it spent and the run uses all of it; epochs are then not used);
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
    from medseg.training.losses import check_loss_name

    check_loss_name(cfg.training.loss, str(config))  # before the run folder is made
    if labels is None:
        table = cfg.label_table(base=Path(config).parent)
    else:
        from medseg.labels import LabelTable

        table = labels if isinstance(labels, LabelTable) else LabelTable.from_yaml(labels)
        cfg.labels = table.to_dict()  # the run's config.yaml and checkpoint name the table trained with
    from medseg.command_log import command_log
    from medseg.io.atomic import ensure_dir

    ensure_dir(Path(out))
    with command_log(Path(out) / "train.log"):  # what the console does not show: per-epoch lines, the budget
        return _train(config=cfg, manifest=manifest, out_dir=out, label_table=table, progress=progress, device=device,
                      resume=resume, fold=fold, nproc=nproc)


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
    rtstruct: bool = False,
    save_probabilities: bool = False,
    modalities: Sequence[str] = (),
    min_slices: int = 1,
    series_description: str | None = None,
    resample_irregular: bool = False,
    refuse_tilt: bool = False,
    sr: bool = True,
    **inference_overrides,
):
    """Segment every input with one loaded model (several checkpoints: an ensemble).

    A DICOM folder holding several image series is one case per series that the selection rule
    (``modalities``, ``min_slices``, ``series_description``: a regular expression) admits.
    ``resample_irregular`` / ``refuse_tilt``: the geometry policy for DICOM series, as for ``convert_dicom``.
    ``sr``: with the SEG of a DICOM case, a TID 1500 measurement report ``<case>.sr.dcm`` (``medseg.io.objects.sr``).

    ``inference_overrides`` change the checkpoint's inference settings, e.g.
    ``sw_batch_size=8, amp="off", tta_flips=[2]``. See ``medseg.inference.batch.predict_many``.
    Outputs are written by ``medseg.inference.outputs.write_case_outputs`` (label map first; a DICOM SEG that cannot
    be made is a finding in the sidecar, not a failure); an output path that is an input raises ``OutputError``.
    """
    from medseg.inference.batch import predict_many

    rule = _selection_rule(modalities, min_slices, series_description)
    return predict_many(model=model, inputs=inputs, out=out, device=device, progress=progress, overwrite=overwrite,
                        expected_labels=expected_labels, dicom_seg=dicom_seg, rtstruct=rtstruct, save_probabilities=save_probabilities,
                        rule=rule, policy=_geometry_policy(resample_irregular, refuse_tilt), sr=sr, **inference_overrides)


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
    map's structure names travel with it (``medseg.reporting.label_names``); ``label_table`` names those of maps
    that carry none.

    ``options``: ``min_size_ml``, ``reference_ranges``, ``resample_order``, ``qc``,
    ``html``, ``window``; see ``medseg.reporting.tables.write_volumes_report``.
    ``statistics_json``: also ``OUT/statistics/<case>.json`` in TotalSegmentator's ``statistics.json``
    format (needs ``images``; ``medseg.reporting.totalseg_stats``).
    ``longitudinal``: also ``OUT/longitudinal.csv`` (``medseg.reporting.longitudinal``): True pairs the studies of
    one patient from the DICOM series the sidecars name; a manifest path (``case_id, subject, date``) pairs them
    by its columns.
    """
    from medseg.reporting.label_names import label_files
    from medseg.reporting.tables import paired_by_case, recorded_images, write_volumes_report

    labels = label_files(labels)
    images = label_files(images, "images", images=True) if images is not None else recorded_images(labels)
    if statistics_json and images is None:
        from medseg.errors import InputError

        raise InputError("--statistics-json needs --images: TotalSegmentator's statistics hold each structure's mean intensity")
    if images is not None:  # labelsTr/case_1 with imagesTr/case_1_0000: globs sort them differently
        images = paired_by_case(labels, images, "images")
    path = write_volumes_report(labels=labels, out=out, images=images, label_table=label_table, case_ids=case_ids, **options)
    if longitudinal:
        from medseg.io.readers import case_id_for
        from medseg.reporting import longitudinal as lon

        ids = list(case_ids) if case_ids else [case_id_for(p) for p in labels]
        points = (lon.time_points_from_dicom(labels, ids) if longitudinal is True
                  else lon.time_points_from_manifest(longitudinal))
        frame = lon.write_longitudinal(out, path, points, plots=options.get("html", True) and options.get("qc", True))
        lon.add_to_html(Path(out) / "report.html", frame, out)
    if statistics_json:
        from medseg.io.readers import case_id_for
        from medseg.reporting.tables import report_label_table
        from medseg.reporting.totalseg_stats import write_cases

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

    ``options``: ``nsd_tolerance_mm``, ``surface``; see ``medseg.reporting.tables.write_metrics_report``.
    """
    from medseg.reporting.label_names import label_files
    from medseg.reporting.tables import write_metrics_report

    return write_metrics_report(pred=label_files(pred, "predictions"), ref=label_files(ref, "references"), out=out,
                                label_table=label_table, case_ids=case_ids, **options)


def dice_summary(metrics_csv: PathLike) -> str:
    """``Dice (mean over N cases): liver 0.961, spleen 0.944 ...`` from a ``metrics.csv``, in the table's order."""
    from medseg.reporting.metrics import dice_summary as _summary

    return _summary(metrics_csv)


def plan(
    *,
    manifest: PathLike,
    out: PathLike,
    base_config: PathLike | None = None,
    labels: PathLike | None = None,
    model: str | None = None,
    memory_gb: float = 4.0,
    min_spacing: float = 1.0,
    overrides: Sequence[str] | None = None,
) -> tuple[Path, dict]:
    """Write a training config derived from the manifest's data; returns ``(config path, fingerprint)``.

    The label table comes from ``labels`` or the data set (``medseg.data.label_sources``);
    ``model`` names a preset under ``configs/models`` (architecture + per-family recipe) or a model that
    ``medseg models`` lists (its family's preset, else the model at its default width).
    """
    from medseg.training.planning import plan as _plan

    return _plan(manifest, out, base_config=base_config, memory_gb=memory_gb, min_spacing=min_spacing,
                 overrides=list(overrides or []), labels=labels, model=model)


def run(
    *,
    pipeline: PathLike,
    input: PathLike,
    out: PathLike,
    overrides: Sequence[str] | None = None,
    resume: bool = False,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    device: str | None = None,
    query: Sequence[str] | None = None,
    accessions: PathLike | None = None,
    cache: PathLike | None = None,
    cache_max_gb: float | None = None,
):
    """Run a pipeline (a YAML path or a packaged pipeline name) over a folder or manifest; returns a ``RunResult``.

    ``input`` may also be a PACS (``dicomweb+http://HOST:PORT/dicom-web`` or ``dimse://AET@HOST:PORT``): one case
    per study found by ``query`` (``["StudyDate=20260101-20260131", "modality=CT"]``) and/or ``accessions`` (a CSV
    with a column AccessionNumber or StudyInstanceUID), retrieved into ``cache`` (at most ``cache_max_gb``).
    A PACS that cannot be reached or refuses medseg raises ``medseg.pacs.PacsError`` (exit code 3 in the CLI).

    Running the same call again resumes: finished cases with unchanged inputs and settings are skipped.
    ``out`` must be new, empty or a run directory (it carries a ``.medseg-run`` marker); a non-empty folder
    without it, a file, or a run directory another run holds (``.medseg-lock``) raise ``OutputError``.
    """
    from medseg.runner import run_pipeline

    return run_pipeline(pipeline=pipeline, input=input, out=out, overrides=list(overrides or []), resume=resume, engine=engine,
                        workers=workers, address=address, progress=progress, device=device, query=list(query or []),
                        accessions=accessions, cache=cache, cache_max_gb=cache_max_gb)


def listen(
    *,
    ae_title: str,
    port: int,
    pipeline: PathLike,
    out: PathLike,
    host: str = "127.0.0.1",
    allow_ae: Sequence[str] = (),
    quiet_seconds: float = 30.0,
    spool_max_gb: float = 20.0,
    overrides: Sequence[str] | None = None,
    tls_cert: PathLike | None = None,
    tls_key: PathLike | None = None,
    tls_ca: PathLike | None = None,
    device: str | None = None,
    keep_spool: bool = False,
    stop=None,
    console: bool = True,
) -> dict:
    """Run a C-STORE SCP (``medseg listen``) until SIGTERM/SIGINT or ``stop`` (a ``threading.Event``) is set.

    Every received instance is on disk in ``out/spool`` before it is acknowledged; a study with no new
    instance for ``quiet_seconds`` runs through ``pipeline`` (model loaded once) into ``out/run``.
    Restarting on the same ``out`` processes what was received and not yet done, and nothing twice.
    ``allow_ae``: the calling AE titles accepted (empty: any). Returns the studies' counts by status.
    """
    from medseg.service.listen import ListenConfig, run_listener

    cfg = ListenConfig(ae_title=ae_title, port=int(port), pipeline=str(pipeline), out=str(out), host=host,
                       allow_ae=tuple(allow_ae or ()), quiet_seconds=float(quiet_seconds), spool_max_gb=float(spool_max_gb),
                       overrides=tuple(overrides or ()), tls_cert=str(tls_cert) if tls_cert else None,
                       tls_key=str(tls_key) if tls_key else None, tls_ca=str(tls_ca) if tls_ca else None,
                       device=device, keep_spool=keep_spool)
    return run_listener(cfg, stop=stop, console=console)


def _selection_rule(modalities: Sequence[str], min_slices: int, description: str | None):
    """Which image series of a DICOM folder count (predict and convert): None when nothing narrows them."""
    from medseg.io.dicom.select import SelectionRule

    if not (modalities or int(min_slices) > 1 or description):
        return None
    return SelectionRule(modalities=tuple(modalities), min_slices=int(min_slices), description=description)


def _geometry_policy(resample_irregular: bool, refuse_tilt: bool):
    from medseg.io.dicom.geometry import GeometryPolicy

    return GeometryPolicy(irregular="resample" if resample_irregular else "refuse", tilt="refuse" if refuse_tilt else "resample")


def scan_dicom(
    *,
    folder: PathLike,
    out: PathLike,
    resample_irregular: bool = False,
    refuse_tilt: bool = False,
    with_identifiers: bool = False,
    salt: str | None = None,
    progress: bool = True,
):
    """Header-only inventory of a DICOM folder: ``out`` (one row per series) and ``<out>_files.csv``.

    Returns ``(inventory, series_csv, files_csv)``. Identifiers are written only with ``with_identifiers``.
    """
    from medseg.io.dicom.convert import write_inventory

    return write_inventory(folder, out, policy=_geometry_policy(resample_irregular, refuse_tilt), progress=progress,
                           with_identifiers=with_identifiers, salt=salt)


def convert_dicom(
    *,
    folder: PathLike,
    out: PathLike,
    modalities: Sequence[str] = (),
    min_slices: int = 1,
    description: str | None = None,
    resample_irregular: bool = False,
    refuse_tilt: bool = False,
    with_identifiers: bool = False,
    salt: str | None = None,
    progress: bool = True,
    label_table=None,
):
    """Write each image series of a DICOM folder as NIfTI + JSON sidecar (findings, actions); returns the conversion result.

    Every RTSTRUCT and DICOM SEG that references a converted series is written beside it as
    ``<series>.<object>.label.nii.gz`` with its label table and findings (listed in ``label_conversion.csv``);
    ``label_table`` (a table file or name) numbers their structures as it does (default: alphabetical).
    """
    from medseg.io.dicom.convert import convert_folder

    rule = _selection_rule(modalities, min_slices, description)
    result = convert_folder(folder, out, policy=_geometry_policy(resample_irregular, refuse_tilt), rule=rule, progress=progress,
                            with_identifiers=with_identifiers, salt=salt)
    from medseg.reporting.label_names import explicit_table

    result.label_maps = _convert_label_objects(folder, out, result.inventory, salt, explicit_table(label_table))
    return result


def _convert_label_objects(folder, out, inventory, salt, numbering) -> list[dict]:
    """RTSTRUCT/SEG objects of the folder as label maps beside their series' image (``label_conversion.csv``);
    their rows of ``conversion.csv`` then say what they became instead of "skipped"."""
    import pandas as pd

    from medseg.data.dicom_manifest import convert_label_objects
    from medseg.io.atomic import write_csv

    rows = convert_label_objects(folder, out, inventory=inventory, salt=salt, numbering=numbering)
    if rows:
        write_csv(Path(out) / "label_conversion.csv", pd.DataFrame(rows))
        conversion = Path(out) / "conversion.csv"
        done = {r["object_series_key"]: r for r in rows if r.get("status") == "converted" and r.get("object_series_key")}
        if done and conversion.is_file():
            df = pd.read_csv(conversion, dtype=str, keep_default_na=False)
            for i, key in df["series_key"].items():
                if key in done and df.at[i, "status"] == "skipped":
                    df.at[i, "status"] = "converted_to_label_map"
                    df.at[i, "output"] = done[key]["output"]
                    df.at[i, "reason"] = "label object written as a label map (label_conversion.csv)"
            write_csv(conversion, df)
    return rows


def import_dataset(*, folder: PathLike, out: PathLike, folds: int = 0, seed: int = 0) -> tuple[Path, Path]:
    """Manifest + label table (``<out stem>_labels.yaml``) from an nnU-Net raw or Decathlon folder; returns both paths."""
    from medseg.data.dataset_import import manifest_from_folder

    return manifest_from_folder(folder, out, folds=folds, seed=seed)


def import_dicom(*, export: PathLike, out: PathLike, split: str = "train"):
    """Manifest of every image series paired with the RTSTRUCT/SEG that references it, from a DICOM export.

    Writes ``out``, ``<stem>_labels.yaml``, ``<stem>_unpaired.csv`` and the NIfTI pairs under ``<stem>_cache/``;
    returns a ``medseg.data.dicom_manifest.DicomManifest`` (paths, case ids, what was not paired and why).
    """
    from medseg.data.dicom_manifest import manifest_from_dicom

    return manifest_from_dicom(export, out, split=split)


def phantoms(*, out: PathLike, n: int = 8, seed: int = 0, split: str = "train", dicom: bool = False) -> Path:
    """Synthetic CT phantoms with exact truth, their manifest and label table; returns the manifest path."""
    from medseg.data.phantoms import write_cohort

    return write_cohort(out, n, seed=seed, split=split, dicom=dicom)


def demo(*, out: PathLike, n_train: int = 16, n_test: int = 4, epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train on phantoms, segment DICOM phantoms, report; returns the demo's summary (``mean_dice``...)."""
    from medseg.demo import run_demo

    return run_demo(out=out, n_train=n_train, n_test=n_test, epochs=epochs, seed=seed, progress=progress)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (builds nothing)."""
    from medseg.models import list_models as _list

    return _list(pattern)


def model_info(name: str, *, params: bool = True) -> dict:
    """A model's description, dims, input divisor, options and (``params``) parameter counts."""
    from medseg.models import model_info as _info

    return _info(name, params=params)


def failed_plugins() -> dict[str, str]:
    """Model plugins that failed to load: name -> why."""
    from medseg.models import MODELS

    return dict(MODELS.failed)


def import_model(path: PathLike, *, out: PathLike, folds: Sequence | None = None, checkpoint: str = "final",
                 force: bool = False) -> Path:
    """Write a model folder of another tool (nnU-Net v2 trained-model folder, TotalSegmentator's results) as one
    portable file that ``medseg predict --model FILE`` runs with the folder's labels; loads with
    ``torch.load(weights_only=True)``. An existing ``out`` is refused unless ``force``. See
    ``medseg.adapters.portable``."""
    from medseg.adapters.portable import import_model as _import

    return _import(path, out, folds=folds, checkpoint=checkpoint, force=force)
