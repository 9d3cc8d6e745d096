"""``PipelineRun``: one ``medseg run`` invocation (its ``RunSettings``): check everything, prepare the run directory,
run the cases, rebuild the cohort outputs. ``run_pipeline(**settings)`` is the function ``medseg.api.run`` calls.

Order of events in one invocation:

1. load the pipeline (+ ``--set``), list the inputs (one line on stderr: how many
   cases were found), open the checkpoint: any config or input-list problem is
   raised here, before a case starts;
2. claim RUN_DIR: a new or empty folder gets the run marker first, a
   non-empty folder without it is refused (nothing of the user's is touched),
   and the run takes the folder's lock (a second run on it is refused); then
   prepare it (remove medseg's temporaries of a killed run and stale cohort
   outputs), write ``pipeline.yaml``, ``inputs.csv``, ``run.json``;
3. run-level stages (plan, train) when the pipeline has them;
4. skip the cases whose state is ``done`` for the same input fingerprint and
   config hash with all outputs present; mark the rest that have a record of an
   earlier attempt ``pending`` (a case without one gets its record when it
   starts: a manifest of a million rows writes no file per row up front); run
   them on the chosen engine (a failed case is recorded, the rest go on);
5. rebuild ``volumes.csv`` & co., ``metrics.csv``, ``status.csv`` and
   ``failures.csv`` from the per-case files, in input order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import medseg
from medseg.errors import ConfigError, InputError, OutputError
from medseg.io.atomic import write_csv, write_json, write_text
from medseg.models.checkpoint import versions
from medseg.pacs.endpoints import is_endpoint
from medseg.pacs.retrieve import shutdown_storage_scps
from medseg.pacs.source import pacs_input
from medseg.provenance import peak_rss_mb
from medseg.reporting import cohort
from medseg.reporting import longitudinal as lon
from medseg.reporting.metrics import COLUMNS
from medseg.reporting.report import write_cohort
from medseg.reporting.volumes import rows_frame
from medseg.runner import inputs as inputs_mod
from medseg.runner import training_stages
from medseg.runner.case_work import RunContext
from medseg.runner.cluster import ClusterError
from medseg.runner.local import run_local
from medseg.runner.model import model_summary
from medseg.runner.ray_engine import RayEngine, import_ray
from medseg.runner.rundir import RUN_LOG, RunDir, now
from medseg.runner.settings import load_pipeline

log = logging.getLogger(RUN_LOG)
ENGINES = ("local", "ray")


@dataclass
class RunResult:
    run_dir: Path
    n_cases: int
    done: list = field(default_factory=list)  # case ids finished in this invocation
    skipped: list = field(default_factory=list)  # done earlier, unchanged
    failures: dict = field(default_factory=dict)  # case id -> "stage: error"

    @property
    def exit_code(self) -> int:
        """0 all done, 1 done with failures, 2 nothing done."""
        n_ok = len(self.done) + len(self.skipped)
        if n_ok == 0:
            return 2
        return 0 if not self.failures and n_ok == self.n_cases else 1


def _json_rows(rd: RunDir, cases, key: str) -> tuple[list, list]:
    rows, ids = [], []
    for c in cases:
        rec = rd.read_state(c.case_id) or {}
        rel = (rec.get("outputs") or {}).get(key)
        if rec.get("status") == "done" and rel:
            rows += json.loads((rd.root / rel).read_text())
            ids.append(c.case_id)
    return rows, ids


def aggregate(rd: RunDir, pipe, cases, table) -> None:
    """Cohort outputs from the per-case files of every done case (input order)."""
    import pandas as pd

    if pipe.has("report"):
        rep = pipe.stages["report"]
        ids: list = []
        rows = rows_frame(rd.done_json(cases, "volumes", ids))  # case by case: never 1M rows as dicts at once
        if rows is not None:
            ranges = cohort.read_reference_ranges(rep.reference_ranges) if rep.reference_ranges else None
            montages = None
            if rep.html and rep.qc:
                montages = {}
                for cid in ids:
                    qc = ((rd.read_state(cid) or {}).get("outputs") or {}).get("qc")
                    montages[cid] = rd.root / qc if qc else None
            write_cohort(
                rd.root,
                rows,
                table,
                ranges=ranges,
                montages=montages,
                html=bool(rep.html and rep.qc),
                title=f"medseg run: {pipe.name}",
            )
            if rep.longitudinal:
                _longitudinal(rd, ids, rep)
    if pipe.has("evaluate"):
        rows, _ = _json_rows(rd, cases, "metrics")
        if rows:
            write_csv(rd.root / "metrics.csv", pd.DataFrame(rows, columns=COLUMNS))


def _longitudinal(rd: RunDir, ids: list, rep) -> None:
    """``longitudinal.csv`` of the run's done cases (``report.longitudinal``: "dicom" or a manifest path)."""
    if rep.longitudinal == "dicom":
        points = lon.time_points_from_dicom([rd.case_dir(cid) / "labels.nii.gz" for cid in ids], ids)
    else:
        points = lon.time_points_from_manifest(rep.longitudinal)
    frame = lon.write_longitudinal(rd.root, rd.root / "volumes.csv", points, plots=bool(rep.html and rep.qc))
    lon.add_to_html(rd.root / "report.html", frame, rd.root)


def _write_inputs(rd: RunDir, cases, pacs=None) -> None:
    """inputs.csv; a PACS input adds ``query_row`` (the id list's row) and its source is the study's cache folder,
    named by the case id (a salted hash of the StudyInstanceUID): no UID or patient identifier is written."""
    import pandas as pd

    multichannel = any(getattr(c, "channels", ()) for c in cases)
    columns = (
        ["case_id", "kind", "source"]
        + (["channels"] if multichannel else [])
        + ["label", "split", "fingerprint"]
        + (["query_row"] if pacs is not None else [])
    )
    write_csv(
        rd.root / "inputs.csv",
        pd.DataFrame(
            [
                {
                    "case_id": c.case_id,
                    "kind": c.kind,
                    "source": c.source,
                    "channels": ",".join(getattr(c, "channels", ())),
                    "label": c.label,
                    "split": c.split,
                    "fingerprint": c.fingerprint,
                    "query_row": getattr(c, "query_row", None),
                }
                for c in cases
            ],
            columns=columns,
        ),
    )


@dataclass
class RunSettings:
    """One invocation of a pipeline: what ``medseg run`` (``medseg.api.run``) was given.

    ``input`` may be a PACS endpoint (``dicomweb+http://HOST:PORT/dicom-web``, ``dimse://AET@HOST:PORT``):
    the studies found by ``query`` (``["StudyDate=20260101-20260131", "modality=CT"]``) and/or
    ``accessions`` (a CSV of AccessionNumbers or StudyInstanceUIDs) become the cases, one per study,
    retrieved into ``cache`` (default ``~/.cache/medseg/pacs``; at most ``cache_max_gb``) as they are read.

    ``resume=True`` insists that ``out`` already holds a run; without it an
    existing run directory is resumed all the same. ``ray_init``: extra
    ``ray.init`` keywords (Python API only; e.g. a ``runtime_env``).

    ``workers``: reader threads (local engine, default 1) or the most Ray actors (default: one per GPU, or
    one per node on CPUs); ``gpus_per_worker`` (Ray, default 1): GPUs each actor asks for (0.5: two share one).
    """

    pipeline: str | os.PathLike
    input: str | os.PathLike
    out: str | os.PathLike
    overrides: list | tuple | None = None
    resume: bool = False
    engine: str = "local"
    workers: int | None = None
    address: str | None = None
    progress: bool = True
    device: str | None = None
    gpus_per_worker: float | None = None
    ray_init: dict | None = None
    query: list | None = None
    accessions: str | os.PathLike | None = None
    cache: str | os.PathLike | None = None
    cache_max_gb: float | None = None


class PipelineRun:
    """A pipeline run over its inputs into one run directory, in named steps (the module docstring's order).

    ``PipelineRun(settings).run()`` checks everything first (``check``: no file is written before a config,
    input-list or model problem is raised), then claims the run directory and runs the cases.
    """

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self.pipe = None  # settings.Pipeline
        self.rd: RunDir | None = None
        self.pacs = None  # medseg.pacs.source.PacsInput for a PACS input
        self.input_shown = ""
        self.cases: list = []
        self.ignored: list = []
        self.ckpt: dict | None = None  # the model's summary (a train stage makes it later)
        self.run_info: dict | None = None
        self.invocation: dict = {}

    # -- 1. checks, before anything is written ------------------------------------------------------------------
    def check(self) -> None:
        s = self.settings
        if s.engine not in ENGINES:
            raise ConfigError(f"unknown engine {s.engine!r}; use one of {', '.join(ENGINES)}")
        if s.engine == "ray":
            import_ray()  # the install hint before any work
        if s.gpus_per_worker is not None and (s.engine != "ray" or not 0 < s.gpus_per_worker <= 64):
            raise ConfigError(
                f"--gpus-per-worker {s.gpus_per_worker}: give a positive number of GPUs per Ray actor (e.g. 1 or "
                "0.5), with --engine ray"
            )
        self.pipe = pipe = load_pipeline(s.pipeline, overrides=list(s.overrides or []))
        if not pipe.has("predict"):
            raise ConfigError(
                f"pipeline has no predict stage; nothing to run per case (stages: {', '.join(pipe.stages)})",
                path=s.pipeline,
            )
        self.rd = RunDir(s.out)
        self.rd.check_usable()  # before any work: --out is a file, or a foreign folder
        self._check_input()
        if s.resume and not (self.rd.root / "run.json").is_file():
            raise InputError(
                "--resume: no run to resume here (no run.json); drop --resume to start one", path=self.rd.root
            )
        self.cases, self.ignored = inputs_mod.discover(s.input, pipe, pacs=self.pacs)
        model = pipe.stages["predict"].model
        if model:  # a checkpoint, or a model folder of another tool (nnU-Net v2: every fold present)
            self.ckpt = model_summary(model)

    def _check_input(self) -> None:
        """A PACS endpoint as input: its query, id list and cache; the PACS options refused for any other input."""
        s = self.settings
        if is_endpoint(str(s.input)):
            self.pacs = pacs_input(
                str(s.input), query=s.query, accessions=s.accessions, cache=s.cache, cache_max_gb=s.cache_max_gb
            )
            if s.engine == "ray" and self.pacs.endpoint.retrieve == "move":
                raise ConfigError(
                    "--engine ray with C-MOVE: every actor would open medseg's storage SCP on the same port; "
                    "use retrieve=get (C-GET) or a DICOMweb endpoint, or the local engine"
                )
        elif s.query or s.accessions or s.cache or s.cache_max_gb is not None:
            raise ConfigError(
                "--query, --accessions, --cache and --cache-max-gb are for a PACS --input "
                "(dicomweb+http://HOST:PORT/dicom-web or dimse://AET@HOST:PORT)"
            )
        self.input_shown = self.pacs.endpoint.display if self.pacs is not None else str(Path(s.input).resolve())

    # -- 2. the run directory -------------------------------------------------------------------------------------
    def claim(self) -> logging.Handler:
        """Take RUN_DIR (marker, lock), prepare it, open run.log; returns the log handler to close."""
        rd = self.rd
        rd.claim()
        try:
            rd.prepare()
            return rd.open_log()
        except BaseException:
            rd.release()
            raise

    def announce(self) -> None:
        """Once the run directory is ours (refusals before it stay one line on stderr): what the run will do."""
        n, ignored = len(self.cases), self.ignored
        print(
            f"medseg run: {n:,} case{'s' if n != 1 else ''} found in {self.input_shown}"
            + (f" ({len(ignored):,} other name{'s' if len(ignored) != 1 else ''} ignored)" if ignored else ""),
            flush=True,
        )
        log.info(
            "run %s: %d cases from %s, engine %s x%s",
            self.pipe.name,
            n,
            self.input_shown,
            self.settings.engine,
            self.settings.workers or ("planned" if self.settings.engine == "ray" else 1),
        )
        if ignored:
            log.info("not cases (ignored): %s", ", ".join(ignored[:20]) + (" ..." if len(ignored) > 20 else ""))

    def write_records(self) -> None:
        """``pipeline.yaml``, ``inputs.csv`` and ``run.json`` (this invocation appended to the earlier ones)."""
        s, rd, pipe = self.settings, self.rd, self.pipe
        write_text(rd.root / "pipeline.yaml", yaml.safe_dump(pipe.to_dict(), sort_keys=False))
        _write_inputs(rd, self.cases, self.pacs)
        prev = {}
        with contextlib.suppress(OSError, ValueError):
            prev = json.loads((rd.root / "run.json").read_text())
        self.invocation = {
            "started": now(),
            "engine": s.engine,
            "workers": s.workers,
            "argv": sys.argv[1:] if sys.argv else [],
        }
        self.run_info = {
            "pipeline": pipe.name,
            "pipeline_file": str(Path(s.pipeline).resolve()),
            "input": self.input_shown,
            "medseg_version": medseg.__version__,
            "versions": versions(),
            "state": "running",
            "n_cases": len(self.cases),
            "invocations": prev.get("invocations", []) + [self.invocation],
        }
        if self.pacs is not None:
            self.run_info["pacs"] = self.pacs.to_record()
        write_json(rd.root / "run.json", self.run_info)

    # -- 3. run-level stages, the model ---------------------------------------------------------------------------
    def train_if_asked(self) -> None:
        """The plan and train stages (once per run); the trained checkpoint becomes the run's model."""
        pipe = self.pipe
        if not pipe.has("train"):
            return
        manifest = Path(self.settings.input).resolve()
        plan_result = training_stages.plan(self.rd, pipe, manifest) if pipe.has("plan") else None
        self.ckpt = model_summary(  # a cascade's summary names both stages' networks
            training_stages.train(
                self.rd, pipe, manifest, plan_result, progress=self.settings.progress, device=self.settings.device
            )
        )

    def context(self) -> RunContext:
        """Record the model and the config hash in run.json; the workers' ``RunContext``."""
        ckpt, pipe, s = self.ckpt, self.pipe, self.settings
        model_sha = ckpt["file_sha256"]
        config_sha = pipe.case_config_sha256(model_sha)
        self.run_info.update(
            model={
                "path": ckpt["path"],
                "sha256": model_sha,
                "name": ckpt["model"]["name"],
                "weights_sha256": ckpt.get("weights_sha256"),
            },
            config_sha256=config_sha,
        )
        write_json(self.rd.root / "run.json", self.run_info)
        sel = pipe.stages.get("select")
        return RunContext(
            root=str(self.rd.root),
            pipeline=pipe,
            config_sha256=config_sha,
            model_path=ckpt["path"],
            model_sha256=model_sha,
            labels=ckpt["labels"],
            engine=s.engine,
            device=s.device or "",
            pacs=self.pacs.context(sel.modalities if sel else ()) if self.pacs is not None else None,
            uid_seed=pipe.case_config_sha256(
                model_sha,
                exclude=tuple(  # what shapes the SEG / RTSTRUCT
                    n for n in pipe.stages if n not in ("scan", "select", "convert", "predict")
                ),
            ),
        )

    # -- 4. the cases -----------------------------------------------------------------------------------------------
    def cases_to_do(self, config_sha: str, result: RunResult) -> list:
        """Skip the current cases; an earlier attempt's record of the others turns ``pending``."""
        rd, todo = self.rd, []
        for c in self.cases:
            prev_rec = rd.read_state(c.case_id)
            if prev_rec is None:  # never started: its record is created when it starts (mark_running), not here
                todo.append(c)
            elif rd.is_current(c, config_sha, record=prev_rec):
                result.skipped.append(c.case_id)
            else:  # an earlier attempt's record (done under another config, failed, cut short): pending again
                rd.write_state(
                    c.case_id,
                    {
                        "status": "pending",
                        "attempt": prev_rec.get("attempt", 0),
                        "source": c.source,
                        "fingerprint": c.fingerprint,
                        "config_sha256": config_sha,
                    },
                )
                todo.append(c)
        log.info("%d cases to do, %d already done", len(todo), len(result.skipped))
        return todo

    def engine(self) -> contextlib.AbstractContextManager:
        """The Ray engine (joined or started; ``prepare`` checks the cluster), or nothing for the local one."""
        s = self.settings
        if s.engine != "ray":
            return contextlib.nullcontext()
        return RayEngine(
            address=s.address, workers=s.workers, gpus_per_worker=s.gpus_per_worker, init_kwargs=s.ray_init
        )

    def run_cases(self, ctx: RunContext, todo: list, result: RunResult, engine=None) -> None:
        s = self.settings

        def on_record(rec: dict) -> None:
            if rec["status"] == "done":
                result.done.append(rec["case_id"])
            else:
                result.failures[rec["case_id"]] = f"{rec.get('stage')}: {rec.get('error')}"

        if s.engine == "ray":
            engine.run(ctx, todo, progress=s.progress, on_record=on_record)
        else:
            run_local(
                ctx, todo, workers=s.workers or 1, progress=s.progress, on_record=on_record, stats=self.invocation
            )

    # -- 5. cohort outputs ------------------------------------------------------------------------------------------
    def finish(self, ctx: RunContext, result: RunResult, t_start: float) -> None:
        aggregate(self.rd, self.pipe, self.cases, ctx.label_table())
        counts = self.rd.write_tables(self.cases)
        self.invocation.update(
            finished=now(),
            seconds=round(time.monotonic() - t_start, 3),
            done=len(result.done),
            skipped=len(result.skipped),
            failed=len(result.failures),
            peak_rss_mb=peak_rss_mb(),
        )
        self.run_info.update(state="finished", counts=counts, exit_code=result.exit_code)
        write_json(self.rd.root / "run.json", self.run_info)
        log.info(
            "finished: %d done now, %d already done, %d failed (exit %d)",
            len(result.done),
            len(result.skipped),
            len(result.failures),
            result.exit_code,
        )

    def stopped(self, exc: OutputError | ClusterError) -> None:
        """Disk full, read-only, a Ray cluster that failed its check: say so in run.json when it can be written."""
        if self.run_info is not None:
            with contextlib.suppress(OutputError):
                self.run_info.update(state="stopped", error=" ".join(str(exc).split()))
                write_json(self.rd.root / "run.json", self.run_info)

    def run(self) -> RunResult:
        self.check()
        handler = self.claim()
        t_start = time.monotonic()
        try:
            self.announce()
            self.write_records()
            self.train_if_asked()
            ctx = self.context()
            result = RunResult(self.rd.root, len(self.cases))
            with self.engine() as engine:
                if engine is not None:  # Ray: actors planned, every node checked, before any case
                    engine.prepare(ctx)
                todo = self.cases_to_do(ctx.config_sha256, result)
                self.run_cases(ctx, todo, result, engine)
            self.finish(ctx, result, t_start)
            return result
        except (OutputError, ClusterError) as exc:
            self.stopped(exc)
            raise
        finally:
            if self.pacs is not None and self.pacs.endpoint.retrieve == "move":
                shutdown_storage_scps()
            RunDir.close_log(handler)
            self.rd.release()


def run_pipeline(**settings) -> RunResult:
    """Run ``pipeline`` (a YAML path) over ``input`` (a folder of cases or a manifest) into ``out``; ``settings``
    are the fields of ``RunSettings``, which says what each means."""
    return PipelineRun(RunSettings(**settings)).run()
