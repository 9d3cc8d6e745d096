"""Importing medseg puts PyTorch's large CPU tensors on transparent huge pages (``THP_MEM_ALLOC_ENABLE``), and a
value the user set is kept. Each check runs in a fresh interpreter: the allocator reads the variable once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = r"""
import json, os, sys
import medseg  # before torch, as medseg's own entry points do
import torch

def huge_kb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0

before = huge_kb()
x = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB, every page touched
print(json.dumps({"env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "huge_kb": huge_kb() - before}))
"""


def _probe(value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = value
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _thp_mode() -> str | None:
    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not p.is_file() or not Path("/proc/self/smaps_rollup").is_file():
        return None
    text = p.read_text()
    return text[text.index("[") + 1 : text.index("]")]


def test_import_sets_the_default_and_keeps_the_users_value():
    assert _probe(None)["env"] == "1"
    assert _probe("0")["env"] == "0"


@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"), reason="transparent huge pages are off on this kernel")
def test_large_tensors_land_on_huge_pages():
    on = _probe(None)
    assert on["huge_kb"] >= 8 << 10, on  # at least 8 MB of the 64 MB tensor on 2 MB pages
    if _thp_mode() == "madvise":  # only the allocator's madvise asks for them: off means none
        off = _probe("0")
        assert off["huge_kb"] < 8 << 10, off
