"""Case ids as file names, and outputs that must not land on inputs.

Every command turns a case into files through these: ``check_case_id`` (bounded length, no control
characters, no path separators), ``safe_name`` (an injective case id -> file name map) and
``refuse_overwriting_inputs`` (checked before anything is written).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from medseg.errors import InputError, OutputError

#: Longest case id: file names stay below NAME_MAX (255 bytes) with the hash, suffixes and temp prefix.
MAX_CASE_ID = 128
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_.-]")
_HASHED = re.compile(r".*-[0-9a-f]{10}")  # what safe_name appends; such ids are hashed too, so no two ids meet


def check_case_id(case_id: str, where: object = None) -> str:
    """Refuse an id that cannot name files or would forge a log line; returns it unchanged."""
    cid = str(case_id)
    shown = repr(cid if len(cid) <= 60 else cid[:60] + "...")
    if not cid.strip():
        raise InputError("empty case id", path=where)
    if len(cid) > MAX_CASE_ID:
        raise InputError(
            f"case id {shown} is {len(cid)} characters long; at most {MAX_CASE_ID} (rename the input)", path=where
        )
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 or ch in "\u2028\u2029" for ch in cid):
        raise InputError(
            f"case id {shown} contains control characters (newline, tab, ...); rename the input", path=where
        )
    if "/" in cid or "\\" in cid or cid in (".", ".."):
        raise InputError(f"case id {shown} cannot name files; use letters, digits, '-', '_' and '.'", path=where)
    return cid


def safe_name(case_id: str) -> str:
    """The file name for a case id: the id itself when it is made of ``A-Za-z0-9_.-`` (not starting with '.'),
    else the id with other characters replaced by '_' plus '-' and 10 hex digits of the id's sha256.

    Injective: two different ids never share a name (``"a b"`` -> ``"a_b-<hash>"``, ``"a_b"`` -> ``"a_b"``); an
    id that already ends like a hashed name is hashed as well, so no plain id can impersonate another's.
    """
    cid = str(case_id)
    if _SAFE.fullmatch(cid) and not _HASHED.fullmatch(cid):
        return cid
    digest = hashlib.sha256(cid.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    stem = _UNSAFE_CHAR.sub("_", cid)[:MAX_CASE_ID]
    return f"{'_' + stem[1:] if stem.startswith('.') else stem}-{digest}"


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def refuse_overwriting_inputs(targets: Iterable, inputs: Iterable) -> None:
    """Raise ``OutputError`` when an output path is an input file or lies inside an input folder.

    Compared by resolved path and, for existing files, by ``os.path.samefile``
    (hard links, bind mounts); checked before anything is written.
    """
    ins = [Path(p) for p in inputs if p and os.path.lexists(p)]
    in_files = [(p, _real(p)) for p in ins if not p.is_dir()]
    in_dirs = [(p, _real(p)) for p in ins if p.is_dir()]
    for t in targets:
        t = Path(t)
        rt = _real(t)
        for p, rp in in_files:
            if rt == rp or (t.exists() and _samefile(t, p)):
                raise OutputError(f"would overwrite input {p}; choose another --out", path=t)
        for p, rp in in_dirs:
            if rt == rp or rt.startswith(rp.rstrip(os.sep) + os.sep):
                raise OutputError(f"would write inside input folder {p}; choose another --out", path=t)


def _samefile(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
