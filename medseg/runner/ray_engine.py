"""The Ray engine: the same per-case stages as Ray actors, writing the same run directory.

Each actor loads the model once (one GPU per actor when the cluster has GPUs)
and runs whole cases (``case_work.process_case``), writing outputs and state
records itself, so RUN_DIR must be on a filesystem every node sees. The
driver keeps two cases in flight per actor (bounded memory in the object
store: only small state records travel back) and shows the progress bar.
Without ``address`` a local Ray instance is started for the run and shut
down afterwards; with one, the run joins that cluster.
"""

from __future__ import annotations

import logging
import time

from medseg.errors import OptionalDependencyError
from medseg.optional import available, optional_import
from medseg.progress import progress_bar as tqdm
from medseg.runner.case_work import CaseFailure, fail, now, process_case
from medseg.runner.model import load_predictor
from medseg.runner.rundir import RUN_LOG

INSTALL_HINT = (
    "the Ray engine needs Ray; install it with: pip install 'medseg[ray]' (or pip install 'ray[default]>=2.9')"
)
ray = optional_import("ray", extra="ray", purpose="the Ray engine")


def import_ray():
    """Ray, checked now: the install hint before any work."""
    if not available("ray"):
        raise OptionalDependencyError(INSTALL_HINT)
    return ray


class CaseWorker:
    """A Ray actor: the model loaded once, whole cases processed one after another."""

    def __init__(self, ctx):
        self.ctx = ctx
        run_log = logging.getLogger(RUN_LOG)
        if not run_log.handlers:  # append this worker's lines to the shared run.log
            handler = logging.FileHandler(ctx.rundir.log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            run_log.addHandler(handler)
            run_log.setLevel(logging.INFO)
            run_log.propagate = False
        self.predictor = load_predictor(ctx)

    def run(self, case) -> dict:
        return process_case(self.ctx, self.predictor, case)


def run_ray(
    ctx,
    cases,
    *,
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    on_record=None,
    init_kwargs: dict | None = None,
) -> list[dict]:
    """Process ``cases`` on Ray actors; returns their state records in the order they finished."""
    import_ray()
    if not cases:
        return []
    workers = max(1, int(workers))
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=workers, object_store_memory=128 * 2**20)
        ray.init(**{**kwargs, **(init_kwargs or {})})
    actors, records = [], []
    bar = tqdm(total=len(cases), desc="cases (ray)", unit="case", disable=not progress, smoothing=0.1)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and not ctx.device.startswith("cpu") else 0
        actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(CaseWorker)
        actors = [actor_cls.remote(ctx) for _ in range(workers)]
        todo = list(cases)[::-1]
        in_flight: dict = {}  # object ref -> (case, actor, t0)

        def submit(actor) -> None:
            if todo:
                case = todo.pop()
                in_flight[actor.run.remote(case)] = (case, actor, time.monotonic())

        for actor in actors:
            submit(actor)
            submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            case, actor, t0 = in_flight.pop(ready[0])
            try:
                rec = ray.get(ready[0])
            except Exception as exc:  # the actor died (out of memory, node lost): recorded, the rest go on
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                rec = fail(
                    ctx,
                    case,
                    CaseFailure("worker", f"Ray worker failed: {first[:300]}"),
                    attempt=(ctx.rundir.read_state(case.case_id) or {}).get("attempt", 1),
                    started=now(),
                    t0=t0,
                )
            records.append(rec)
            bar.update(1)
            if on_record:
                on_record(rec)
            submit(actor)
    finally:
        bar.close()
        for a in actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        if started_here:
            ray.shutdown()
    return records
