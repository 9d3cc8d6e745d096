"""``medseg predict`` loads what a medseg checkpoint needs and no other verb's stack (issue 37, start-up).

``medseg.api`` is one module per verb behind a name table (``medseg.api.NAMES``); a command imports ``medseg.api``
only, and the verb's module loads when the command runs. These tests hold that: the table matches the modules,
``--help`` loads no torch, and a real prediction (in its own process) imports nothing of training, the runner,
PACS, Ray or nnU-Net, and records its start-up time in the sidecar.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import medseg
import medseg.api

API = Path(medseg.__file__).parent / "api"
TESTS = Path(__file__).resolve().parents[2]
#: Modules a prediction with a medseg checkpoint must not import (each belongs to another verb or model format).
NOT_ON_THE_PREDICT_PATH = (
    "ray",
    "pynetdicom",
    "nnunetv2",
    "dynamic_network_architectures",
    "medseg.training",
    "medseg.runner",
    "medseg.pacs",
    "medseg.service",
    "medseg.api.training",
    "medseg.api.pipelines",
    "medseg.api.reporting",
    "medseg.api.demos",
)


def _defined(path: Path) -> set[str]:
    """Names bound at the top of a module: functions, classes, assignments and imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names |= {t.id for t in ast.walk(target) if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_the_name_table_names_every_public_function_of_the_verb_modules_and_only_those():
    modules = {p.stem for p in API.glob("*.py")} - {"__init__"}
    assert set(medseg.api.NAMES.values()) == modules
    for name, module in medseg.api.NAMES.items():
        assert name in _defined(API / f"{module}.py"), f"medseg.api.NAMES: {name} is not in api/{module}.py"
    for module in modules:  # a public function written in a verb module and not listed would be unreachable
        tree = ast.parse((API / f"{module}.py").read_text())
        public = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
        assert public <= set(medseg.api.NAMES), f"api/{module}.py: {sorted(public - set(medseg.api.NAMES))} unlisted"


def test_an_unknown_api_name_is_an_attribute_error():
    try:
        medseg.api.no_such_function  # noqa: B018
    except AttributeError as exc:
        assert "no_such_function" in str(exc)
    else:
        raise AssertionError("medseg.api.no_such_function resolved")


def test_a_command_module_and_the_api_package_load_no_torch():
    code = (
        "import sys, medseg.api, medseg.cli\n"
        "from medseg.commands import predict, run, train, report, models\n"
        "from medseg.cli import build_parser\n"
        "build_parser(['predict', 'run'])\n"
        "loaded = [m for m in ('torch', 'monai', 'medseg.inference.batch') if m in sys.modules]\n"
        "loaded += [m for m in sys.modules if m.startswith('medseg.api.')]\n"
        "assert not loaded, loaded\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_predict_help_takes_under_a_second():
    """Best of three (the machine is shared): about 0.2 s when idle; it took 5.8 s when the API imported every
    verb's stack (torch, MONAI, training, the runner...)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "medseg", "predict", "--help"], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert res.returncode == 0 and "--model" in res.stdout, res.stderr
    assert min(times) < 1.0, times


@pytest.mark.slow  # one process that imports torch and MONAI: about 8 s on an idle 2-core machine, 37 s loaded
def test_a_prediction_imports_only_its_own_stack_and_records_its_start_up(tmp_path):
    """A real ``medseg predict`` (the intensity oracle on a label-coded phantom) in its own process."""
    from helpers import ORACLE_ON_4MM, label_coded, oracle_checkpoint

    from medseg.data.phantoms import make_phantom
    from medseg.io.readers import write_volume

    model = oracle_checkpoint(tmp_path / "oracle.pt", **ORACLE_ON_4MM)
    case = make_phantom(3, spacing=(3.0, 3.0, 4.0))
    image = write_volume(label_coded(case), tmp_path / "case.nii.gz")
    code = (
        f"import sys, json; sys.path.insert(0, {str(TESTS)!r})\n"
        "from helpers import register_oracle\n"
        "register_oracle()\n"
        "from medseg.cli import main\n"
        f"rc = main(['predict', '--model', {str(model)!r}, {str(image)!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'--no-progress'])\n"
        f"print(json.dumps({{'rc': rc, 'loaded': [m for m in {NOT_ON_THE_PREDICT_PATH!r} if m in sys.modules]}}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "loaded": []}, out
    sidecar = json.loads((tmp_path / "out" / "case.json").read_text())
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    # process start until the model is loaded: at least the model's loading, and less than the whole process
    assert 0 < sidecar["seconds_model_load"] <= sidecar["seconds_startup"] < 300
    assert run_info["seconds_startup"] == sidecar["seconds_startup"]
