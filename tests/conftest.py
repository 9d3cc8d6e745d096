"""Shared fixtures: small phantoms and an 'oracle' checkpoint for geometry tests.

The oracle network reads the label straight from the intensity of a phantom
whose HU encode the label (label * 100 HU, no noise). Any error in orientation,
resampling or the inverse mapping shows up as a lost Dice, and left/right
swaps show up as kidney_right/kidney_left exchanged.
"""

from __future__ import annotations

import json
import warnings

import helpers
import numpy as np
import pytest
from helpers import SHARED_DEMO, TINY_MODEL, label_coded, register_oracle, tiny_config  # noqa: F401  (fixtures below use them)

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

# --- markers for what a test needs (declared in pyproject.toml; pytest runs with --strict-markers) ---
# A test is marked from the fixtures it asks for and the folder it lives in, so a new test that uses the
# ``orthanc`` fixture is ``needs_orthanc`` without anyone remembering to say so:
#   pytest -m "not needs_orthanc"          everything but the tests that start Orthanc
#   pytest -m "not slow and not needs_nnunet"
NEEDS_BY_FIXTURE = {
    "orthanc": "needs_orthanc",
    "orthanc_factory": "needs_orthanc",
    "nnunet_model": "needs_nnunet",
    "nnunet_mr_model": "needs_nnunet",
}
NEEDS_BY_FOLDER = {"external": "needs_nnunet"}
# Tests needing a program rather than a fixture (Chromium, dcmtk, Ray) carry their marker explicitly.


def pytest_collection_modifyitems(config, items):
    for item in items:
        needs = {NEEDS_BY_FIXTURE[f] for f in getattr(item, "fixturenames", ()) if f in NEEDS_BY_FIXTURE}
        folder = item.path.parent.name
        if folder in NEEDS_BY_FOLDER:
            needs.add(NEEDS_BY_FOLDER[folder])
        for marker in sorted(needs):
            item.add_marker(getattr(pytest.mark, marker))
    # the tests that share the session's demo run last (it trains meanwhile: see ``shared_demo``); the first of them
    # may wait for it in its set-up, under its own timeout: they get the demo's time on top of the suite's 900 s
    users = [i for i in items if _uses_demo(i)]
    for item in users:
        item.add_marker(pytest.mark.timeout(DEMO_USER_TIMEOUT_S))
    items[:] = [i for i in items if not _uses_demo(i)] + users


def _registered() -> dict:
    from medseg.models import MODELS
    from medseg.runner.settings import STAGE_TYPES
    from medseg.training.losses import LOSSES
    from medseg.transforms.intensity import INTENSITY

    return {
        "model": set(MODELS.names()),
        "intensity scheme": set(INTENSITY.names()),
        "stage": set(STAGE_TYPES.names()),
        "loss": set(LOSSES.names()),
    }


@pytest.fixture(autouse=True)
def _no_registrations_left_behind():
    """A test that registers a model or scheme must remove it (the session's oracle model excepted)."""
    before = _registered()
    yield
    after = _registered()
    left = {k: sorted(after[k] - before[k] - {"test_intensity_oracle"}) for k in after}
    assert not any(left.values()), f"registrations left behind by this test: {left}"


@pytest.fixture(scope="session", autouse=True)
def _oracle_registered_for_the_session():
    register_oracle()
    yield
    from medseg.models import MODELS

    MODELS.unregister("test_intensity_oracle")


@pytest.fixture(scope="session")
def oracle_checkpoint(tmp_path_factory):
    """The intensity oracle on a 2 mm grid (``helpers.oracle_checkpoint``), saved once a session."""
    return helpers.oracle_checkpoint(tmp_path_factory.mktemp("oracle") / "oracle.pt")


@pytest.fixture(scope="session")
def coarse_phantom():
    """A phantom on a coarse grid (fast), with flips on two axes."""
    from medseg.data.phantoms import make_phantom

    return make_phantom(11, spacing=(1.6, 1.6, 4.0), flips=(True, False, True))


# --- small data sets for training tests: tiny volumes, a tiny network, a few epochs ---


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Four coarse phantoms (NIfTI) and their manifest; the 4th is split=val."""
    import pandas as pd

    from medseg.data.phantoms import make_phantom
    from medseg.io.readers import write_label_map, write_volume

    root = tmp_path_factory.mktemp("tiny_cohort")
    rows = []
    for i in range(4):
        case = make_phantom(700 + i, spacing=(3.0, 3.0, 5.0), fov_mm=(240, 180, 136))
        write_volume(case.image, root / f"img_{i}.nii.gz", dtype=np.int16)
        write_label_map(case.labels, root / f"lab_{i}.nii.gz")
        rows.append(
            {
                "case_id": f"c{i}",
                "image": f"img_{i}.nii.gz",
                "label": f"lab_{i}.nii.gz",
                "split": "val" if i == 3 else "train",
                "fold": str(i % 2),
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture
def write_config(tmp_path):
    import yaml

    def _write(**training):
        p = tmp_path / "config.yaml"
        p.write_text(yaml.safe_dump(tiny_config(**training)))
        return p

    return _write


# --- one shortened demo a session, shared ---
# The demo trains for about 3 minutes. It runs once a session for all the tests that need it (through the
# ``shared_demo`` fixture): the Dice target (tests/integration/test_end_to_end.py) and the README quick start and
# docs examples, which segment with its checkpoint as the README says (tests/docs/test_readme_commands.py). In a
# session with much other work it trains in a child process from the first test on, on one thread at the lowest
# priority (nice 19): on the core that the mostly single-threaded tests leave idle, giving way whenever they use both;
# the tests that need it run last, and the first of them, if it must wait, sets it to full priority and torch's threads.
# MEDSEG_TEST_DEMO_INLINE=1 (or a small session, or an xdist worker) trains it in the test process, when first needed.

BACKGROUND_MIN_OTHER_TESTS = 30  # with fewer other tests there is too little work to train behind
DEMO_USER_TIMEOUT_S = 1800  # pytest-timeout's 900 s (pyproject.toml) and as much again for the demo waited on
_DEMO_CHILD = """
import json, os, signal, sys
threads = [1]


def _more_threads(*_):  # SIGUSR1: the tests wait for the demo now; use all of torch's threads
    threads[0] = int(sys.argv[4])
    try:
        sys.modules["torch"].set_num_threads(threads[0])
    except (KeyError, AttributeError):  # torch not imported (yet): set below
        pass


signal.signal(signal.SIGUSR1, _more_threads)
open(sys.argv[3] + ".ready", "w").close()
os.nice(19)
import torch
torch.set_num_threads(threads[0])
from medseg.api import demo
res = demo(out=sys.argv[1], progress=False, **json.loads(sys.argv[2]))
with open(sys.argv[3], "w") as f:
    json.dump({k: res[k] for k in ("mean_dice", "metrics_csv", "volumes_csv", "checkpoint")}, f, default=str)
"""


def _uses_demo(item) -> bool:
    return "shared_demo" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="session", autouse=True)
def _shared_demo_in_background(request, tmp_path_factory):
    """The shared demo's child process and folder, started with the session's first test; None when it trains inline."""
    import os
    import signal
    import subprocess
    import sys

    users = sum(map(_uses_demo, request.session.items))
    others = len(request.session.items) - users
    inline = os.environ.get("MEDSEG_TEST_DEMO_INLINE") == "1" or "PYTEST_XDIST_WORKER" in os.environ
    inline = inline or not hasattr(signal, "SIGUSR1") or not hasattr(os, "nice")  # POSIX only
    if not users or others < BACKGROUND_MIN_OTHER_TESTS or inline:
        yield None
        return
    root = tmp_path_factory.mktemp("shared_demo")
    import torch

    threads = str(torch.get_num_threads())
    argv = [sys.executable, "-c", _DEMO_CHILD, str(root / "demo_out"), json.dumps(SHARED_DEMO), str(root / "res.json")]
    argv.append(threads)  # the threads it takes when the tests wait for it
    with open(root / "demo.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=helpers.TESTS_DIR.parent)
    yield proc, root
    if proc.poll() is None:  # the session ended before a test needed it (-x, an interrupt)
        proc.kill()
        proc.wait()


def _full_priority(pid: int) -> None:
    """Every thread of ``pid`` back to nice 0 (Linux; lowering a nice value needs root: otherwise it stays)."""
    import os
    from pathlib import Path

    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), 0)
        except OSError:  # not allowed, or the thread has ended
            pass


@pytest.fixture(scope="session")
def shared_demo(_shared_demo_in_background, tmp_path_factory) -> dict:
    """``medseg.api.demo`` with ``SHARED_DEMO``, run once a session: ``out`` (its folder), ``result`` (mean_dice,
    metrics_csv, volumes_csv, checkpoint) and ``stdout`` (what it printed).
    Tests that change files of the demo work on a copy of ``out``."""
    if _shared_demo_in_background is None:
        import contextlib
        import io

        from medseg.api import demo

        out, printed = tmp_path_factory.mktemp("shared_demo") / "demo_out", io.StringIO()
        with contextlib.redirect_stdout(printed):
            res = demo(out=out, progress=False, **SHARED_DEMO)
        return {"out": out, "result": res, "stdout": printed.getvalue()}
    proc, root = _shared_demo_in_background
    if proc.poll() is None:  # needed now, and nothing else of this session runs meanwhile: full speed
        _full_priority(proc.pid)
        if (root / "res.json.ready").is_file():  # its SIGUSR1 handler is in place
            import signal

            proc.send_signal(signal.SIGUSR1)
    rc = proc.wait()
    printed = (root / "demo.log").read_text()
    assert rc == 0, f"the shared demo failed (exit {rc}):\n{printed[-3000:]}"
    res = json.loads((root / "res.json").read_text())
    return {"out": root / "demo_out", "result": res, "stdout": printed}
