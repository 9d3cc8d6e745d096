"""The architecture holds: the contracts of ``.importlinter`` (layers cli > commands > api > ..., the leaves, commands
only import the api) pass, and what the contracts cannot say is checked here: a command module imports no medseg module
but ``medseg.api`` and ``medseg.errors`` (the contract forbids the layers below the api, not the leaves), and no private
name is imported across packages."""

import ast
import subprocess
import sys
from pathlib import Path

import medseg

# medseg.commands: the shared argparse helpers in commands/__init__.py (which is held to the same rule).
ALLOWED = {"medseg", "medseg.api", "medseg.errors", "medseg.commands", "argparse", "sys", "__future__"}
PACKAGE = Path(medseg.__file__).parent
ROOT = PACKAGE.parent


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            found |= {f"{mod}.{a.name}" if mod == "medseg" else mod for a in node.names}
    return found


def test_the_import_contracts_hold():
    """``lint-imports`` (import-linter, the contracts in ``.importlinter``) passes: run in a fresh interpreter, as
    ``make lint``."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(ROOT / '.importlinter')!r}, no_cache=True, no_logo=True))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]


def test_every_command_module_imports_only_the_api_and_errors():
    bad = {}
    for path in sorted((PACKAGE / "commands").glob("*.py")):
        extra = _imports(path) - ALLOWED
        if extra:
            bad[path.stem] = sorted(extra)
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
