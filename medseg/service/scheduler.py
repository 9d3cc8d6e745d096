"""The study side of ``medseg listen``: complete studies -> batches -> pipeline runs, with the model loaded once.

The main thread calls :meth:`StudyScheduler.tick`, which marks a study complete once it received nothing for
the quiet period and queues it; one worker thread takes every queued study at once and runs the pipeline on
them (``medseg.runner.run_pipeline`` on ``batch.csv``, so every stage of the pipeline runs, forwarding
included) with the predictor loaded once at start (``medseg.runner.model.keep_predictors``), then rebuilds
the cohort tables of ``run/`` over every study processed so far.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from pathlib import Path

from medseg.errors import ConfigError, MedsegError, OutputError
from medseg.io.atomic import write_csv
from medseg.labels import LabelTable
from medseg.runner import run_pipeline
from medseg.runner.case_work import RunContext
from medseg.runner.inputs import Case
from medseg.runner.model import keep_predictors, load_predictor, model_summary
from medseg.runner.run import aggregate
from medseg.runner.rundir import RunDir
from medseg.runner.settings import load_pipeline

log = logging.getLogger("medseg.listen")


def load_listen_pipeline(cfg):
    """The listener's pipeline (a per-study one: predict, no train/plan/evaluate) and its model's summary."""
    pipe = load_pipeline(cfg.pipeline, overrides=list(cfg.overrides))
    if not pipe.has("predict"):
        raise ConfigError(
            f"pipeline has no predict stage; nothing to run per study (stages: {', '.join(pipe.stages)})",
            path=cfg.pipeline,
        )
    for st in ("train", "plan", "evaluate"):
        if pipe.has(st):
            raise ConfigError(
                f"medseg listen runs per-study pipelines; the {st} stage needs a manifest run (medseg run)",
                path=cfg.pipeline,
            )
    model = pipe.stages["predict"].model
    if not model:
        raise ConfigError("the pipeline names no model: --set predict.model=PATH", path=cfg.pipeline)
    return pipe, model_summary(model)


class StudyScheduler:
    """Queue of complete studies and the one worker thread that runs the pipeline on them."""

    def __init__(self, cfg, root: Path, spool, pipe, ckpt: dict, stopping: threading.Event):
        self.cfg = cfg
        self.root = root
        self.run_root = root / "run"
        self.spool = spool
        self.pipe, self.ckpt = pipe, ckpt
        self.stopping = stopping
        self.queue: queue.Queue = queue.Queue()
        self.worker: threading.Thread | None = None
        self.processing: list[str] = []
        self.processed = 0
        self._keep = None

    # -- the model --------------------------------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the predictor now, once, into the cache every later run_pipeline call takes it from."""
        self._keep = keep_predictors()
        self._keep.__enter__()
        ctx = RunContext(
            root=str(self.run_root),
            pipeline=self.pipe,
            config_sha256="",
            model_path=self.ckpt["path"],
            model_sha256=self.ckpt["file_sha256"],
            labels=self.ckpt["labels"],
            device=self.cfg.device or "",
        )
        t0 = time.monotonic()
        load_predictor(ctx)
        log.info("model %s loaded in %.1f s", Path(self.ckpt["path"]).name, time.monotonic() - t0)

    def release_model(self) -> None:
        if self._keep is not None:
            self._keep.__exit__(None, None, None)
            self._keep = None

    # -- queue and worker -------------------------------------------------------------------------------------
    def queue_studies(self, keys) -> None:
        for key in keys:
            self.queue.put(key)

    def tick(self) -> None:
        due, held = self.spool.due(self.cfg.quiet_seconds)
        for st in held:
            log.warning(
                "study %s is not processed: %d of its instances were refused (spool full or not written); it "
                "is complete once the sender sends them again",
                st.key,
                len(st.missing),
            )
        for key in due:
            st = self.spool.studies[key]
            log.info(
                "study %s complete (%d instances, no new one for %g s): queued",
                key,
                st.instances,
                self.cfg.quiet_seconds,
            )
            self.queue.put(key)

    def start(self) -> None:
        self.worker = threading.Thread(target=self._work, name="medseg-listen-worker", daemon=True)
        self.worker.start()

    def _next_batch(self, key: str) -> list[str]:
        """``key`` and every study queued behind it (a stop request stays queued for the worker)."""
        keys = [key]
        with contextlib.suppress(queue.Empty):
            while True:
                k = self.queue.get_nowait()
                if k is None:
                    self.queue.put(None)
                    break
                keys.append(k)
        return [k for k in dict.fromkeys(keys) if self.spool.start_processing(k)]

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None or self.stopping.is_set():
                return
            keys = self._next_batch(key)
            if keys:
                self.processing = keys
                try:
                    self.process(keys)
                finally:
                    self.processing = []

    def stop(self) -> None:
        """Finish the study being processed, then stop the worker."""
        if self.worker is None:
            return
        if self.processing:
            log.info(
                "stopping: finishing study %s first (a second signal stops at once; it then runs again "
                "at the next start)",
                " ".join(self.processing),
            )
        self.queue.put(None)
        self.worker.join()

    # -- one batch ----------------------------------------------------------------------------------------------
    def _run_batch(self, keys: list[str]) -> dict[str, tuple[bool, str]]:
        """One ``run_pipeline`` call on batch.csv; per study (ok, error line)."""
        import pandas as pd

        col = self.pipe.input.column
        rows = [{"case_id": k, col: str(self.spool.study_folder(k))} for k in keys]
        if self.pipe.input.split:
            for r in rows:
                r["split"] = self.pipe.input.split
        try:
            batch = write_csv(self.root / "batch.csv", pd.DataFrame(rows))
            r = run_pipeline(
                pipeline=self.cfg.pipeline,
                input=batch,
                out=self.run_root,
                overrides=list(self.cfg.overrides),
                progress=False,
                device=self.cfg.device,
            )
            return {
                k: (True, "") if k in r.done or k in r.skipped else (False, r.failures.get(k, "not processed"))
                for k in keys
            }
        except MedsegError as exc:
            line = " ".join(str(exc).split())
            log.error("pipeline run failed: %s", line)
            return {k: (False, line) for k in keys}
        except Exception as exc:  # noqa: BLE001 (a bug must not stop the node; the studies are marked failed)
            log.exception("internal error while processing %s", " ".join(keys))
            return {k: (False, f"internal error {type(exc).__name__}") for k in keys}

    def process(self, keys: list[str]) -> None:
        """Run the pipeline on these complete studies (one ``run_pipeline`` call on batch.csv)."""
        t0 = time.monotonic()
        log.info("processing %s", " ".join(keys))
        outcome = self._run_batch(keys)
        for k, (ok, err) in outcome.items():
            new = self.spool.finish(k, ok, err, keep=self.cfg.keep_spool)
            if new == "done":
                self.processed += 1
                log.info(
                    "study %s done (%.1f s): results in %s",
                    k,
                    time.monotonic() - t0,
                    (self.run_root / "cases" / k).relative_to(self.root),
                )
            elif new == "failed":
                log.error("study %s failed: %s", k, err)
            else:
                log.info("study %s received new instances while it was processed: it runs again when complete", k)
        self.processing = []
        with contextlib.suppress(MedsegError):
            self.rebuild_tables()

    def rebuild_tables(self) -> None:
        """volumes.csv & co., status.csv, failures.csv in run/ over every study processed so far (run_pipeline
        writes them for its batch only)."""
        rd = RunDir(self.run_root)
        if not rd.state_dir.is_dir():
            return
        cases = []
        for p in sorted(rd.state_dir.glob("st*.json")):
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(p.read_text())
                cases.append(
                    Case(rec["case_id"], rec.get("source", ""), "dicom", fingerprint=rec.get("fingerprint", ""))
                )
        try:
            rd.claim()
        except OutputError:
            return  # a `medseg run` on run/ right now: it writes them itself
        try:
            aggregate(rd, self.pipe, cases, LabelTable.from_dict(self.ckpt["labels"], source=self.ckpt["path"]))
            rd.write_tables(cases)
        finally:
            rd.release()
