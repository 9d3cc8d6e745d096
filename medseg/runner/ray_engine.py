"""The Ray engine: the same per-case stages as Ray actors, writing the same run directory.

Each actor loads the model once and runs whole cases (``case_work.process_case``), writing outputs and state
records itself, so RUN_DIR must be on a filesystem every node sees. ``RayEngine`` joins the cluster at
``address`` (or starts a local Ray instance for the run and shuts it down afterwards), then, before any case:

- plans the actors from the nodes' declared resources (``medseg.runner.cluster.plan_actors``: one per GPU, or
  ``gpus_per_worker`` each; CPU-only nodes get none when the run uses GPUs) and pins each to its node;
- on a cluster it joined, checks every alive node (``cluster.preflight``): the run directory is visible there
  and the model's checksum is the driver's; a node that fails stops the run (``ClusterError``, exit code 4).

The driver keeps two cases in flight per actor (only small state records travel back) and starts sending to an
actor once it has loaded its model. When an actor is lost (its node died, it was killed, out of memory: Ray's
``RayActorError``) the driver drops it, starts a replacement where the plan has room (another node first), and
sends its in-flight cases again: a case whose ``done`` record was written before the loss counts as done (not
run twice); one that had started counts an attempt, and after ``max_attempts`` lost attempts it is recorded
failed with the reason; one that had not started is simply sent again. Before a case runs again, the
temporaries its lost attempt left (``.tmp-medseg-*``) are removed; every output is written atomically
(temporary + rename), so no half-written file remains and the cohort tables, rebuilt from the per-case files
at the end, have each case's rows once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from medseg.errors import OptionalDependencyError
from medseg.io.atomic import TMP_PREFIX
from medseg.io.paths import safe_name
from medseg.optional import available, optional_import
from medseg.progress import progress_bar as tqdm
from medseg.runner import cluster
from medseg.runner.case_work import CaseFailure, fail, now, process_case, where
from medseg.runner.model import load_predictor
from medseg.runner.rundir import RUN_LOG

INSTALL_HINT = (
    "the Ray engine needs Ray; install it with: pip install 'medseg[ray]' (or pip install 'ray[default]>=2.9')"
)
ray = optional_import("ray", extra="ray", purpose="the Ray engine")
log = logging.getLogger(RUN_LOG)

MAX_ATTEMPTS = 3  # lost attempts of one case (each on another actor) before it is recorded failed
STALL_S = 600.0  # no actor alive or ready for this long while cases wait: the rest are recorded failed


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

    def ready(self) -> dict:
        """Where this actor runs (host, pid, node id), once its model is loaded."""
        return {**where(), "node_id": ray.get_runtime_context().get_node_id()}

    def run(self, case) -> dict:
        return process_case(self.ctx, self.predictor, case)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]


def discard_case_temporaries(ctx, case_id: str) -> None:
    """Remove the temporaries a lost attempt of ``case_id`` left: in its case folder, and its state record's."""
    rd, name = ctx.rundir, safe_name(case_id)
    folders = [(rd.case_dir(case_id), None), (rd.state_dir, f"-{name}.json"), (rd.qc_dir, f"-{name}.png")]
    for folder, suffix in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.name.startswith(TMP_PREFIX) and (suffix is None or f.name.endswith(suffix)) and not f.is_symlink():
                with contextlib.suppress(OSError):
                    f.unlink()


@dataclass
class _Actor:
    handle: object
    slot: cluster.ActorSlot
    ready_ref: object
    info: dict = field(default_factory=dict)  # host, pid, node_id once ready
    in_flight: set = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return bool(self.info)


class RayEngine:
    """``with RayEngine(address=...) as engine: engine.prepare(ctx); engine.run(ctx, cases)`` (see the module)."""

    def __init__(
        self,
        *,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        init_kwargs: dict | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        stall_s: float = STALL_S,
    ):
        self.address = address
        self.workers = None if workers is None else max(1, int(workers))
        self.gpus_per_worker = gpus_per_worker
        self.init_kwargs = init_kwargs
        self.max_attempts = max(1, int(max_attempts))
        self.stall_s = stall_s
        self.started_here = False
        self.nodes: list[cluster.Node] = []
        self.gpu = False
        self.plan: list[cluster.ActorSlot] = []

    def __enter__(self) -> RayEngine:
        import_ray()
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs.update(num_cpus=self.workers or 1, object_store_memory=128 * 2**20)
            ray.init(**{**kwargs, **(self.init_kwargs or {})})
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here:
            ray.shutdown()

    @property
    def local_instance(self) -> bool:
        """A Ray instance started by this run on this machine (one node: nothing to check)."""
        return self.started_here and not self.address

    def prepare(self, ctx, *, check: bool | None = None) -> None:
        """Plan the actors; on a cluster (``check`` None: unless a local instance), check every node first."""
        self.nodes = cluster.alive_nodes(ray)
        device = ctx.device or getattr(ctx.pipeline.stages.get("predict"), "device", "") or ""
        self.gpu = cluster.wants_gpu(device, self.nodes)
        self.plan = cluster.plan_actors(
            self.nodes, gpu=self.gpu, workers=self.workers, gpus_per_worker=self.gpus_per_worker
        )
        if not self.plan:
            need = f"{self.gpus_per_worker or 1:g} GPU and 1 CPU" if self.gpu else "1 CPU"
            have = ", ".join(
                f"{n.name}: {n.resources.get('CPU', 0):g} CPU, {n.resources.get('GPU', 0):g} GPU" for n in self.nodes
            )
            raise cluster.ClusterError(
                f"no node of the Ray cluster has room for an actor ({need} each; {have}); "
                "add resources, or lower --gpus-per-worker"
            )
        if check if check is not None else not self.local_instance:
            answers = cluster.preflight(ray, ctx.root, ctx.model_path, self.nodes)
            log.info("cluster check passed on %d node(s): run directory visible, model checksum equal", len(answers))
        log.info("ray actors: %s", cluster.describe_plan(self.plan, self.nodes))

    def run(self, ctx, cases, *, progress: bool = True, on_record=None) -> list[dict]:
        """Process ``cases`` on the planned actors; returns their state records in the order they finished."""
        if not cases:
            return []
        if not self.plan:
            self.prepare(ctx)
        bar = tqdm(total=len(cases), desc="cases (ray)", unit="case", disable=not progress, smoothing=0.1)
        dispatch = _Dispatch(self, ctx, cases, bar, on_record)
        try:
            dispatch.loop()
        finally:
            bar.close()
            dispatch.close()
        return dispatch.records


class _Dispatch:
    """The driver's loop: cases to actors, results back, lost actors replaced, lost cases sent again."""

    def __init__(self, engine: RayEngine, ctx, cases, bar, on_record):
        self.engine, self.ctx, self.bar, self.on_record = engine, ctx, bar, on_record
        self.todo = list(cases)[::-1]  # pop() takes the next in input order; a lost case is appended (next)
        self.actors: list[_Actor] = []
        self.in_flight: dict = {}  # object ref -> (case, actor, t0, attempt before)
        self.lost_attempts: dict = {}  # case id -> attempts lost with their actor
        self.records: list[dict] = []
        self.lost_nodes: set = set()
        self.replacements = 0
        self.cls = ray.remote(max_restarts=0)(CaseWorker)
        self.idle_since: float | None = None
        for slot in engine.plan:
            self.start(slot)

    def start(self, slot: cluster.ActorSlot, *, soft: bool = False) -> None:
        handle = self.cls.options(**cluster.actor_options(ray, slot, soft=soft)).remote(self.ctx)
        self.actors.append(_Actor(handle, slot, handle.ready.remote()))

    def submit(self, actor: _Actor) -> None:
        if self.todo and actor.ready:
            case = self.todo.pop()
            attempt = int((self.ctx.rundir.read_state(case.case_id) or {}).get("attempt") or 0)
            ref = actor.handle.run.remote(case)
            actor.in_flight.add(ref)
            self.in_flight[ref] = (case, actor, time.monotonic(), attempt)

    def finished(self, rec: dict) -> None:
        self.records.append(rec)
        self.bar.update(1)
        if self.on_record:
            self.on_record(rec)

    def loop(self) -> None:
        while self.todo or self.in_flight:
            self.fill()
            waiting = {a.ready_ref: a for a in self.actors if not a.ready}
            if not self.in_flight and not any(a.ready for a in self.actors):  # cases wait, no actor takes them
                if self.stalled(bool(waiting)):
                    return
            else:
                self.idle_since = None
            ready, _ = ray.wait(list(self.in_flight) + list(waiting), num_returns=1, timeout=self.wait_s())
            if not ready:
                continue
            if ready[0] in waiting:
                self.actor_ready(waiting[ready[0]])
            else:
                self.case_returned(ready[0])

    def wait_s(self) -> float:
        """How long the loop waits for a result: 5 s, less while a stall counts down (it ends on time)."""
        if self.idle_since is None:
            return 5.0
        return min(5.0, max(0.01, self.engine.stall_s - (time.monotonic() - self.idle_since)))

    def fill(self) -> None:
        """Two cases in flight on every ready actor while cases wait."""
        for actor in self.actors:
            while self.todo and actor.ready and len(actor.in_flight) < 2:
                self.submit(actor)

    def stalled(self, pending: bool) -> bool:
        """No actor can take a case: fail the rest after ``stall_s`` (at once when no actor is even pending)."""
        self.idle_since = self.idle_since or time.monotonic()
        if pending and time.monotonic() - self.idle_since < self.engine.stall_s:
            return False
        why = "no Ray actor could be started on the cluster" if pending else "every Ray actor was lost"
        while self.todo:
            case = self.todo.pop()
            self.finished(self.failed(case, f"{why}; rerun the same command to resume", time.monotonic()))
        return True

    def actor_ready(self, actor: _Actor) -> None:
        try:
            actor.info = ray.get(actor.ready_ref)
        except Exception as exc:  # noqa: BLE001 (model load failed there, node lost: that actor is gone)
            log.warning("ray actor on node %s failed to start: %s", actor.slot.node_id[:12], first_line(exc))
            self.lose(actor, exc)
            return
        self.idle_since = None

    def case_returned(self, ref) -> None:
        case, actor, t0, _ = self.in_flight.pop(ref)
        actor.in_flight.discard(ref)
        try:
            rec = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the actor is gone: its cases go elsewhere
            self.in_flight[ref] = (case, actor, t0, _)
            actor.in_flight.add(ref)
            self.lose(actor, exc)
            return
        except Exception as exc:  # noqa: BLE001 (an error outside the case's stages: recorded, the rest go on)
            rec = self.failed(case, f"Ray worker failed: {first_line(exc)}", t0)
        self.finished(rec)

    def failed(self, case, message: str, t0: float) -> dict:
        attempt = (self.ctx.rundir.read_state(case.case_id) or {}).get("attempt", 1)
        return fail(self.ctx, case, CaseFailure("worker", message), attempt=attempt, started=now(), t0=t0)

    def lose(self, actor: _Actor, exc: BaseException) -> None:
        """Drop a lost actor, settle its in-flight cases, start a replacement where there is room."""
        if actor not in self.actors:
            return
        self.actors.remove(actor)
        self.lost_nodes.add(actor.slot.node_id)
        with contextlib.suppress(Exception):
            ray.kill(actor.handle, no_restart=True)
        reason = first_line(exc)
        log.warning("ray actor lost (%s): %s", actor.info.get("host", actor.slot.node_id[:12]), reason)
        for ref in sorted(actor.in_flight, key=lambda r: -self.in_flight[r][2]):  # oldest is sent first again
            self.settle_lost(*self.in_flight.pop(ref), reason)
        actor.in_flight.clear()
        self.replace()

    def settle_lost(self, case, actor: _Actor, t0: float, attempt_before: int, reason: str) -> None:
        rec = self.ctx.rundir.read_state(case.case_id) or {}
        if rec.get("status") == "done" and rec.get("config_sha256") == self.ctx.config_sha256:
            if all((self.ctx.rundir.root / rel).is_file() for rel in (rec.get("outputs") or {}).values()):
                log.info("%s was done before its Ray actor was lost; not run again", case.case_id)
                self.finished({**rec, "case_id": case.case_id})
                return
        if int(rec.get("attempt") or 0) > attempt_before:  # it had started on the lost actor
            n = self.lost_attempts[case.case_id] = self.lost_attempts.get(case.case_id, 0) + 1
            if n >= self.engine.max_attempts:
                msg = f"Ray worker lost {n} times while running this case (last: {reason})"
                self.finished(self.failed(case, msg, t0))
                return
        discard_case_temporaries(self.ctx, case.case_id)
        log.info("%s: sent again after its Ray actor was lost", case.case_id)
        self.todo.append(case)

    def replace(self) -> None:
        """A replacement actor where the plan has room, on another node than the lost ones if possible."""
        eng = self.engine
        if self.replacements >= len(eng.plan) * eng.max_attempts:
            return
        with contextlib.suppress(Exception):
            eng.nodes = cluster.alive_nodes(ray)
        existing: dict = {}
        for a in self.actors:
            existing[a.slot.node_id] = existing.get(a.slot.node_id, 0) + 1
        total = len(eng.plan) if eng.workers is None else eng.workers
        slots = cluster.plan_actors(
            eng.nodes,
            gpu=eng.gpu,
            workers=min(total, len(self.actors) + 1) if eng.workers is None else total,
            gpus_per_worker=eng.gpus_per_worker,
            existing=existing,
            prefer_not=frozenset(self.lost_nodes),
        )
        for slot in slots[:1]:
            self.replacements += 1
            log.info("starting a replacement Ray actor: %s", cluster.describe_plan([slot], eng.nodes))
            self.start(slot, soft=True)

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a.handle)


def run_ray(
    ctx,
    cases,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    address: str | None = None,
    progress: bool = True,
    on_record=None,
    init_kwargs: dict | None = None,
) -> list[dict]:
    """Process ``cases`` on Ray actors (``RayEngine``: connect, plan, check, run); returns their state records."""
    import_ray()
    if not cases:
        return []
    with RayEngine(address=address, workers=workers, gpus_per_worker=gpus_per_worker, init_kwargs=init_kwargs) as e:
        e.prepare(ctx)
        return e.run(ctx, cases, progress=progress, on_record=on_record)
