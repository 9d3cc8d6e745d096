"""A Ray cluster for ``medseg run --engine ray``: where the actors go, and the checks before the first case.

Placement (``plan_actors``, a pure function of the nodes' declared resources):

- the run uses GPUs when its device is ``cuda``/``cuda:N``, or when it is unset (``--device``, the pipeline's
  ``predict.device``) and some node declares a GPU; ``--device cpu`` never asks for one;
- on GPUs, each actor asks for ``gpus_per_worker`` GPUs (default 1: one actor per GPU; 0.5: two actors share
  one) and 1 CPU; a node gets ``min(GPUs // gpus_per_worker, CPUs)`` actors, so a CPU-only node gets none;
- on CPUs, each actor asks for 1 CPU and no GPU; a node gets as many as it has CPUs when ``--workers`` is
  given, one per node otherwise (the network uses all of a node's cores inside one actor);
- ``--workers N`` caps the total; slots are taken one per node in turn (round robin), so the actors spread over
  the nodes before any node gets a second one. Each actor is pinned to its node.

The checks (``preflight``), before any case runs, on every alive node (one tiny task pinned to it): the node
reads a marker file that the driver has just written into the run directory (a random token: a node that sees
another folder at the same path, or none, fails), and computes the model's checksum as the driver did. A node
that fails either stops the run with one line naming the node (``ClusterError``, exit code 4).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.atomic import write_json
from medseg.provenance import file_sha256
from medseg.runner.model import model_summary

CHECK_FILE = ".medseg-cluster-check"
CHECK_TIMEOUT_S = 300.0
_EPS = 1e-6


class ClusterError(MedsegError):
    """The Ray cluster cannot run this run: a node does not see the run directory, has another model, has no room
    for an actor, or does not answer (exit code 4; no case was started)."""

    exit_code = 4


@dataclass(frozen=True)
class Node:
    """An alive Ray node: its id, IP address and declared (total) resources."""

    node_id: str
    ip: str
    resources: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"node {self.ip} (id {self.node_id[:12]})"


@dataclass(frozen=True)
class ActorSlot:
    """One actor of the plan: the node it is pinned to and what it asks for."""

    node_id: str
    num_cpus: float
    num_gpus: float


def alive_nodes(ray) -> list[Node]:
    """The cluster's alive nodes (``ray.nodes()``), in a stable order (IP, then id)."""
    nodes = [
        Node(n["NodeID"], n.get("NodeManagerAddress", "?"), dict(n.get("Resources") or {}))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return sorted(nodes, key=lambda n: (n.ip, n.node_id))


def wants_gpu(device: str, nodes: list[Node]) -> bool:
    """Whether the run's actors ask for GPUs: ``device`` cpu -> no; cuda -> yes (a cluster without any GPU is a
    ``ClusterError``); empty -> when some node declares a GPU."""
    device = (device or "").strip().lower()
    any_gpu = any(n.resources.get("GPU", 0) > 0 for n in nodes)
    if device.startswith("cpu"):
        return False
    if device.startswith("cuda"):
        if not any_gpu:
            raise ClusterError(
                f"--device {device}: no node of the Ray cluster declares a GPU; start the GPU nodes with "
                "ray start --num-gpus N, or run with --device cpu"
            )
        return True
    return any_gpu


def node_capacity(node: Node, *, gpu: bool, gpus_per_worker: float, per_cpu: bool) -> int:
    """How many actors ``node`` can hold (see the module's docstring)."""
    cpus = node.resources.get("CPU", 0.0)
    by_cpu = int(cpus + _EPS)
    if gpu:
        return min(int(node.resources.get("GPU", 0.0) / gpus_per_worker + _EPS), by_cpu)
    return by_cpu if per_cpu else min(1, by_cpu)


def plan_actors(
    nodes: list[Node],
    *,
    gpu: bool,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    existing: dict | None = None,
    prefer_not: frozenset = frozenset(),
) -> list[ActorSlot]:
    """The actors to start: one ``ActorSlot`` each (pure: no Ray call).

    ``existing``: node id -> actors already there (a replacement after a node loss fills what is left);
    ``workers`` then caps the total including them. ``prefer_not``: node ids used only when no other node has
    room (the node of an actor just lost).
    """
    gpw = 1.0 if gpus_per_worker is None else float(gpus_per_worker)
    if gpu and not 0 < gpw <= 64:
        raise ClusterError(f"--gpus-per-worker {gpus_per_worker}: give a positive number, e.g. 1 or 0.5")
    existing = dict(existing or {})
    capacity = {n.node_id: node_capacity(n, gpu=gpu, gpus_per_worker=gpw, per_cpu=workers is not None) for n in nodes}
    free = {k: max(0, c - existing.get(k, 0)) for k, c in capacity.items()}
    total = int(workers) if workers is not None else sum(capacity.values())
    want = total - sum(existing.values())
    slots: list[ActorSlot] = []
    for group in (
        [n.node_id for n in nodes if n.node_id not in prefer_not],
        [n.node_id for n in nodes if n.node_id in prefer_not],
    ):
        while len(slots) < want and any(free[k] > 0 for k in group):
            for node_id in group:  # round robin: spread before doubling up
                if len(slots) < want and free[node_id] > 0:
                    free[node_id] -= 1
                    slots.append(ActorSlot(node_id, 1.0, gpw if gpu else 0.0))
    return slots


def describe_plan(slots: list[ActorSlot], nodes: list[Node]) -> str:
    """``2 actors x (1 CPU, 0.5 GPU): node 10.0.0.2 (id ...) x2`` for run.log."""
    if not slots:
        return "no actor"
    names = {n.node_id: n.name for n in nodes}
    counts: dict = {}
    for s in slots:
        counts[s.node_id] = counts.get(s.node_id, 0) + 1
    ask = f"{slots[0].num_cpus:g} CPU" + (f", {slots[0].num_gpus:g} GPU" if slots[0].num_gpus else "")
    where = ", ".join(f"{names.get(k, k[:12])} x{v}" for k, v in counts.items())
    return f"{len(slots)} actor{'s' if len(slots) != 1 else ''} x ({ask}): {where}"


# -- the checks --------------------------------------------------------------------------------------------------
def model_checksum(model_path: str) -> str:
    """The model's checksum as every node computes it: a file's SHA-256, a model folder's summary checksum."""
    if Path(model_path).is_file():
        return file_sha256(model_path)
    return model_summary(model_path)["file_sha256"]


def node_check():
    """The task each node runs: does it see the driver's marker (its text), and its model's checksum.

    A function built here and sent by value (cloudpickle pickles a nested function's code), so that a node
    imports only ``pathlib`` and ``medseg.provenance`` for it, not the runner (torch and the models): the check
    takes a second, not the time a worker needs to import PyTorch. A model folder's checksum needs its format's
    summary (``summary``: ``model_summary``, sent by reference), a file's is its SHA-256.
    """

    def check_node(root: str, model_path: str, summary=None) -> dict:
        import os  # noqa: PLC0415 (inside the task sent by value: resolved on the node)
        from pathlib import Path  # noqa: PLC0415

        out = {"pid": os.getpid(), "seen": "", "model_sha256": "", "error": ""}
        try:
            out["seen"] = (Path(root) / CHECK_FILE).read_text()
        except OSError as exc:
            out["error"] = f"cannot read {CHECK_FILE} ({exc.strerror or type(exc).__name__})"
        try:
            out["model_sha256"] = summary(model_path)["file_sha256"] if summary else file_sha256(model_path)
        except Exception as exc:  # noqa: BLE001 (reported as the node's finding: the model is not readable there)
            out["model_error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return out

    return check_node


def node_finding(node: Node, answer: dict, *, token: str, root: str, model_path: str, model_sha: str) -> str:
    """The one-line problem of ``node`` from its ``check_node`` answer, or "" when it is fit."""
    if answer.get("seen", "").strip() != token:
        why = answer.get("error") or "it sees another folder at that path"
        return (
            f"{node.name} cannot see the run directory {root} ({why}); put the run directory on a filesystem "
            "all nodes share (the same path on every node), or remove that node from the cluster"
        )
    if answer.get("model_error"):
        return (
            f"{node.name} cannot read the model {model_path} ({answer['model_error']}); put the model on a "
            "filesystem all nodes share, at the same path"
        )
    if answer.get("model_sha256") != model_sha:
        return (
            f"{node.name} has a different model at {model_path} (sha256 {str(answer.get('model_sha256'))[:12]}..., "
            f"the driver's is {model_sha[:12]}...); give every node the same model file"
        )
    return ""


def preflight(ray, root: str, model_path: str, nodes: list[Node], *, timeout_s: float = CHECK_TIMEOUT_S) -> dict:
    """Check every node in ``nodes`` (see the module's docstring); raise ``ClusterError`` naming the first node
    that fails (and how many others do). Returns node id -> the node's answer."""
    strategy = _affinity(ray)
    marker = Path(root) / CHECK_FILE
    write_json(marker, {"token": secrets.token_hex(16)})  # its whole text is compared on each node
    token_text = marker.read_text()
    model_sha = model_checksum(model_path)
    task = ray.remote(num_cpus=0, max_retries=1)(node_check())
    summary = None if Path(model_path).is_file() else model_summary
    refs = {
        n.node_id: task.options(scheduling_strategy=strategy(n.node_id, soft=False)).remote(root, model_path, summary)
        for n in nodes
    }
    answers, problems = {}, []
    try:
        for node in nodes:
            try:
                answers[node.node_id] = ray.get(refs[node.node_id], timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 (timeout, node died: that node's finding)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
                problems.append(f"{node.name} did not answer the cluster check ({first}); check that node")
                continue
            found = node_finding(
                node,
                answers[node.node_id],
                token=token_text.strip(),
                root=root,
                model_path=model_path,
                model_sha=model_sha,
            )
            if found:
                problems.append(found)
    finally:
        marker.unlink(missing_ok=True)
    if problems:
        more = f" (and {len(problems) - 1} more node{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ClusterError(f"Ray cluster check failed before any case: {problems[0]}{more}")
    return answers


def _affinity(ray):
    """``NodeAffinitySchedulingStrategy`` of ``ray`` (the module given, so that tests may pass their own)."""
    return ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy


def actor_options(ray, slot: ActorSlot, *, soft: bool = False) -> dict:
    """``ray.remote(...).options(**this)`` for ``slot``: its resources, pinned to its node."""
    return {
        "num_cpus": slot.num_cpus,
        "num_gpus": slot.num_gpus,
        "scheduling_strategy": _affinity(ray)(slot.node_id, soft=soft),
    }
