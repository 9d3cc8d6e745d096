"""The documented, keyword-only functions users call; the CLI is a thin shell over these.

- ``train(config=, manifest=, out=)``               -> a run directory with ``best.pt``
- ``predict(model=, inputs=, out=)``                -> one label map (+ JSON sidecar) per input
- ``report(labels=, out=, images=, label_table=)``  -> ``volumes.csv``
- ``evaluate(pred=, ref=, out=, label_table=)``     -> ``metrics.csv``
- ``plan(manifest=, out=)``                         -> a training config with the data set's label table
- ``run(pipeline=, input=, out=)``                  -> a resumable batch run directory
- ``listen(ae_title=, port=, pipeline=, out=)``    -> a DICOM receiving node: each received study run through the
  pipeline
- ``scan_dicom(folder=, out=)``, ``convert_dicom(folder=, out=)`` -> DICOM inventory / NIfTI + sidecars
- ``import_dataset(folder=, out=)``                 -> manifest + label table from an nnU-Net/Decathlon folder
- ``phantoms(out=, n=)``, ``demo(out=)``, ``list_models()``, ``model_info(name)``

Errors in the user's input raise ``medseg.MedsegError`` subclasses with a
one-line message naming the file. Each function delegates to the stage's own
module (``training.trainer``, ``inference.batch``, ``reporting.report``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from medseg import models
from medseg.adapters import portable
from medseg.config import CONFIG_ROOT
from medseg.data.dataset_import import manifest_from_folder
from medseg.data.dicom_manifest import convert_label_objects, manifest_from_dicom
from medseg.data.label_names import explicit_table, label_files
from medseg.data.phantoms import write_cohort
from medseg.errors import InputError, MedsegError, OutputError
from medseg.inference.batch import PredictOptions, PredictResult, geometry_policy, predict_many, selection_rule
from medseg.inference.outputs import expected_for_model
from medseg.io.atomic import write_csv
from medseg.io.dicom.convert import convert_folder, write_inventory
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
from medseg.runner import run_pipeline
from medseg.service.listen import ListenConfig, run_listener
from medseg.training import planning, trainer

PathLike = str | os.PathLike


#: ``train(config=, manifest=, out=, ...)``: the training front door itself (``trainer.train_from_files``).
train = trainer.train_from_files


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
    options: PredictOptions | None = None,
    **inference_overrides,
) -> PredictResult:
    """Segment every input with one loaded model (several checkpoints: an ensemble); returns a ``PredictResult``.

    A DICOM folder holding several image series is one case per series that the selection rule
    (``modalities``, ``min_slices``, ``series_description``: a regular expression) admits.
    ``resample_irregular`` / ``refuse_tilt``: the geometry policy for DICOM series, as for ``convert_dicom``.
    ``sr``: with the SEG of a DICOM case, a TID 1500 measurement report ``<case>.sr.dcm`` (``medseg.io.objects.sr``).

    ``inference_overrides`` change the checkpoint's inference settings, e.g.
    ``sw_batch_size=8, amp="off", tta_flips=[2]``. See ``medseg.inference.batch.predict_many``.
    Outputs are written by ``medseg.inference.outputs.write_case_outputs`` (label map first; a DICOM SEG that cannot
    be made is a finding in the sidecar, not a failure); an output path that is an input raises ``OutputError``.

    ``options``: all these settings as one ``PredictOptions`` (as ``medseg predict`` builds them); the keywords after
    ``out`` are then not read, and inference overrides go in ``options.inference``.
    """
    if options is None:
        options = PredictOptions(
            device=device,
            progress=progress,
            overwrite=overwrite,
            expected_labels=expected_labels,
            dicom_seg=dicom_seg,
            rtstruct=rtstruct,
            save_probabilities=save_probabilities,
            sr=sr,
            modalities=tuple(modalities),
            min_slices=min_slices,
            series_description=series_description,
            resample_irregular=resample_irregular,
            refuse_tilt=refuse_tilt,
            inference=dict(inference_overrides),
        )
    elif inference_overrides:
        raise TypeError(
            "predict() takes inference overrides in options.inference when options is given: "
            f"{sorted(inference_overrides)}"
        )
    return predict_many(model=model, inputs=inputs, out=out, options=options)


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
    return planning.plan(
        manifest,
        out,
        base_config=base_config,
        memory_gb=memory_gb,
        min_spacing=min_spacing,
        overrides=list(overrides or []),
        labels=labels,
        model=model,
    )


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
    return run_pipeline(
        pipeline=pipeline,
        input=input,
        out=out,
        overrides=list(overrides or []),
        resume=resume,
        engine=engine,
        workers=workers,
        address=address,
        progress=progress,
        device=device,
        query=list(query or []),
        accessions=accessions,
        cache=cache,
        cache_max_gb=cache_max_gb,
    )


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
    cfg = ListenConfig(
        ae_title=ae_title,
        port=int(port),
        pipeline=str(pipeline),
        out=str(out),
        host=host,
        allow_ae=tuple(allow_ae or ()),
        quiet_seconds=float(quiet_seconds),
        spool_max_gb=float(spool_max_gb),
        overrides=tuple(overrides or ()),
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
        tls_ca=str(tls_ca) if tls_ca else None,
        device=device,
        keep_spool=keep_spool,
    )
    return run_listener(cfg, stop=stop, console=console)


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
    return write_inventory(
        folder,
        out,
        policy=geometry_policy(resample_irregular, refuse_tilt),
        progress=progress,
        with_identifiers=with_identifiers,
        salt=salt,
    )


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
    """Write each image series of a DICOM folder as NIfTI + JSON sidecar (findings, actions); returns the conversion
    result.

    Every RTSTRUCT and DICOM SEG that references a converted series is written beside it as
    ``<series>.<object>.label.nii.gz`` with its label table and findings (listed in ``label_conversion.csv``);
    ``label_table`` (a table file or name) numbers their structures as it does (default: alphabetical).
    """
    rule = selection_rule(modalities, min_slices, description)
    result = convert_folder(
        folder,
        out,
        policy=geometry_policy(resample_irregular, refuse_tilt),
        rule=rule,
        progress=progress,
        with_identifiers=with_identifiers,
        salt=salt,
    )
    result.label_maps = _convert_label_objects(folder, out, result.inventory, salt, explicit_table(label_table))
    return result


def _convert_label_objects(folder, out, inventory, salt, numbering) -> list[dict]:
    """RTSTRUCT/SEG objects of the folder as label maps beside their series' image (``label_conversion.csv``);
    their rows of ``conversion.csv`` then say what they became instead of "skipped"."""
    rows = convert_label_objects(folder, out, inventory=inventory, salt=salt, numbering=numbering)
    if rows:
        write_csv(Path(out) / "label_conversion.csv", pd.DataFrame(rows))
        conversion = Path(out) / "conversion.csv"
        done = {
            r["object_series_key"]: r for r in rows if r.get("status") == "converted" and r.get("object_series_key")
        }
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
    """Manifest + label table (``<out stem>_labels.yaml``) from an nnU-Net raw or Decathlon folder; returns both
    paths."""
    return manifest_from_folder(folder, out, folds=folds, seed=seed)


def import_dicom(*, export: PathLike, out: PathLike, split: str = "train"):
    """Manifest of every image series paired with the RTSTRUCT/SEG that references it, from a DICOM export.

    Writes ``out``, ``<stem>_labels.yaml``, ``<stem>_unpaired.csv`` and the NIfTI pairs under ``<stem>_cache/``;
    returns a ``medseg.data.dicom_manifest.DicomManifest`` (paths, case ids, what was not paired and why).
    """
    return manifest_from_dicom(export, out, split=split)


def phantoms(*, out: PathLike, n: int = 8, seed: int = 0, split: str = "train", dicom: bool = False) -> Path:
    """Synthetic CT phantoms with exact truth, their manifest and label table; returns the manifest path."""
    return write_cohort(out, n, seed=seed, split=split, dicom=dicom)


#: ``demo``'s training config; what it writes under its ``out`` (all made again when the settings change); the marker
#: written when a demo starts (the folder is medseg's demo output) and the summary written, with the result, when it
#: ends.
DEMO_CONFIG = CONFIG_ROOT / "training" / "phantom_demo.yaml"
DEMO_PARTS = ("data", "model", "predictions", "report")
DEMO_MARKER, DEMO_DONE = ".medseg-demo", "demo.json"


def demo(
    *,
    out: PathLike,
    n_train: int = 16,
    n_test: int = 4,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    config: PathLike | None = None,
) -> dict:
    """Train on phantoms, segment DICOM phantoms, report; returns the demo's summary (``mean_dice``...).

    The whole job on synthetic CT phantoms, through this module's own functions: a training cohort (NIfTI) and held-out
    test cases (DICOM series) from ``phantoms``, a small 3D U-Net from ``train`` (``configs/training/phantom_demo.yaml``
    or ``config``), ``predict`` on the DICOM folders, ``report`` and ``evaluate`` (Dice and volume error against the
    phantoms' exact truth) into ``out/report``, and the Dice table printed.

    Run again into the same ``out`` it runs as the first time: a finished demo with the same settings is reused (its
    phantoms and model; the segmentation and report are made again), medseg's own demo output with other settings or
    from an interrupted run is made anew, and a folder holding anything else is refused before any work.
    """
    out = Path(out)
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def say(msg: str) -> None:
        print(f"[demo {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    settings = {
        "n_train": n_train,
        "n_test": n_test,
        "epochs": epochs,
        "seed": seed,
        "config": str(config or DEMO_CONFIG),
    }
    done = _prepare_demo(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(
        "written by medseg demo: this folder is its output, made anew when the settings change\n"
    )
    test_manifest = out / "data" / "test" / "manifest.csv"
    if done:
        say(f"reusing the finished demo in {out} (same settings): its phantoms and model {done['checkpoint']}")
        checkpoint = out / done["checkpoint"]
    else:
        checkpoint, test_manifest = _demo_data_and_model(out, settings, progress, say, timings, t0)

    test = pd.read_csv(test_manifest)
    dicom_dirs = [test_manifest.parent / d for d in test["dicom"]]
    truth = [test_manifest.parent / p for p in test["label"]]
    say(f"segmenting {len(dicom_dirs)} DICOM series")
    t2 = time.monotonic()
    pred = predict(model=checkpoint, inputs=dicom_dirs, out=out / "predictions", progress=progress)
    timings["predict_s"] = time.monotonic() - t2
    if pred.failures:
        raise MedsegError(f"demo predictions failed: {pred.failures}", path=out / "predictions")
    preds = [
        pred.outputs.get(d.name, out / "predictions" / f"{d.name}.nii.gz") for d in dicom_dirs
    ]  # made now or before

    report_dir = out / "report"
    volumes = report(labels=preds, images=dicom_dirs, out=report_dir)
    metrics_path = evaluate(
        pred=preds, ref=truth, out=report_dir / "metrics.csv", case_ids=[d.name for d in dicom_dirs]
    )
    mean_dice = _print_demo_result(pd.read_csv(metrics_path), volumes, metrics_path, checkpoint, timings, t0)
    (out / DEMO_DONE).write_text(
        json.dumps(
            {"settings": settings, "checkpoint": str(Path(checkpoint).relative_to(out)), "mean_dice": mean_dice},
            indent=1,
        )
    )
    return {
        "mean_dice": mean_dice,
        "volumes_csv": volumes,
        "metrics_csv": metrics_path,
        "checkpoint": checkpoint,
        **timings,
    }


def _prepare_demo(out: Path, settings: dict) -> dict | None:
    """The finished demo in ``out`` to reuse (same settings), or None after clearing medseg's own demo output.

    Refuses, before any work, a folder that holds files medseg demo did not write.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    ours = out.is_dir() and (
        (out / DEMO_MARKER).is_file() or {c.name for c in out.iterdir()} <= {*DEMO_PARTS, DEMO_DONE}
    )
    if not ours:  # (a demo folder of an earlier medseg has the parts and no marker)
        raise OutputError(
            "holds files that medseg demo did not write; choose another folder (medseg demo --out NEW)", path=out
        )
    try:
        done = json.loads((out / DEMO_DONE).read_text()) if (out / DEMO_DONE).is_file() else None
    except (OSError, ValueError):
        done = None
    if done and done.get("settings") == settings and (out / str(done.get("checkpoint", ""))).is_file():
        return done
    for part in DEMO_PARTS:  # medseg's own demo output, of other settings or interrupted: made anew
        if (out / part).is_dir():
            shutil.rmtree(out / part)
    (out / DEMO_DONE).unlink(missing_ok=True)
    return None


def _demo_data_and_model(out: Path, settings: dict, progress: bool, say, timings: dict, t0: float) -> tuple[Path, Path]:
    """The demo's phantoms and trained model; returns ``(checkpoint, test manifest)``."""
    n_train, n_test, seed, epochs = settings["n_train"], settings["n_test"], settings["seed"], settings["epochs"]
    say(f"generating {n_train} training phantoms and {n_test} held-out DICOM phantoms in {out / 'data'}")
    train_manifest = write_cohort(out / "data" / "train", n_train, seed=seed + 1000, split="train")
    test_manifest = write_cohort(
        out / "data" / "test", n_test, seed=seed + 5000, split="test", dicom=True, prefix="test"
    )
    timings["data_s"] = time.monotonic() - t0

    overrides = [f"training.epochs={epochs}"] if epochs else []
    say("training (progress bar below)")
    t1 = time.monotonic()
    result = train(
        config=settings["config"], manifest=train_manifest, out=out / "model", overrides=overrides, progress=progress
    )
    timings["train_s"] = time.monotonic() - t1
    checkpoint = result.best_checkpoint
    say(f"best validation mean Dice {result.best_mean_dice:.3f} at epoch {result.best_epoch}; checkpoint {checkpoint}")
    return checkpoint, test_manifest


def _print_demo_result(metrics_frame, volumes: Path, metrics_path: Path, checkpoint, timings: dict, t0: float) -> float:
    """The Dice table and the demo's outputs on the console; returns the mean Dice."""
    timings["total_s"] = time.monotonic() - t0
    table = metrics_frame.pivot(index="case_id", columns="structure", values="dice")
    table = table[[c for c in ["liver", "spleen", "kidney_right", "kidney_left"] if c in table.columns]]
    table.loc["mean"] = table.mean()
    print("\nDice on held-out DICOM phantoms (truth known exactly):")
    print(table.round(3).to_string())
    mean_dice = float(metrics_frame["dice"].mean())
    vol_err = metrics_frame["volume_error_pct"].abs().mean()
    print(f"\nmean Dice {mean_dice:.3f}; mean |volume error| {vol_err:.1f}%")
    print(f"volumes:  {volumes}\nmetrics:  {metrics_path}\nmodel:    {checkpoint}")
    print("time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timings.items()))
    return mean_dice


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (builds nothing)."""
    return models.list_models(pattern)


def model_info(name: str, *, params: bool = True) -> dict:
    """A model's description, dims, input divisor, options and (``params``) parameter counts."""
    return models.model_info(name, params=params)


def failed_plugins() -> dict[str, str]:
    """Model plugins that failed to load: name -> why."""
    return dict(models.MODELS.failed)


def import_model(
    path: PathLike, *, out: PathLike, folds: Sequence | None = None, checkpoint: str = "final", force: bool = False
) -> Path:
    """Write a model folder of another tool (nnU-Net v2 trained-model folder, TotalSegmentator's results) as one
    portable file that ``medseg predict --model FILE`` runs with the folder's labels; loads with
    ``torch.load(weights_only=True)``. An existing ``out`` is refused unless ``force``. See
    ``medseg.adapters.portable``."""
    return portable.import_model(path, out, folds=folds, checkpoint=checkpoint, force=force)
