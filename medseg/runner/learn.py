"""Run-level stages of ``train_and_evaluate``: plan (dataset fingerprint) and train (once per run).

Each writes a state record (``state/_plan.json``, ``state/_train.json``) with
the hash of what it depends on (manifest bytes, settings); a rerun skips a
stage whose record is ``done`` with the same hash and whose outputs exist. A
training killed midway starts again from the beginning on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from medseg.errors import ConfigError, InputError
from medseg.runner.rundir import RUN_LOG, now

log = logging.getLogger(RUN_LOG)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _current(rd, name: str, sha: str) -> dict | None:
    rec = rd.read_state(name)
    if rec and rec.get("status") == "done" and rec.get("config_sha256") == sha and all(
            (rd.root / p).is_file() for p in (rec.get("outputs") or {}).values()):
        return rec
    return None


def plan(rd, pipe, manifest: Path) -> dict:
    """Median spacing and shape of the training images (headers only) -> ``plan.json``."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medseg.io.atomic import write_json
    from medseg.manifest import manifest_sha256

    sha = _sha({"plan": dataclasses.asdict(pipe.stages["plan"]), "manifest": manifest_sha256(manifest)})
    rec = _current(rd, "_plan", sha)
    if rec:
        return json.loads((rd.root / "plan.json").read_text())
    t0 = time.monotonic()
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    train = df[df["split"].isin(["train", "val"])] if "split" in df.columns else df
    spacings, shapes = [], []
    for rel in train["image"]:
        p = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        try:
            hdr = nib.load(str(p)).header
        except Exception:
            raise InputError("plan: cannot read the image header (plan reads NIfTI training images)", path=p) from None
        spacings.append([float(z) for z in hdr.get_zooms()[:3]])
        shapes.append([int(s) for s in hdr.get_data_shape()[:3]])
    if not spacings:
        raise InputError("plan: no training rows (split train/val) in the manifest", path=manifest)
    result = {"n_training_images": len(spacings), "splits": df["split"].value_counts().to_dict() if "split" in df else {},
              "median_spacing_mm": np.median(spacings, axis=0).round(3).tolist(),
              "median_shape": np.median(shapes, axis=0).astype(int).tolist(), "spacing_choice": pipe.stages["plan"].spacing}
    write_json(rd.root / "plan.json", result)
    rd.write_state("_plan", {"status": "done", "config_sha256": sha, "seconds": round(time.monotonic() - t0, 3),
                             "finished": now(), "outputs": {"plan": "plan.json"}})
    log.info("plan: %s", result)
    return result


def _flatten(d: dict, prefix: str = "") -> list[str]:
    import yaml

    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def train(rd, pipe, manifest: Path, plan_result: dict | None, *, progress: bool, device) -> Path:
    """Train once per run into ``RUN_DIR/train/``; returns the best checkpoint."""
    from medseg import api
    from medseg.manifest import manifest_sha256

    st = pipe.stages["train"]
    overrides = _flatten(st.overrides)
    if plan_result and plan_result.get("spacing_choice") == "median":
        overrides.insert(0, f"preprocessing.spacing={plan_result['median_spacing_mm']}")
    sha = _sha({"config": Path(st.config).read_text(), "overrides": overrides, "manifest": manifest_sha256(manifest)})
    rec = _current(rd, "_train", sha)
    if rec:
        log.info("train: already done (%s)", rec["outputs"]["checkpoint"])
        return rd.root / rec["outputs"]["checkpoint"]
    t0 = time.monotonic()
    rd.write_state("_train", {"status": "running", "config_sha256": sha, "started": now()})
    log.info("train: %s with %s", st.config, overrides)
    train_dir = rd.root / "train"
    resume = (train_dir / "state.pt").exists()
    try:  # a train stage killed midway continues after its last finished epoch
        result = api.train(config=st.config, manifest=manifest, out=train_dir, overrides=overrides,
                           progress=progress, device=device, resume=resume)
    except ConfigError as exc:
        if not (resume and "another config" in str(exc)):
            raise
        import shutil

        log.info("train: settings changed since the interrupted training; starting it again")
        shutil.rmtree(train_dir)
        result = api.train(config=st.config, manifest=manifest, out=train_dir, overrides=overrides,
                           progress=progress, device=device)
    ckpt = Path(result.best_checkpoint)
    rd.write_state("_train", {"status": "done", "config_sha256": sha, "seconds": round(time.monotonic() - t0, 3),
                              "finished": now(), "best_epoch": result.best_epoch,
                              "best_mean_dice": result.best_mean_dice, "outputs": {"checkpoint": rd.rel(ckpt)}})
    return ckpt
