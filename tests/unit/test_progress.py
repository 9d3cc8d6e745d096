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


def test_library_warnings_go_to_the_log_file_not_the_console(tmp_path):
    import logging
    import warnings

    from medseg.command_log import ConsoleFilter, command_log

    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.addFilter(ConsoleFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(False)  # an earlier in-process cli.main left it on, pointing at an older showwarning
    logging.captureWarnings(True)
    try:
        with command_log(tmp_path / "predict.log"):
            warnings.warn(
                "The value length (18) exceeds the maximum length of 16 allowed for VR DS", UserWarning, stacklevel=1
            )
            logging.getLogger("pydicom").warning("Invalid value for VR UI")
            logging.getLogger("medseg.inference.batch").warning("case x: something the user must act on")
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
    assert "VR DS" not in console.getvalue() and "VR UI" not in console.getvalue()
    assert "must act on" in console.getvalue()
    text = (tmp_path / "predict.log").read_text()
    assert "VR DS" in text and "VR UI" in text and "must act on" in text
