"""``medseg demo``: the whole job on synthetic CT phantoms, end to end.

1. generate a training cohort (NIfTI) and held-out test cases (DICOM series),
2. train a small 3D U-Net (``configs/training/phantom_demo.yaml``),
3. segment the DICOM folders with the trained checkpoint,
4. write ``report/volumes.csv`` and ``report/metrics.csv`` (Dice and volume error
   against the phantoms' exact truth) and print the Dice table.

Run again into the same ``--out`` it runs as the first time: a finished demo with the same settings is
reused (its phantoms and model; the segmentation and report are made again), medseg's own demo output
with other settings or from an interrupted run is made anew, and a folder holding anything else is
refused before any work.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from medseg.config import CONFIG_ROOT
from medseg.errors import OutputError

log = logging.getLogger(__name__)
DEMO_CONFIG = CONFIG_ROOT / "training" / "phantom_demo.yaml"
#: Written when a demo starts (the folder is medseg's demo output) and, with the result, when it ends.
MARKER, DONE = ".medseg-demo", "demo.json"
#: What a demo writes under its --out; all of it is made again when the settings change.
PARTS = ("data", "model", "predictions", "report")


def _prepare(out: Path, settings: dict) -> dict | None:
    """The finished demo in ``out`` to reuse (same settings), or None after clearing medseg's own demo output.

    Refuses, before any work, a folder that holds files medseg demo did not write.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    ours = out.is_dir() and ((out / MARKER).is_file() or {c.name for c in out.iterdir()} <= {*PARTS, DONE})
    if not ours:  # (a demo folder of an earlier medseg has the parts and no marker)
        raise OutputError("holds files that medseg demo did not write; choose another folder (medseg demo --out NEW)",
                          path=out)
    try:
        done = json.loads((out / DONE).read_text()) if (out / DONE).is_file() else None
    except (OSError, ValueError):
        done = None
    if done and done.get("settings") == settings and (out / str(done.get("checkpoint", ""))).is_file():
        return done
    for part in PARTS:  # medseg's own demo output, of other settings or interrupted: made anew
        if (out / part).is_dir():
            shutil.rmtree(out / part)
    (out / DONE).unlink(missing_ok=True)
    return None


def run_demo(*, out: str | Path, n_train: int = 16, n_test: int = 4, epochs: int | None = None, seed: int = 0, progress: bool = True, config: str | Path | None = None) -> dict:  # noqa: E501
    import pandas as pd

    from medseg import api
    from medseg.data.phantoms import write_cohort

    out = Path(out)
    t0 = time.monotonic()
    timings = {}

    def say(msg: str) -> None:
        print(f"[demo {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    settings = {"n_train": n_train, "n_test": n_test, "epochs": epochs, "seed": seed, "config": str(config or DEMO_CONFIG)}
    done = _prepare(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by medseg demo: this folder is its output, made anew when the settings change\n")
    train_manifest, test_manifest = out / "data" / "train" / "manifest.csv", out / "data" / "test" / "manifest.csv"
    if done:
        say(f"reusing the finished demo in {out} (same settings): its phantoms and model {done['checkpoint']}")
        checkpoint = out / done["checkpoint"]
    else:
        say(f"generating {n_train} training phantoms and {n_test} held-out DICOM phantoms in {out / 'data'}")
        train_manifest = write_cohort(out / "data" / "train", n_train, seed=seed + 1000, split="train")
        test_manifest = write_cohort(out / "data" / "test", n_test, seed=seed + 5000, split="test", dicom=True, prefix="test")
        timings["data_s"] = time.monotonic() - t0

        overrides = [f"training.epochs={epochs}"] if epochs else []
        say("training (progress bar below)")
        t1 = time.monotonic()
        result = api.train(config=config or DEMO_CONFIG, manifest=train_manifest, out=out / "model", overrides=overrides,
                           progress=progress)
        timings["train_s"] = time.monotonic() - t1
        checkpoint = result.best_checkpoint
        say(f"best validation mean Dice {result.best_mean_dice:.3f} at epoch {result.best_epoch}; checkpoint {checkpoint}")

    test = pd.read_csv(test_manifest)
    dicom_dirs = [test_manifest.parent / d for d in test["dicom"]]
    truth = [test_manifest.parent / p for p in test["label"]]
    say(f"segmenting {len(dicom_dirs)} DICOM series")
    t2 = time.monotonic()
    pred = api.predict(model=checkpoint, inputs=dicom_dirs, out=out / "predictions", progress=progress)
    timings["predict_s"] = time.monotonic() - t2
    if pred.failures:
        from medseg.errors import MedsegError

        raise MedsegError(f"demo predictions failed: {pred.failures}", path=out / "predictions")
    preds = [pred.outputs.get(d.name, out / "predictions" / f"{d.name}.nii.gz") for d in dicom_dirs]  # made now or before

    report_dir = out / "report"
    volumes = api.report(labels=preds, images=dicom_dirs, out=report_dir)
    metrics_path = api.evaluate(pred=preds, ref=truth, out=report_dir / "metrics.csv", case_ids=[d.name for d in dicom_dirs])
    metrics = pd.read_csv(metrics_path)
    timings["total_s"] = time.monotonic() - t0

    table = metrics.pivot(index="case_id", columns="structure", values="dice")
    table = table[[c for c in ["liver", "spleen", "kidney_right", "kidney_left"] if c in table.columns]]
    table.loc["mean"] = table.mean()
    print("\nDice on held-out DICOM phantoms (truth known exactly):")
    print(table.round(3).to_string())
    mean_dice = float(metrics["dice"].mean())
    vol_err = metrics["volume_error_pct"].abs().mean()
    print(f"\nmean Dice {mean_dice:.3f}; mean |volume error| {vol_err:.1f}%")
    print(f"volumes:  {volumes}\nmetrics:  {metrics_path}\nmodel:    {checkpoint}")
    print("time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timings.items()))
    (out / DONE).write_text(json.dumps({"settings": settings, "checkpoint": str(Path(checkpoint).relative_to(out)), "mean_dice": mean_dice}, indent=1))
    return {"mean_dice": mean_dice, "volumes_csv": volumes, "metrics_csv": metrics_path, "checkpoint": checkpoint, **timings}
