"""The benchmark scripts are run by hand, not by CI, so a renamed function can break
them unnoticed. Check every ``from medseg... import name`` in them (also the ones
inside functions) against the library."""

import ast
import importlib
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
