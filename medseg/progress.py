"""Progress bars that suit where the output goes.

On a terminal: tqdm's bar. Anywhere else (``medseg demo > log``, a batch system's output file, a CI log):
a plain line now and then (every ``MEDSEG_PROGRESS_SECONDS``, default 30 s, and at the end) instead of
hundreds of carriage-return redraws a minute that fill the file.
"""

from __future__ import annotations

import os
import re
import sys

from tqdm import tqdm as _plain_tqdm
from tqdm.auto import tqdm as _auto_tqdm

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A file-like wrapper: each tqdm redraw becomes one complete line (no carriage returns, no cursor moves)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = _ANSI.sub("", text).replace("\r", "")
        if text.strip():
            self.stream.write(text.rstrip("\n") + "\n")

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def _interval() -> float:
    try:
        return max(1.0, float(os.environ.get("MEDSEG_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal; elsewhere a bar that prints a plain line every 30 s."""
    stream = kwargs.pop("file", None) or sys.stderr
    if kwargs.get("disable") or getattr(stream, "isatty", lambda: False)():
        return _auto_tqdm(iterable, file=stream, **kwargs)
    interval = _interval()
    kwargs.setdefault("mininterval", interval)
    kwargs.setdefault("maxinterval", interval)
    kwargs.setdefault("miniters", 0)
    return _plain_tqdm(iterable, file=_Lines(stream), ascii=True, dynamic_ncols=False, ncols=100, **kwargs)
