"""Atomic file writes: write to a temporary sibling, then rename over the target.

A killed process leaves either the old file or the new one, never half of one.
Temporary names start with ``.tmp-medseg-`` (``TMP_PREFIX``) and keep the
target's extension, so writers that pick a format from the suffix (nibabel)
still work, and a cleanup can tell medseg's leftovers from anyone else's files.

This is the output boundary: an ``OSError`` while writing (read-only or full
file system, a file where a folder should be, a name too long) becomes an
``OutputError`` naming the target, i.e. one line and exit 2 in the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import OutputError

TMP_PREFIX = ".tmp-medseg-"


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and parents); an ``OSError`` becomes an ``OutputError`` naming it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError("exists and is not a folder; name a folder for the outputs", path=p, errno=20)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os(exc, p, "cannot create folder") from None
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    target = Path(path)
    ensure_dir(target.parent)
    tmp = target.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError.from_os(exc, target) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically (NaN becomes an empty cell)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)
