"""The Ray engine's driver loop (``RayEngine.run``) against a stand-in for Ray, in well under a second: the
cases that wait while no actor comes up are recorded failed after ``stall_s`` (600 s in a run, a fraction of
a second here), and an actor that comes up in time runs them. The real clusters are in
tests/integration/test_ray_cluster.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from medseg.runner import ray_engine
from medseg.runner.cluster import ActorSlot
from medseg.runner.inputs import Case
from medseg.runner.rundir import RunDir


class _Ref:
    """An object reference that resolves at ``at`` (monotonic seconds; None: never)."""

    def __init__(self, value=None, at: float | None = 0.0):
        self.value, self.at = value, at

    def done(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class _FakeRay:
    """What ``_Dispatch`` calls of Ray: ``remote`` (an actor class), ``wait``, ``get``, ``kill``, ``nodes``."""

    class exceptions:  # noqa: N801 (stands for the module ray.exceptions)
        class RayActorError(Exception):
            pass

    class util:  # noqa: N801
        class scheduling_strategies:  # noqa: N801
            @staticmethod
            def NodeAffinitySchedulingStrategy(node_id, soft=False):  # noqa: N802 (Ray's name)
                return ("affinity", node_id, soft)

    def __init__(self, ready_after: float | None):
        self.ready_after = ready_after  # seconds until an actor has loaded its model; None: never
        self.started: list = []
        self.killed: list = []

    def remote(self, **_):
        return lambda cls: self

    def options(self, **opts):
        return SimpleNamespace(remote=lambda ctx: self._actor(opts))

    def _actor(self, opts):
        at = None if self.ready_after is None else time.monotonic() + self.ready_after
        actor = SimpleNamespace(
            ready=_Method(lambda: _Ref({"host": "h", "pid": 1, "node_id": "n1"}, at)),
            run=_Method(lambda case: _Ref({"case_id": case.case_id, "status": "done"})),
        )
        self.started.append(opts)
        return actor

    def wait(self, refs, num_returns=1, timeout=None):
        end = time.monotonic() + (timeout or 0)
        while True:
            ready = [r for r in refs if r.done()][:num_returns]
            if ready or time.monotonic() >= end:
                return ready, [r for r in refs if r not in ready]
            time.sleep(0.01)

    def get(self, ref, timeout=None):
        return ref.value

    def kill(self, handle, no_restart=True):
        self.killed.append(handle)

    def nodes(self):
        return [{"NodeID": "n1", "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 1.0}}]


def _engine(tmp_path, monkeypatch, *, ready_after, stall_s):
    fake = _FakeRay(ready_after)
    monkeypatch.setattr(ray_engine, "ray", fake)
    engine = ray_engine.RayEngine(stall_s=stall_s)
    engine.plan = [ActorSlot("n1", 1.0, 0.0)]
    ctx = SimpleNamespace(rundir=RunDir(tmp_path), config_sha256="c" * 64, engine="ray", pacs=None)
    cases = [Case(f"case{i}", str(tmp_path / f"case{i}.nii.gz"), "image") for i in range(3)]
    return engine, ctx, cases, fake


def test_cases_waiting_for_an_actor_that_never_starts_fail_after_stall_s(tmp_path, monkeypatch):
    engine, ctx, cases, fake = _engine(tmp_path, monkeypatch, ready_after=None, stall_s=0.3)
    t0 = time.monotonic()
    records = engine.run(ctx, cases, progress=False)
    waited = time.monotonic() - t0
    assert 0.3 <= waited < 5.0, waited  # not before stall_s, and not the loop's 5 s wait on top of it
    assert [r["case_id"] for r in records] == ["case0", "case1", "case2"]  # each once, in input order
    for r in records:
        assert r["status"] == "failed" and r["stage"] == "worker"
        assert r["error"] == "no Ray actor could be started on the cluster; rerun the same command to resume"
        assert ctx.rundir.read_state(r["case_id"])["status"] == "failed"  # the state record the rerun reads
    assert len(fake.started) == 1 and len(fake.killed) == 1  # the pending actor is not left behind


def test_an_actor_that_starts_before_stall_s_runs_the_cases(tmp_path, monkeypatch):
    engine, ctx, cases, fake = _engine(tmp_path, monkeypatch, ready_after=0.2, stall_s=1.0)
    records = engine.run(ctx, cases, progress=False)
    assert [(r["case_id"], r["status"]) for r in records] == [("case0", "done"), ("case1", "done"), ("case2", "done")]
    assert all(ctx.rundir.read_state(c.case_id) is None for c in cases)  # the actor writes them, not the driver


@pytest.mark.parametrize("stall_s", [0.0, 0.05])
def test_a_zero_or_tiny_stall_s_still_fails_each_waiting_case_once(tmp_path, monkeypatch, stall_s):
    engine, ctx, cases, _ = _engine(tmp_path, monkeypatch, ready_after=None, stall_s=stall_s)
    records = engine.run(ctx, cases, progress=False)
    assert sorted(r["case_id"] for r in records) == ["case0", "case1", "case2"]
    assert {r["status"] for r in records} == {"failed"}
