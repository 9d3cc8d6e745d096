"""Atomic file writes: write to a temporary sibling, then rename over the target.

A killed process leaves either the old file or the new one, never half of one.
Temporary names start with ``.tmp-medseg-`` (``TMP_PREFIX``) and keep the
target's extension, so writers that pick a format from the suffix (nibabel)
still work, and a cleanup can tell medseg's leftovers from anyone else's files.

This is the output boundary: an ``OSError`` while writing (read-only or full
file system, a file where a folder should be, a name too long) becomes an
``OutputError`` naming the target, i.e. one line and exit 2 in the CLI.

CSV cells are written for spreadsheets, which evaluate a cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula (case ids,
label names and DICOM descriptions come from outside). ``write_csv`` prefixes
such text cells and header names with a single quote (OWASP's advice), leaves
numbers and text that is a plain number (``-3.5``) alone, and doubles the quote
of a cell that already starts with quotes before such a character, so that
``unescape_cell`` gives back exactly what was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


#: A cell a spreadsheet would evaluate: starts with one of these (after any quotes we added).
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def escape_cell(value):
    """``value`` made inert for a spreadsheet: text starting with ``= + - @``, tab or CR gets a leading ``'``
    (as does text of quotes followed by one, so that escaping stays reversible); numbers, text that is a
    plain number (``"-3.5"``) and everything else are returned unchanged."""
    if isinstance(value, str) and _FORMULA.match(value) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def unescape_cell(value):
    """The inverse of ``escape_cell`` (for readers of CSVs that medseg wrote, such as manifests)."""
    if (
        isinstance(value, str)
        and value.startswith("'")
        and _FORMULA.match(value[1:])
        and not _PLAIN_NUMBER.fullmatch(value[1:])
    ):
        return value[1:]
    return value


def _is_text(column) -> bool:
    import pandas as pd

    return pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype)


def escape_frame(frame):
    """A copy of DataFrame ``frame`` with its text cells and column names passed through ``escape_cell``;
    numeric, boolean and date columns are untouched, so a float -3.5 stays a number."""
    import pandas as pd

    out = frame.copy(deep=False)  # copy-on-write (pandas 3): escaped columns are replaced, the caller's stay
    out.columns = [escape_cell(c) for c in out.columns]
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.astype(object)
        elif not _is_text(col) or all(escape_cell(v) is v for v in _distinct(col)):
            continue  # nothing to escape: judged once per distinct value (a cohort repeats each case id per row)
        out.isetitem(i, col.map(escape_cell))
    return out


def _distinct(column) -> list:
    """Each value of a pandas column once (all of them when some cannot be hashed)."""
    try:
        return list(column.unique())
    except TypeError:
        return list(column)


def unescape_frame(frame):
    """DataFrame ``frame`` (read with ``dtype=str``) with ``unescape_cell`` applied to its names and cells, in place."""
    frame.columns = [unescape_cell(c) for c in frame.columns]
    for i in range(frame.shape[1]):
        frame.isetitem(i, frame.iloc[:, i].map(unescape_cell))
    return frame


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically (NaN becomes an empty cell; formula-like text is escaped,
    see ``escape_cell``)."""
    import csv

    frame = escape_frame(frame)
    # The csv module quotes a cell holding "\n" but not one holding a lone "\r", which readers take for a line
    # break (one cell becomes two rows): then every text cell is quoted.
    text = [frame.iloc[:, i] for i in range(frame.shape[1]) if _is_text(frame.iloc[:, i])]
    lone_cr = any(
        isinstance(v, str) and "\r" in v for v in [*frame.columns, *(v for col in text for v in _distinct(col))]
    )
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC if lone_cr else csv.QUOTE_MINIMAL)
    return Path(path)
