"""The run-level stages of a pipeline such as ``train_and_evaluate``: plan (data set fingerprint) and train (once per
run).

Each writes a state record (``state/_plan.json``, ``state/_train.json``) with
the hash of what it depends on (manifest bytes, settings); a rerun skips a
stage whose record is ``done`` with the same hash and whose outputs exist. A
training killed midway resumes on the next run after its last finished epoch
(``RUN_DIR/train/state.pt``); only when its settings changed meanwhile does it
start again from the beginning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import yaml

from medseg.config import load_config
from medseg.data.label_sources import table_for_manifest
from medseg.data.manifest import image_columns, manifest_sha256, read_manifest
from medseg.errors import ConfigError
from medseg.io.atomic import write_json
from medseg.runner.rundir import RUN_LOG, now
from medseg.training.planning import fingerprint
from medseg.training.trainer import train_from_files

log = logging.getLogger(RUN_LOG)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _current(rd, name: str, sha: str) -> dict | None:
    rec = rd.read_state(name)
    if (
        rec
        and rec.get("status") == "done"
        and rec.get("config_sha256") == sha
        and all((rd.root / p).is_file() for p in (rec.get("outputs") or {}).values())
    ):
        return rec
    return None


def plan(rd, pipe, manifest: Path) -> dict:
    """The data set fingerprint of the training cases, by ``medseg plan``'s own planner -> ``fingerprint.json`` +
    ``plan.json``."""
    sha = _sha({"plan": dataclasses.asdict(pipe.stages["plan"]), "manifest": manifest_sha256(manifest)})
    rec = _current(rd, "_plan", sha)
    if rec:
        return json.loads((rd.root / "plan.json").read_text())
    t0 = time.monotonic()
    df = read_manifest(manifest, require_labels=True)
    fp = fingerprint(df, image_columns(df))  # the training cases (split=train), as medseg plan chooses them
    write_json(rd.root / "fingerprint.json", fp)
    result = {
        "n_training_images": fp["n_cases"],
        "splits": df["split"].value_counts().to_dict(),
        "median_spacing_mm": [round(float(s), 3) for s in fp["spacing_median"]],
        "median_shape": [int(round(s)) for s in fp["shape_median"]],
        "modality": fp["modality"],
        "spacing_choice": pipe.stages["plan"].spacing,
    }
    write_json(rd.root / "plan.json", result)
    rd.write_state(
        "_plan",
        {
            "status": "done",
            "config_sha256": sha,
            "seconds": round(time.monotonic() - t0, 3),
            "finished": now(),
            "outputs": {"plan": "plan.json", "fingerprint": "fingerprint.json"},
        },
    )
    log.info("plan: %s", result)
    return result


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def data_label_table(manifest: Path, config: str, overrides: list[str]):
    """The table the pipeline trains with: the data set's own (as ``medseg plan`` finds it), never the recipe's.

    A training recipe is shared between data sets (``phantom_demo`` names the phantoms' table), so a
    table found with the data (the one ``from-folder`` wrote, ``dataset.json``, ``labels.csv``...) wins
    over the recipe's, with a warning when they differ. Without one, the recipe's table is used when it
    has one (checked against the label values before training), else the values are named ``label_N``.
    """
    df = read_manifest(manifest, require_labels=True)
    found = table_for_manifest(manifest, df, fallback=False)
    cfg = load_config(config, overrides=overrides)
    recipe = cfg.label_table(base=Path(config).parent) if cfg.labels not in (None, "") else None
    if found is None:
        return recipe if recipe is not None else table_for_manifest(manifest, df).table
    if recipe is not None and not recipe.same_structures(found.table):
        log.warning(
            "train: the label table of %s (%s) is not used: the data set's, from %s, is (%s)",
            Path(config).name,
            ", ".join(recipe.names),
            found.source,
            ", ".join(found.table.names),
        )
    return found.table


def train(rd, pipe, manifest: Path, plan_result: dict | None, *, progress: bool, device) -> Path:
    """Train once per run into ``RUN_DIR/train/``; returns the best checkpoint."""
    st = pipe.stages["train"]
    overrides = _flatten(st.overrides)
    if plan_result and plan_result.get("spacing_choice") == "median":
        overrides.insert(0, f"preprocessing.spacing={plan_result['median_spacing_mm']}")
    table = data_label_table(manifest, st.config, overrides)
    sha = _sha(
        {
            "config": Path(st.config).read_text(),
            "overrides": overrides,
            "manifest": manifest_sha256(manifest),
            "labels": table.to_dict(),
        }
    )
    rec = _current(rd, "_train", sha)
    if rec:
        log.info("train: already done (%s)", rec["outputs"]["checkpoint"])
        return rd.root / rec["outputs"]["checkpoint"]
    t0 = time.monotonic()
    rd.write_state("_train", {"status": "running", "config_sha256": sha, "started": now()})
    log.info("train: %s with %s", st.config, overrides)
    train_dir = rd.root / "train"
    # a cascade (config with a cascade: section) keeps its stages in train/stage1, train/stage2
    resume = any((train_dir / p).exists() for p in ("state.pt", "cascade.json", "stage1/state.pt"))
    train_args = dict(
        config=st.config,
        manifest=manifest,
        out=train_dir,
        overrides=overrides,
        progress=progress,
        device=device,
        labels=table,
    )
    try:  # a train stage killed midway continues after its last finished epoch
        result = train_from_files(**train_args, resume=resume)
    except ConfigError as exc:
        if not (resume and "another config" in str(exc)):
            raise
        log.info("train: settings changed since the interrupted training; starting it again")
        shutil.rmtree(train_dir)
        result = train_from_files(**train_args)
    ckpt = Path(result.best_checkpoint)
    outputs, stages = {"checkpoint": rd.rel(ckpt)}, {}
    if (train_dir / "cascade.json").is_file():  # both stages' checkpoints and results (the model holds both)
        outputs.update({st: rd.rel(train_dir / st / "best.pt") for st in ("stage1", "stage2")})
        stages = {"cascade": json.loads((train_dir / "run.json").read_text()).get("stages", {})}
    rd.write_state(
        "_train",
        {
            "status": "done",
            "config_sha256": sha,
            "seconds": round(time.monotonic() - t0, 3),
            "finished": now(),
            "best_epoch": result.best_epoch,
            "best_mean_dice": result.best_mean_dice,
            "outputs": outputs,
            **stages,
        },
    )
    return ckpt
