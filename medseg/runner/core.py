"""``run_pipeline``: check everything, prepare the run directory, run the cases, rebuild the cohort outputs.

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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, InputError, OutputError
from medseg.runner.rundir import RUN_LOG, RunDir, now

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

    from medseg.io.atomic import write_csv

    if pipe.has("report"):
        from medseg.reporting import cohort
        from medseg.reporting.tables import write_cohort

        rep = pipe.stages["report"]
        rows, ids = _json_rows(rd, cases, "volumes")
        if rows:
            ranges = cohort.read_reference_ranges(rep.reference_ranges) if rep.reference_ranges else None
            montages = None
            if rep.html and rep.qc:
                montages = {}
                for cid in ids:
                    qc = ((rd.read_state(cid) or {}).get("outputs") or {}).get("qc")
                    montages[cid] = rd.root / qc if qc else None
            write_cohort(rd.root, rows, table, ranges=ranges, montages=montages, html=bool(rep.html and rep.qc),
                         title=f"medseg run: {pipe.name}")
            if rep.longitudinal:
                _longitudinal(rd, ids, rep)
    if pipe.has("evaluate"):
        from medseg.reporting.metrics import COLUMNS

        rows, _ = _json_rows(rd, cases, "metrics")
        if rows:
            write_csv(rd.root / "metrics.csv", pd.DataFrame(rows, columns=COLUMNS))


def _longitudinal(rd: RunDir, ids: list, rep) -> None:
    """``longitudinal.csv`` of the run's done cases (``report.longitudinal``: "dicom" or a manifest path)."""
    from medseg.reporting import longitudinal as lon

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

    from medseg.io.atomic import write_csv

    multichannel = any(getattr(c, "channels", ()) for c in cases)
    columns = (["case_id", "kind", "source"] + (["channels"] if multichannel else []) + ["label", "split", "fingerprint"]
               + (["query_row"] if pacs is not None else []))
    write_csv(rd.root / "inputs.csv", pd.DataFrame(
        [{"case_id": c.case_id, "kind": c.kind, "source": c.source, "channels": ",".join(getattr(c, "channels", ())),
          "label": c.label, "split": c.split, "fingerprint": c.fingerprint, "query_row": getattr(c, "query_row", None)}
         for c in cases],
        columns=columns))


def run_pipeline(*, pipeline, input, out, overrides=None, resume: bool = False, engine: str = "local",
                 workers: int = 1, address: str | None = None, progress: bool = True, device: str | None = None,
                 ray_init: dict | None = None, query=None, accessions=None, cache=None,
                 cache_max_gb: float | None = None) -> RunResult:
    """Run ``pipeline`` (a YAML path) over ``input`` (a folder of cases or a manifest) into ``out``.

    ``input`` may be a PACS endpoint (``dicomweb+http://HOST:PORT/dicom-web``, ``dimse://AET@HOST:PORT``):
    the studies found by ``query`` (``["StudyDate=20260101-20260131", "modality=CT"]``) and/or
    ``accessions`` (a CSV of AccessionNumbers or StudyInstanceUIDs) become the cases, one per study,
    retrieved into ``cache`` (default ``~/.cache/medseg/pacs``; at most ``cache_max_gb``) as they are read.

    ``resume=True`` insists that ``out`` already holds a run; without it an
    existing run directory is resumed all the same. ``ray_init``: extra
    ``ray.init`` keywords (Python API only; e.g. a ``runtime_env``).
    """
    import yaml

    import medseg
    from medseg.io.atomic import write_json, write_text
    from medseg.models.checkpoint import load_checkpoint, versions
    from medseg.runner import inputs as inputs_mod
    from medseg.runner.pipeline import load_pipeline

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from medseg.runner.ray_engine import import_ray

        import_ray()  # the install hint before any work
    pipe = load_pipeline(pipeline, overrides=list(overrides or []))
    if not pipe.has("predict"):
        raise ConfigError(f"pipeline has no predict stage; nothing to run per case (stages: {', '.join(pipe.stages)})",
                          path=pipeline)
    rd = RunDir(out)
    rd.check_usable()  # before any work: --out is a file, or a foreign folder
    pacs = None
    from medseg.pacs.endpoints import is_endpoint

    if is_endpoint(str(input)):
        from medseg.pacs.query import pacs_input

        pacs = pacs_input(str(input), query=query, accessions=accessions, cache=cache, cache_max_gb=cache_max_gb)
        if engine == "ray" and pacs.endpoint.retrieve == "move":
            raise ConfigError("--engine ray with C-MOVE: every actor would open medseg's storage SCP on the same port; "
                              "use retrieve=get (C-GET) or a DICOMweb endpoint, or the local engine")
    elif query or accessions or cache or cache_max_gb is not None:
        raise ConfigError("--query, --accessions, --cache and --cache-max-gb are for a PACS --input "
                          "(dicomweb+http://HOST:PORT/dicom-web or dimse://AET@HOST:PORT)")
    input_shown = pacs.endpoint.display if pacs is not None else str(Path(input).resolve())
    if resume and not (rd.root / "run.json").is_file():
        raise InputError("--resume: no run to resume here (no run.json); drop --resume to start one", path=rd.root)
    cases, ignored = inputs_mod.discover(input, pipe, pacs=pacs)
    ckpt = None
    if pipe.stages["predict"].model:
        from medseg.adapters import formats as external

        model = pipe.stages["predict"].model
        if external.is_external_model(model):  # a model folder of another tool (nnU-Net v2: every fold present)
            ckpt = external.run_summary(model)
        else:
            ckpt = load_checkpoint(model)

    rd.claim()
    try:
        rd.prepare()
        handler = rd.open_log()
    except BaseException:
        rd.release()
        raise
    # once the run directory is ours (refusals before it stay one line on stderr): what the run will do
    print(f"medseg run: {len(cases):,} case{'s' if len(cases) != 1 else ''} found in {input_shown}"
          + (f" ({len(ignored):,} other name{'s' if len(ignored) != 1 else ''} ignored)" if ignored else ""), flush=True)
    t_start = time.monotonic()
    run_info = None
    try:
        log.info("run %s: %d cases from %s, engine %s x%d", pipe.name, len(cases), input_shown, engine, workers)
        if ignored:
            log.info("not cases (ignored): %s", ", ".join(ignored[:20]) + (" ..." if len(ignored) > 20 else ""))
        write_text(rd.root / "pipeline.yaml", yaml.safe_dump(pipe.to_dict(), sort_keys=False))
        _write_inputs(rd, cases, pacs)
        prev = {}
        try:
            prev = json.loads((rd.root / "run.json").read_text())
        except (OSError, ValueError):
            pass
        invocation = {"started": now(), "engine": engine, "workers": workers, "argv": sys.argv[1:] if sys.argv else []}
        run_info = {"pipeline": pipe.name, "pipeline_file": str(Path(pipeline).resolve()), "input": input_shown,
                    "medseg_version": medseg.__version__, "versions": versions(), "state": "running",
                    "n_cases": len(cases), "invocations": prev.get("invocations", []) + [invocation]}
        if pacs is not None:
            run_info["pacs"] = pacs.to_record()
        write_json(rd.root / "run.json", run_info)

        if pipe.has("train"):
            from medseg.runner import learn

            manifest = Path(input).resolve()
            plan_result = learn.plan(rd, pipe, manifest) if pipe.has("plan") else None
            ckpt = load_checkpoint(learn.train(rd, pipe, manifest, plan_result, progress=progress, device=device))
        model_sha = ckpt["file_sha256"]
        config_sha = pipe.case_config_sha256(model_sha)
        run_info.update(model={"path": ckpt["path"], "sha256": model_sha, "name": ckpt["model"]["name"],
                               "weights_sha256": ckpt.get("weights_sha256")}, config_sha256=config_sha)
        write_json(rd.root / "run.json", run_info)

        from medseg.runner.stages import RunContext

        sel = pipe.stages.get("select")
        ctx = RunContext(root=str(rd.root), pipeline=pipe, config_sha256=config_sha, model_path=ckpt["path"],
                         model_sha256=model_sha, labels=ckpt["labels"], engine=engine, device=device or "",
                         pacs=pacs.context(sel.modalities if sel else ()) if pacs is not None else None,
                         uid_seed=pipe.case_config_sha256(model_sha, exclude=tuple(  # what shapes the SEG / RTSTRUCT
                             n for n in pipe.stages if n not in ("scan", "select", "convert", "predict"))))
        result = RunResult(rd.root, len(cases))
        todo = []
        for c in cases:
            prev_rec = rd.read_state(c.case_id)
            if prev_rec is None:  # never started: its record is created when it starts (mark_running), not here
                todo.append(c)
            elif rd.is_current(c, config_sha, record=prev_rec):
                result.skipped.append(c.case_id)
            else:  # an earlier attempt's record (done under another config, failed, cut short): pending again
                rd.write_state(c.case_id, {"status": "pending", "attempt": prev_rec.get("attempt", 0), "source": c.source,
                                           "fingerprint": c.fingerprint, "config_sha256": config_sha})
                todo.append(c)
        log.info("%d cases to do, %d already done", len(todo), len(result.skipped))

        def on_record(rec: dict) -> None:
            if rec["status"] == "done":
                result.done.append(rec["case_id"])
            else:
                result.failures[rec["case_id"]] = f"{rec.get('stage')}: {rec.get('error')}"

        if engine == "ray":
            from medseg.runner.ray_engine import run_ray

            run_ray(ctx, todo, workers=workers, address=address, progress=progress, on_record=on_record, init_kwargs=ray_init)
        else:
            from medseg.runner.local import run_local

            run_local(ctx, todo, workers=workers, progress=progress, on_record=on_record, stats=invocation)

        aggregate(rd, pipe, cases, ctx.label_table())
        counts = rd.write_tables(cases)
        from medseg.provenance import peak_rss_mb

        invocation.update(finished=now(), seconds=round(time.monotonic() - t_start, 3), done=len(result.done),
                          skipped=len(result.skipped), failed=len(result.failures),
                          peak_rss_mb=peak_rss_mb())
        run_info.update(state="finished", counts=counts, exit_code=result.exit_code)
        write_json(rd.root / "run.json", run_info)
        log.info("finished: %d done now, %d already done, %d failed (exit %d)", len(result.done), len(result.skipped),
                 len(result.failures), result.exit_code)
        return result
    except OutputError as exc:  # disk full, read-only: say so in run.json when it can still be written
        if run_info is not None:
            with contextlib.suppress(OutputError):
                run_info.update(state="stopped", error=" ".join(str(exc).split()))
                write_json(rd.root / "run.json", run_info)
        raise
    finally:
        if pacs is not None and pacs.endpoint.retrieve == "move":
            from medseg.pacs.retrieve import shutdown_storage_scps

            shutdown_storage_scps()
        RunDir.close_log(handler)
        rd.release()
