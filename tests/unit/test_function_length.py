"""No function in medseg/ is longer than 80 lines unless a comment at its ``def`` says why (issue 32).

Long functions were where behaviour hid (the 240-line training loop, the 167-line run_pipeline). A function
may pass the limit when splitting it would scatter one thing that reads best whole (an argparse option
list, say): the line of its ``def`` (or the line above) then carries ``# long: <why>``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medseg

PACKAGE = Path(medseg.__file__).parent
MAX_LINES = 80


def long_functions(root: Path = PACKAGE) -> list[str]:
    """``path:line name (N lines)`` of each function over ``MAX_LINES`` without a ``# long:`` reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            near = " ".join(lines[max(first - 2, 0) : node.lineno])
            if length > MAX_LINES and "# long:" not in near:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_80_lines_without_a_reason():
    found = long_functions()
    assert not found, f"functions over {MAX_LINES} lines (split them, or say why with '# long:'): {found}"


def test_the_check_sees_a_long_function_and_accepts_a_reason(tmp_path):
    pkg = tmp_path / "medseg"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(85))
    (pkg / "a.py").write_text(f"def long_one():\n{body}\n\n# long: one option list\ndef explained():\n{body}")
    assert long_functions(pkg) == ["medseg/a.py:1 long_one (86 lines)"]
