"""The benchmark scripts are run by hand, not by CI, so a renamed function can break
them unnoticed. Check every ``from medseg... import name`` in them (also the ones
inside functions) against the library, and run each script's ``--smoke`` setting (the
same code path on the smallest inputs: seconds, not a measurement) end to end."""

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _medseg_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medseg":
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "medseg":
                    yield alias.name, None


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_benchmark_imports_exist(script):
    found = list(_medseg_imports(script))
    missing = []
    for module, name in found:
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports names the library no longer has: {missing}"


def test_the_check_sees_a_missing_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def main():\n    from medseg.training.loop import _no_such_function\n")
    assert ("medseg.training.loop", "_no_such_function") in list(_medseg_imports(bad))
    assert not hasattr(importlib.import_module("medseg.training.loop"), "_no_such_function")


NUM = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def _row(out: str, start: str) -> list[float]:
    """The numbers of the first printed line that starts with ``start`` (after leading spaces)."""
    for line in out.splitlines():
        if line.strip().startswith(start):
            return [float(x) for x in re.findall(NUM, line[line.index(start) + len(start) :])]
    raise AssertionError(f"no row {start!r} in:\n{out[-3000:]}")


def _check_dicom_scan(out):
    assert re.search(r"method\s+files\s+seconds\s+files/s", out)
    n, seconds, rate = _row(out, "medseg scan (headers)")
    assert n == 40 and seconds > 0 and rate > 0
    assert float(re.search(rf"medseg scan vs pydicom with pixels: ({NUM})x", out).group(1)) > 0


def _check_window_layout(out):
    assert re.search(r"run\s+s/pass\s+x fp32", out)
    assert _row(out, "float32, channels-first")[1] == 1.0  # the reference against itself
    s_pass, ratio, _, diff, same = _row(out, "bf16 weights, channels-last, layout norms (fast)")
    assert s_pass > 0 and ratio > 0 and diff >= 0 and 0.5 <= same <= 1.0


def _check_train_step_layout(out):
    assert re.search(r"preset\s+model\s+channels_first_s\s+channels_last_s\s+ratio_last_first", out)
    for preset in ("none", "unet_plain_small"):
        first, last, ratio = _row(out, preset + " ")[:3]
        assert first > 0 and last > 0 and ratio > 0


def _check_stride_ceiling(out):
    assert re.search(r"mean\s+min\s+measured at the bench budget", out)
    assert _row(out, "1 ")[:2] == [1.0, 1.0]  # stride 1: the truth itself
    mean, low = _row(out, "8 ")[:2]
    assert 0 < low <= mean < 1


def _check_models(out):
    assert re.search(r"model\s+preset\s+lr\s+optim\s+dice\s+vs_best\s+steps", out)
    _, dice, vs_best, steps = _row(out, "unet config")[:4]
    assert 0 <= dice <= 1 and vs_best == 0 and steps == 1


def _check_startup(out):
    assert re.search(r"start-up \(own process each\)\s+seconds\s+x faster\s+peak RSS MB", out)
    help_row = _row(out, "medseg predict --help")  # seconds, (x faster: nan in the smoke run), peak MB
    assert help_row[0] > 0 and help_row[-1] > 0
    startup, load = (float(v) for v in re.search(rf"seconds_startup ({NUM}), seconds_model_load ({NUM})", out).groups())
    assert 0 < load <= startup
    seconds, peak, _, ratio, target = _row(out, "medseg predict, 48x48x32")
    assert seconds > 0 and peak > 0 and ratio > 0 and target == 2.0


def _check_training(out):
    assert "Dice on held-out phantoms:" in out
    assert re.search(r"trained 1 epochs, 1 iterations", out)
    assert 0 <= float(re.search(rf"mean Dice ({NUM})\s+\(target", out).group(1)) <= 1


def _check_monai_reference(out):
    assert re.search(r"recipe\s+trained\s+seconds\s+test Dice", out)
    for name in ("train_and_predict (CT)", "train_validate_predict"):
        count, seconds, dice = _row(out, name)
        assert count >= 0 and seconds > 0 and 0 <= dice <= 1


def _check_qc(out):
    assert re.search(r"group\s+n\s+failed\s+mean Dice\s+pass\s+review\s+fail", out)
    assert _row(out, "clean")[0] == 4  # four structures judged in the clean case
    assert re.search(r"ratio/target: failures flagged", out)


def _check_inference(out):
    assert re.search(r"variant\s+seconds\s+x faster\s+peak RSS MB\s+Dice vs ref", out)
    assert _row(out, "MONAI recipe (reference)")[1] == 1.0
    seconds, faster, _, dice_ref = _row(out, "medseg (defaults)")[:4]
    assert seconds > 0 and faster > 0 and 0 <= dice_ref <= 1


def _check_nnunet(out):
    assert re.search(r"run\s+seconds\s+x nnU-Net\s+CPU s", out)
    assert _row(out, "nnUNetPredictor (CPU, fp32)")[1] == 1.0
    for name in ("medseg faithful (default)", "medseg preset=fast"):
        seconds, ratio, _, _, _, agree = _row(out, name)[:6]
        assert seconds > 0 and ratio > 0 and 0.9 <= agree <= 1  # the same network on the same input


def _check_runner(out):
    assert re.search(r"engine\s+workers\s+cases\s+seconds\s+cases/s", out)
    workers, cases, seconds, rate = _row(out, "local")[:4]
    assert (workers, cases) == (1, 2) and seconds > 0 and rate > 0
    assert not re.search(r"^\s*ray\s", out, re.M)  # --no-ray: the local engine only


def _check_pacs(out):
    assert re.search(r"source\s+workers\s+studies\s+seconds\s+studies/min", out)
    for source in ("folder", "dicomweb"):
        workers, studies, seconds, per_min = _row(out, source)[:4]
        assert studies == 1 and seconds > 0 and per_min > 0


def _orthanc_missing():
    sys.path.insert(0, str(BENCH.parent / "tests"))
    from pacs.orthanc import missing_reason

    return missing_reason()


def _module_missing(*names):
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    return f"needs {', '.join(missing)}" if missing else None


#: script -> (extra arguments, check of its output, a reason to skip or None, marks). Smoke seconds measured on the
#: shared 2-core machine (load 4-9 while other sessions ran tests; CPU seconds in brackets): see each script's --smoke.
SMOKE = {
    "bench_dicom_scan.py": ([], _check_dicom_scan, lambda: None, []),
    "bench_window_layout.py": ([], _check_window_layout, lambda: _module_missing("dynamic_network_architectures"), []),
    "bench_train_step_layout.py": ([], _check_train_step_layout, lambda: None, []),
    "bench_stride_ceiling.py": ([], _check_stride_ceiling, lambda: None, [pytest.mark.slow]),
    "bench_models.py": ([], _check_models, lambda: None, [pytest.mark.slow]),
    "bench_training.py": ([], _check_training, lambda: None, [pytest.mark.slow]),
    "monai_reference_training.py": ([], _check_monai_reference, lambda: None, [pytest.mark.slow]),
    # bench_qc runs end to end (--quick, a stronger check) in tests/unit/reporting/test_quality.py: not twice.
    "bench_qc.py": ([], _check_qc, lambda: "run by tests/unit/reporting/test_quality.py (--quick)", [pytest.mark.slow]),
    "bench_inference.py": ([], _check_inference, lambda: None, [pytest.mark.slow]),
    "bench_startup.py": ([], _check_startup, lambda: None, [pytest.mark.slow]),
    "bench_nnunet.py": (
        [],
        _check_nnunet,
        lambda: _module_missing("nnunetv2", "dynamic_network_architectures"),
        [pytest.mark.slow, pytest.mark.needs_nnunet],
    ),
    # The Ray engine's start-up (15 s) is tested in tests/integration/test_run.py: the smoke run uses the local one.
    "bench_runner.py": (["--no-ray"], _check_runner, lambda: None, [pytest.mark.slow]),
    "bench_pacs.py": ([], _check_pacs, _orthanc_missing, [pytest.mark.slow, pytest.mark.needs_orthanc]),
}


def test_every_benchmark_has_a_smoke_run():
    assert sorted(SMOKE) == sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", [pytest.param(name, marks=marks) for name, (_, _, _, marks) in SMOKE.items()])
def test_benchmark_smoke_run(script, tmp_path):
    args, check, skip_reason, _ = SMOKE[script]
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if script != "bench_runner.py":  # Ray's sockets under pytest's long tmp_path overflow AF_UNIX's 107-byte limit
        env["TMPDIR"] = str(tmp_path)
    before = sorted((BENCH / "results").iterdir())
    r = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, f"{script} --smoke exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    check(r.stdout)
    assert sorted((BENCH / "results").iterdir()) == before, "a smoke run wrote into benchmarks/results"
