"""JSON for files users hand to medseg (model folders' ``plans.json``, ``dataset.json``, MONAI bundle configs):
plain data, bounded like ``medseg.safe_yaml``.

``json.loads`` recurses once per nesting level: ``[`` 200,000 times over (200 kB) ends in a ``RecursionError``
traceback, and nothing bounds a file's size. This reader refuses, before parsing, a file larger than
``MAX_BYTES``, nested deeper than ``MAX_DEPTH`` or holding more than ``MAX_NODES`` values (the YAML reader's
limits), and words every problem as one line naming the file: ``UnsafeJSONError`` for a limit, the caller's
error class (``error=``, default ``ConfigError``) for text that is not JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medseg.errors import ConfigError, MedsegError
from medseg.safe_yaml import MAX_BYTES, MAX_DEPTH, MAX_NODES, read_bounded

#: A JSON string (escapes included), matched without backtracking: replaced by ``""`` before the bracket count.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


class UnsafeJSONError(ConfigError):
    """The JSON exceeds a size, depth or value-count limit."""


def _check_shape(text: str, source) -> None:
    """Depth and value count of ``text``, from its brackets and separators outside strings (linear, no recursion)."""
    import numpy as np

    bare = _STRING.sub('""', text).encode("utf-8", "replace")
    b = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    depth = int(np.cumsum(step).max(initial=0))
    if depth > MAX_DEPTH:
        raise UnsafeJSONError(f"JSON is nested more than {MAX_DEPTH} levels deep", path=source)
    nodes = int(np.count_nonzero(np.isin(b, (ord(","), ord(":"))))) + int(np.count_nonzero(step > 0)) + 1
    if nodes > MAX_NODES:
        raise UnsafeJSONError(f"JSON has more than {MAX_NODES} values", path=source)


def loads(text: str | bytes, *, source: str | Path | None = None, error: type[MedsegError] = ConfigError):
    """Parse JSON text within the limits; ``source`` names the file in errors."""
    if len(text) > MAX_BYTES:
        raise UnsafeJSONError(f"JSON is larger than {MAX_BYTES // 2**20} MiB", path=source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})", path=source) from None
    _check_shape(text, source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})", path=source) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"not valid JSON ({str(exc).splitlines()[0][:160]})", path=source) from None


def load_file(path: str | Path, *, error: type[MedsegError] = ConfigError):
    """Read and parse a JSON file, refusing one larger than ``MAX_BYTES`` before reading it."""
    data = read_bounded(path, kind="JSON", too_large=UnsafeJSONError, error=error)
    return loads(data, source=Path(path), error=error)
