"""``demo``: train on phantoms, segment DICOM phantoms, report, through the API's own functions; see ``medseg.api``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from medseg.api.predicting import predict
from medseg.api.reporting import evaluate, report
from medseg.api.training import train
from medseg.config import CONFIG_ROOT
from medseg.data.phantoms import write_cohort
from medseg.errors import MedsegError, OutputError

PathLike = str | os.PathLike


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
