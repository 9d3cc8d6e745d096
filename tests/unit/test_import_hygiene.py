"""Dependencies are visible: medseg's own modules are imported at the top of a file (issue 32).

Imports inside functions hid four import circles until 0.2.0 (69% of own imports sat in functions). This
test counts them with the ast: at most ``MAX_SHARE`` of all own-package imports may sit inside a function,
and each of those needs a comment on its line saying why (``# lazy: ...``). The layering the top-level
imports must respect is written in ``.importlinter`` (``make lint``); there are no circles to dodge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medseg

PACKAGE = Path(medseg.__file__).parent
#: At most this share of medseg's own imports may sit inside functions (0 of 497 on 2026-12-08).
MAX_SHARE = 0.05


def count_imports(root: Path = PACKAGE) -> tuple[int, int, list[str]]:
    """``(inside functions, at module level, where the inside ones are)`` for medseg's own imports."""
    inside, top, where = 0, 0, []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        tree, lines = ast.parse(text), text.splitlines()

        def visit(node, depth, lines=lines, path=path):
            nonlocal inside, top
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import):
                    own = any(a.name.split(".")[0] == "medseg" for a in child.names)
                elif isinstance(child, ast.ImportFrom):
                    own = child.level > 0 or (child.module or "").split(".")[0] == "medseg"
                else:
                    own = False
                if own:
                    if depth:
                        inside += 1
                        line = lines[child.lineno - 1]
                        why = "" if "#" in line else "  (no comment saying why)"
                        where.append(f"{path.relative_to(root.parent)}:{child.lineno}{why}")
                    else:
                        top += 1
                visit(child, depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(tree, 0)
    return inside, top, where


def test_own_imports_sit_at_the_top_of_the_file():
    inside, top, where = count_imports()
    assert inside <= MAX_SHARE * (inside + top), (
        f"{inside} of {inside + top} imports of medseg's own modules are inside functions (at most "
        f"{MAX_SHARE:.0%}): import at the top of the file; {where}"
    )
    unexplained = [w for w in where if w.endswith("(no comment saying why)")]
    assert not unexplained, f"imports inside functions need a comment saying why: {unexplained}"


def test_the_count_sees_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "medseg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "from medseg import errors\n\ndef f():\n    from medseg.io import paths\n    import json\n"
        "\ndef g():\n    from medseg import api  # lazy: a reason\n"
    )
    inside, top, where = count_imports(pkg)
    assert (inside, top) == (2, 1) and where == ["medseg/a.py:4  (no comment saying why)", "medseg/a.py:8"]


def import_circles(package: str = "medseg") -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan on grimp's graph).

    Function-level imports count too: a circle hidden inside a function is still a circle.
    """
    import grimp  # dev dependency (it comes with import-linter)

    graph = grimp.build_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.find_modules_directly_imported_by(module)):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return circles


def test_no_import_circle_between_medseg_modules():
    assert import_circles() == []


def test_the_circle_check_sees_a_circle(tmp_path, monkeypatch):
    pkg = tmp_path / "circ_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ_pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from circ_pkg import a  # lazy: hides the circle\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_circles("circ_pkg") == [["circ_pkg.a", "circ_pkg.b"]]
