"""Progress written to a file or a batch system's output: plain lines now and then, no carriage returns."""

from __future__ import annotations

import io
import time

from medseg.progress import progress_bar


def test_progress_to_a_file_is_a_plain_line_now_and_then(monkeypatch):
    monkeypatch.setenv("MEDSEG_PROGRESS_SECONDS", "1")
    out = io.StringIO()  # not a terminal
    for _ in progress_bar(range(300), desc="predict", unit="case", file=out):
        time.sleep(0.01)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= 8, lines  # about 3 s of work at one line a second, not one redraw per case
    assert lines[-1].startswith("predict: 100%") and "300/300" in lines[-1]


def test_progress_on_a_terminal_is_tqdms_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    for _ in progress_bar(range(3), desc="x", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()
