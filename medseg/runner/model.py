"""The run's model: what ``medseg run`` records of it before any case starts, and its predictor, loaded once.

A model is a medseg checkpoint (``.pt``) or a model folder of another tool (``medseg.inference.load``:
nnU-Net v2, TotalSegmentator, a MONAI bundle, a portable file). ``model_summary`` reads what the run
records (path, checksums, name, label table) without loading weights; ``load_predictor`` loads the
predictor for a run's context, and inside ``keep_predictors()`` hands the same one to every later run in
this process (``medseg listen``).
"""

from __future__ import annotations

import contextlib
import json
import time

import medseg.adapters  # noqa: F401  (registers the model-folder formats with inference.load)
from medseg.inference import load as external
from medseg.inference.batch import process_seconds
from medseg.models.checkpoint import load_checkpoint, versions


def model_summary(model) -> dict:
    """A checkpoint's summary (``load_checkpoint``), or a model folder's (every fold of an nnU-Net v2 folder
    present)."""
    if external.is_external_model(model):
        return external.run_summary(model)
    return load_checkpoint(model)


_KEPT_PREDICTORS: dict | None = None  # while keep_predictors() is active: loaded predictors by model and settings


@contextlib.contextmanager
def keep_predictors():
    """Inside this block ``load_predictor`` loads each (model checksum, device, inference settings) once and
    hands the same predictor to every later run in this process (``medseg listen``: one model load for its
    lifetime, however many studies it runs). Outside it every run loads its own, as before."""
    global _KEPT_PREDICTORS
    previous, _KEPT_PREDICTORS = _KEPT_PREDICTORS, {}
    try:
        yield _KEPT_PREDICTORS
    finally:
        _KEPT_PREDICTORS = previous


def load_predictor(ctx):
    """The predictor of ``ctx`` (a ``medseg.runner.case_work.RunContext``): its model, device and inference settings."""
    pred = ctx.pipeline.stages["predict"]
    device = ctx.device or pred.device or None
    key = (ctx.model_path, ctx.model_sha256, device, json.dumps(pred.inference, sort_keys=True, default=str))
    kept = _KEPT_PREDICTORS
    if kept is not None and key in kept:
        return kept[key]
    t_load = time.monotonic()
    predictor = external.load_predictor(ctx.model_path, device=device, progress=False, **pred.inference)
    # what medseg predict records too (one sidecar schema): this process's start-up until its model was loaded
    with contextlib.suppress(AttributeError):  # a predictor that takes no attributes records none
        predictor.startup = {
            "seconds_startup": process_seconds(),
            "seconds_model_load": round(time.monotonic() - t_load, 3),
        }
    if kept is not None:
        kept[key] = predictor
    return predictor


def predictor_info(predictor) -> dict:
    """What each case's sidecar records of the predictor: model provenance, inference settings, versions."""
    return {"model": dict(predictor.provenance), "inference": dict(predictor.inference), "versions": versions()}
