"""Every medseg name and path that README.md, CONTRIBUTING.md and docs/ mention exists (issue 32).

A module moved or a function renamed leaves the documentation pointing at nothing; this test reads the
documents, resolves each dotted name (``medseg.inference.load.load_predictor``) by importing its module and
getting the attribute, and each repository path (``medseg/io/objects/seg.py``, ``tests/fuzz/``) on disk.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"(?<![\w./-])(medseg(?:\.[A-Za-z_]\w*)+)")
PATHS = re.compile(r"(?<![\w./-])((?:medseg|tests|benchmarks|pipelines|configs|docs)/[\w./*-]*[\w/*])")
#: Dotted names that are entry-point groups, not modules (third-party packages register plugins under them).
ENTRY_POINT_GROUPS = {"medseg.models", "medseg.intensity", "medseg.losses", "medseg.stages"}
#: Paths the docs mention that are not this repository's: inside a MONAI bundle, or a user's example file.
NOT_OURS = {"configs/inference.json", "configs/metadata.json", "configs/training/x.yaml"}


def resolve(name: str) -> bool:
    """Whether ``name`` is an importable module or an attribute chain of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def mentioned(doc: Path) -> tuple[set[str], set[str]]:
    text = doc.read_text()
    names = {m.rstrip(".") for m in DOTTED.findall(text)}
    names = {n for n in names if not n.endswith(("py", "yaml", "csv", "json", "md"))}  # file names, not modules
    paths = {m for m in PATHS.findall(text) if "*" not in m and "<" not in m}
    return names, paths


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_medseg_name_and_path_in_the_docs_exists(doc):
    names, paths = mentioned(doc)
    missing = sorted(n for n in names - ENTRY_POINT_GROUPS if not resolve(n))
    missing += sorted(p for p in paths - NOT_OURS if not (ROOT / p).exists())
    assert not missing, f"{doc.name} mentions names or paths that do not exist: {missing}"


def test_the_check_sees_a_missing_name_and_path(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "See `medseg.io.no_such_module`, `medseg.labels.NoSuchClass` and medseg/io/nowhere.py; "
        "medseg.labels.LabelTable is real."
    )
    names, paths = mentioned(doc)
    assert {n for n in names if not resolve(n)} == {"medseg.io.no_such_module", "medseg.labels.NoSuchClass"}
    assert paths == {"medseg/io/nowhere.py"} and resolve("medseg.labels.LabelTable")
