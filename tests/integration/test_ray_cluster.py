"""``medseg run --engine ray --address`` on REAL multi-node Ray clusters started on this machine.

One cluster for the whole module: a head and worker nodes, every node its own raylet
(``ray.cluster_utils.Cluster``), so a node can be SIGKILLed (its raylet and its worker processes). One node,
there for two tests, is a ``ray start`` process inside its own mount namespace (``unshare -Urm``) with an
empty tmpfs over one folder of the run and a different model file at the model's path: a node that really
does not see the driver's files. Checked, on label-coded
phantoms with the intensity oracle (known volumes), against one local-engine run:

- a node that cannot see the run directory, or has another model, stops the run before any case, exit 4,
  with one line naming that node;
- a worker node SIGKILLed while it runs a case: the run ends with the local run's ``volumes.csv``, an
  empty ``failures.csv``, each case run to its end once (one ``done`` line each in run.log), no temporary left;
- the driver SIGKILLed mid-run: the same call resumes and gives the same ``volumes.csv``;
- a case that kills its worker every time (a "poison" phantom: the test model SIGKILLs its own process when it
  sees it) is ONE failed case after 3 lost attempts, with that reason; the others are done, exit code 1;
- placement: actors pinned one per GPU (or per ``gpus_per_worker``) on nodes that declare GPUs, none on a
  CPU-only node; with device cpu, CPUs only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medseg.io.atomic import TMP_PREFIX

pytestmark = pytest.mark.needs_ray
ray = pytest.importorskip("ray")

TESTS_DIR = Path(__file__).resolve().parents[1]
PIPELINE = str(Path(__file__).resolve().parents[2] / "pipelines" / "dicom_volumetry.yaml")
N_CASES = 6
STORE = 80 * 2**20
NODE = {"object_store_memory": STORE}
SETS = ["report.qc=false", "report.html=false"]
# The oracle as a model plugin (an entry point), found by the nodes' workers through PYTHONPATH when a
# checkpoint names it: no runtime environment, no setup hook importing PyTorch into every worker.
PLUGIN = """
import os
import signal
import time

import torch

POISON = 37.0 / 400.0  # a 37 HU volume after the 0-400 HU window: no label-coded phantom (k x 100 HU) has it


class IntensityOracle(torch.nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0, 1, out_channels))

    def forward(self, x):
        if float(((x - POISON).abs() < 1e-4).float().mean()) > 0.05:
            os.kill(os.getpid(), signal.SIGKILL)  # the poison case: its worker dies, every time
        gate, end = os.environ.get("MEDSEG_TEST_GATE"), time.monotonic() + 120
        if gate and os.path.exists(gate):  # held while the test's gate file exists; GATE.held says who waits
            with open(gate + ".held", "w") as f:
                f.write(str(os.getpid()))
        while gate and os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.05)
        return -100.0 * (x - self.centres.view(1, -1, *([1] * (x.ndim - 2)))) ** 2


def build(*, spatial_dims, in_channels, out_channels):
    \"\"\"test only: label = round(intensity)\"\"\"
    return IntensityOracle(out_channels)


build.medseg_tags = {"dims": (2, 3), "divisor": 1}
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Six label-coded phantoms (NIfTI and DICOM), the oracle checkpoint, one local-engine run of them, and the
    same cases with a poison case (a 37 HU volume, the last in input order)."""
    from helpers import ORACLE_ON_4MM, label_coded, oracle_checkpoint

    from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series
    from medseg.io.readers import write_volume
    from medseg.io.volume import Volume
    from medseg.runner import run_pipeline

    root = tmp_path_factory.mktemp("ray_cluster")
    plugin = root / "plugin"
    (plugin / "medseg_ray_test_oracle-0.dist-info").mkdir(parents=True)
    (plugin / "ray_test_oracle.py").write_text(PLUGIN)
    (plugin / "medseg_ray_test_oracle-0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: medseg-ray-test-oracle\nVersion: 0\n"
    )
    (plugin / "medseg_ray_test_oracle-0.dist-info" / "entry_points.txt").write_text(
        "[medseg.models]\ntest_intensity_oracle = ray_test_oracle:build\n"
    )
    model = oracle_checkpoint(root / "model" / "oracle.pt", **ORACLE_ON_4MM)
    cases = root / "cases"
    for i in range(N_CASES):
        ph = make_phantom(700 + i, case_id=f"case{i}", spacing=(4.0, 4.0, 6.0), noise_hu=0)
        coded = PhantomCase(ph.case_id, label_coded(ph), ph.labels, ph.voxel_counts)
        if i == 1:
            write_dicom_series(coded, cases / ph.case_id, seed=i)
        else:
            write_volume(coded.image, cases / f"{ph.case_id}.nii.gz")
    overrides = [f"predict.model={model}", *SETS]
    ref = root / "reference"
    r = run_pipeline(pipeline=PIPELINE, input=cases, out=ref, overrides=overrides, progress=False)
    assert r.exit_code == 0
    poisoned = root / "poisoned_cases"
    shutil.copytree(cases, poisoned)
    write_volume(
        Volume(np.full(ph.image.array.shape, 37.0, np.float32), ph.image.affine, "case_poison"),
        poisoned / "case_poison.nii.gz",
    )
    env = {"PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    return {
        "root": root,
        "cases": cases,
        "poisoned": poisoned,
        "model": model,
        "overrides": overrides,
        "ref": ref,
        "env": env,
    }


# A node whose raylet is SIGKILLed is found dead by the head's health checks: every 3 s and dead after 5 failures
# by default, so it stays listed alive for ~15 s, and a run started then plans on it and checks it; every 0.5 s
# here. A check still waits 10 s for an answer, so a node slowed down by a busy machine is not declared dead.
HEALTH = {
    "health_check_initial_delay_ms": 500,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 10000,
    "health_check_failure_threshold": 5,
}


def _cluster(**head):
    from ray.cluster_utils import Cluster

    args = {"include_dashboard": False, "_system_config": HEALTH, **NODE, **head}
    return Cluster(initialize_head=True, head_node_args=args)


def _node(kit, gate: Path, **kw) -> dict:
    """A worker node's arguments: its own object store, the plugin on its workers' PYTHONPATH, and the file
    ``gate`` that holds its cases in the network while it exists."""
    return {**NODE, "env_vars": {**kit["env"], "MEDSEG_TEST_GATE": str(gate)}, **kw}


def _shutdown(cluster) -> None:
    with contextlib.suppress(Exception):
        ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(kit):
    """A head without CPUs (no actor there) and worker node A with 2 CPUs, whose cases wait while the file
    ``gate_a`` exists; tests add and kill others."""
    c = _cluster(num_cpus=0)
    try:
        c.add_node(**_node(kit, num_cpus=2, resources={"node_a": 1}, gate=kit["root"] / "gate_a"))  # waits: alive
        yield c
    finally:
        _shutdown(c)


def _run(kit, out, address, *, cases=None, **kw):
    from medseg.runner import run_pipeline

    return run_pipeline(
        pipeline=PIPELINE,
        input=cases or kit["cases"],
        out=out,
        overrides=kit["overrides"],
        engine="ray",
        address=address,
        progress=False,
        **kw,
    )


def _states(out: Path) -> list[dict]:
    folder = out / "state"
    if not folder.is_dir():
        return []
    recs = []
    for p in folder.glob("*.json"):
        if not p.name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError, ValueError):  # caught between write and rename: read it next time
                recs.append(json.loads(p.read_text()))
    return recs


def _same_as_reference(kit, out: Path) -> None:
    ref = kit["ref"]
    for name in ("volumes.csv", "volumes_wide.csv", "summary.csv", "failures.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(ref / name), check_exact=True)
    assert pd.read_csv(out / "failures.csv").empty
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    for case_dir in (ref / "cases").iterdir():  # the same files per case, none half-written or extra
        assert sorted(p.name for p in (out / "cases" / case_dir.name).iterdir()) == sorted(
            p.name for p in case_dir.iterdir()
        )


# -- 1. every node must see the run directory and the same model ---------------------------------------------------
def _alive(cluster, resource: str) -> list[str]:
    """Ids of the cluster's alive nodes that declare ``resource`` (from the GCS, without connecting a driver)."""
    return [k for k, res in cluster.global_state.total_resources_per_node().items() if resource in res]


@pytest.fixture(scope="class")
def private_node(kit, cluster):
    """A node of ``cluster`` in its own mount namespace: an empty tmpfs over ``private/`` and another file at the
    model's path; started with ``ray start --block``, stopped (its process group) after the class's tests, and
    gone from the cluster before the next test plans its actors."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-Urm", "true"]).returncode != 0:
        pytest.skip("needs unprivileged mount namespaces (unshare -Urm) to give a node its own view of a folder")
    root = kit["root"]
    (root / "private").mkdir()
    model_dir = kit["model"].parent
    ray_bin = Path(sys.executable).with_name("ray")
    script = (
        f"mount -t tmpfs tmpfs '{root / 'private'}' && mount -t tmpfs tmpfs '{model_dir}' && "
        f"printf 'another model' > '{kit['model']}' && exec '{ray_bin}' start --address={cluster.address} "
        f"--num-cpus=1 --object-store-memory={STORE} --resources='{{\"private_view\": 1}}' --disable-usage-stats "
        "--block"
    )
    proc = subprocess.Popen(
        ["unshare", "-Urm", "sh", "-c", script],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not _alive(cluster, "private_view"):
            assert proc.poll() is None and time.monotonic() < deadline, "the private-view node did not start"
            time.sleep(0.1)
        yield _alive(cluster, "private_view")[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 30
        while _alive(cluster, "private_view") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(cluster, "private_view"), "the private-view node is still in the cluster"


@pytest.mark.usefixtures("private_node")
class TestEveryNodeMustSeeTheRunDirectoryAndTheModel:
    def test_a_node_that_cannot_see_the_run_directory_stops_the_run_before_any_case(
        self, kit, cluster, private_node, capsys
    ):
        from medseg.cli import main

        out = kit["root"] / "private" / "run"
        shared_model = kit["root"] / "shared_model.pt"
        shutil.copy(kit["model"], shared_model)
        args = ["run", PIPELINE, "--input", str(kit["cases"]), "--out", str(out), "--no-progress"]
        args += ["--set", f"predict.model={shared_model}", *(x for s in SETS for x in ("--set", s))]
        code = main([*args, "--engine", "ray", "--address", cluster.address])
        err = capsys.readouterr().err.strip()
        assert code == 4
        assert len(err.splitlines()) == 1, err
        assert private_node[:12] in err and "cannot see the run directory" in err
        assert "filesystem all nodes share" in err
        assert not list((out / "state").glob("*.json")) and not list((out / "cases").iterdir())  # no case started
        assert json.loads((out / "run.json").read_text())["state"] == "stopped"

    def test_a_node_with_another_model_stops_the_run_before_any_case(self, kit, cluster, private_node):
        from medseg.runner.cluster import ClusterError

        out = kit["root"] / "shared_run"
        with pytest.raises(ClusterError) as info:
            _run(kit, out, cluster.address, workers=1)
        msg = str(info.value)
        assert private_node[:12] in msg and "different model" in msg and "\n" not in msg
        assert info.value.exit_code == 4
        assert not list((out / "state").glob("*.json"))


# -- 2. losing a node, losing the driver ---------------------------------------------------------------------------
def test_sigkill_of_a_worker_node_mid_run_loses_nothing(kit, cluster):
    """Node B is SIGKILLed while it runs a case, after node A has finished one. Gates make that order certain on a
    busy machine: A's cases wait until B runs one (else A, ready first, could do them all), and B's cases wait
    until B is killed."""
    gate_a, gate_b = kit["root"] / "gate_a", kit["root"] / "gate_b"
    held_b = Path(f"{gate_b}.held")  # the pid of B's worker, written by the model once it waits at B's gate
    gate_a.touch()
    gate_b.touch()
    victim = cluster.add_node(**_node(kit, gate_b, num_cpus=1, resources={"node_b": 1}))
    out = kit["root"] / "node_loss"
    killed: dict = {}

    def kill_when_a_case_runs_there() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            recs = _states(out)
            on_b = int((held_b.exists() and held_b.read_text().strip()) or 0)
            running = [r for r in recs if r.get("status") == "running" and r.get("pid") == on_b]
            if running:
                gate_a.unlink(missing_ok=True)  # A may finish its cases now
            if running and any(r.get("status") == "done" for r in recs):
                killed["case"] = running[0]["case_id"]
                cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet and its workers
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_a_case_runs_there, daemon=True)
    watcher.start()
    try:
        r = _run(kit, out, cluster.address, workers=2)
    finally:
        watcher.join(timeout=5)
        gate_a.unlink(missing_ok=True)
        gate_b.unlink(missing_ok=True)
        if victim in cluster.worker_nodes:  # not killed: gone all the same, for the tests after this one
            cluster.remove_node(victim)
    assert killed, "the worker node was not killed while it ran a case"
    assert r.exit_code == 0 and not r.failures, r.failures
    assert sorted(r.done) == [f"case{i}" for i in range(N_CASES)]
    _same_as_reference(kit, out)
    log = (out / "run.log").read_text()
    assert "ray actor lost" in log and f"{killed['case']}: sent again" in log
    for i in range(N_CASES):  # each case ran to its end once
        assert log.count(f"case{i} done in") == 1, log
    assert json.loads((out / "state" / f"{killed['case']}.json").read_text())["attempt"] == 2


def test_driver_sigkill_then_the_same_call_resumes(kit, cluster, tmp_path):
    """The driver is ``medseg run ... --engine ray --address`` in a child process, SIGKILLed after 2 cases."""
    from helpers import oracle_child_script

    out = kit["root"] / "driver_kill"
    sets = [x for s in kit["overrides"] for x in ("--set", s)]
    args = ["run", PIPELINE, "--input", str(kit["cases"]), "--out", str(out), "--no-progress", *sets]
    args += ["--engine", "ray", "--workers", "1", "--address", cluster.address]
    proc = subprocess.Popen(
        [sys.executable, str(oracle_child_script(tmp_path)), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done: set = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(done) < 2:
            done = {r["case_id"] for r in _states(out) if r.get("status") == "done"}
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= len(done) < N_CASES, "the driver was not killed mid-run"
    kept = {c: json.loads((out / "state" / f"{c}.json").read_text())["finished"] for c in done}
    r = _run(kit, out, cluster.address, workers=1)
    assert r.exit_code == 0 and not r.failures and set(r.skipped) >= set(kept)
    for c, finished in kept.items():  # not redone
        assert json.loads((out / "state" / f"{c}.json").read_text())["finished"] == finished
    _same_as_reference(kit, out)


def test_a_case_that_kills_its_worker_every_time_is_one_failed_case(kit, cluster):
    """The poison case SIGKILLs each worker that runs it: after 3 lost attempts (3 actors) it is recorded failed
    with that reason; the six other cases are done as in the local run."""
    out = kit["root"] / "poisoned"
    r = _run(kit, out, cluster.address, cases=kit["poisoned"], workers=1)
    assert r.exit_code == 1  # done with a failed case
    assert sorted(r.done) == [f"case{i}" for i in range(N_CASES)] and list(r.failures) == ["case_poison"]
    fails = pd.read_csv(out / "failures.csv")
    assert fails["case_id"].tolist() == ["case_poison"] and fails["stage"].tolist() == ["worker"]
    assert fails["error"][0].startswith("Ray worker lost 3 times while running this case (last: "), fails["error"][0]
    state = json.loads((out / "state" / "case_poison.json").read_text())
    assert state["status"] == "failed" and state["attempt"] == 3
    here, there = str(kit["poisoned"]), str(kit["cases"])  # the input folder differs (source_image): mapped
    for name in ("volumes.csv", "volumes_wide.csv", "summary.csv"):  # the failed case has no row
        got = pd.read_csv(out / name).map(lambda v: v.replace(here, there) if isinstance(v, str) else v)
        pd.testing.assert_frame_equal(got, pd.read_csv(kit["ref"] / name), check_exact=True)
    log = (out / "run.log").read_text()
    assert log.count("ray actor lost") == 3 and log.count("case_poison: sent again") == 2, log
    assert not (out / "cases" / "case_poison" / "labels.nii.gz").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]


# -- 3. GPUs: placement from the nodes' declared resources ---------------------------------------------------------
def test_actors_are_placed_one_per_declared_gpu_and_cpu_nodes_get_none(cluster):
    from medseg.runner import cluster as cl

    gpu_node = cluster.add_node(num_cpus=4, num_gpus=2, resources={"node_g": 1}, **NODE)  # declared, not real
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        nodes = cl.alive_nodes(ray)
        g = next(n.node_id for n in nodes if "node_g" in n.resources)
        a = next(n.node_id for n in nodes if "node_a" in n.resources)
        assert cl.wants_gpu("", nodes) and cl.wants_gpu("cuda:0", nodes) and not cl.wants_gpu("cpu", nodes)
        plan = cl.plan_actors(nodes, gpu=True)
        assert [(s.node_id, s.num_gpus, s.num_cpus) for s in plan] == [(g, 1.0, 1.0)] * 2
        shared = cl.plan_actors(nodes, gpu=True, gpus_per_worker=0.5)
        assert [s.node_id for s in shared] == [g] * 4 and {s.num_gpus for s in shared} == {0.5}
        cpu = cl.plan_actors(nodes, gpu=False)  # one per node with CPUs; no GPU asked
        assert sorted(s.node_id for s in cpu) == sorted([a, g]) and {s.num_gpus for s in cpu} == {0.0}

        @ray.remote
        class Probe:
            def where(self):
                return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()

        probes = [Probe.options(**cl.actor_options(ray, s)).remote() for s in plan]
        placed = ray.get([p.where.remote() for p in probes], timeout=60)
        assert [n for n, _ in placed] == [g, g]
        assert sorted(i for _, ids in placed for i in ids) == [0, 1]  # each actor got its own GPU
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.remove_node(gpu_node)
