"""The CLI is a thin shell: each command module parses arguments and calls ``medseg.api``."""

import ast
from pathlib import Path

import medseg
from medseg.commands import MODULES

ALLOWED = {"medseg", "medseg.api", "medseg.errors", "argparse", "sys", "__future__"}
PACKAGE = Path(medseg.__file__).parent


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            found |= {f"{mod}.{a.name}" if mod == "medseg" else mod for a in node.names}
    return found


def test_every_command_module_imports_only_the_api_and_errors():
    bad = {}
    for name in MODULES:
        extra = _imports(PACKAGE / "commands" / f"{name}.py") - ALLOWED
        if extra:
            bad[name] = sorted(extra)
    assert not bad, f"command modules importing more than medseg.api/medseg.errors: {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def _run(args):\n    from medseg.runner import run_pipeline\n    from medseg import api\n")
    assert _imports(f) - ALLOWED == {"medseg.runner"}


def test_no_private_name_is_imported_across_packages():
    """``from medseg.x import _private`` only within the same subpackage."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        here = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:2])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medseg"):
                there = ".".join(node.module.split(".")[:2])
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and there != here:
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}: {node.module}.{a.name}")
    assert not offenders, offenders
