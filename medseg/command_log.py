"""A log file beside a command's outputs (``predict.log``, ``train.log``), as ``medseg run`` keeps ``run.log``.

Every medseg message at INFO and above is appended with a time stamp, whatever the console shows; a line
that cannot be written (disk full) is dropped, never raised. The console keeps its own level (the CLI sets
it on its handler), so the file can hold the per-case lines the terminal does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

#: Third-party loggers whose warnings belong in the log file, not on the console (``logging.captureWarnings``
#: sends ``warnings.warn`` to ``py.warnings``): a malformed header value pydicom repairs is not the user's to act on.
LIBRARY_LOGGERS = ("py.warnings", "pydicom", "dicomweb_client", "pynetdicom", "highdicom", "monai")


class ConsoleFilter(logging.Filter):
    """Keeps the libraries' warnings off the console (they go to the log files); medseg's own lines pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(LIBRARY_LOGGERS) or record.levelno >= logging.ERROR


class _QuietFileHandler(logging.FileHandler):
    def handleError(self, record) -> None:  # noqa: N802 (logging.Handler's API name); disk full: drop the line
        pass


@contextlib.contextmanager
def command_log(path: str | os.PathLike):
    """Append medseg's INFO+ messages to ``path`` while the block runs (no file when it cannot be opened)."""
    logger = logging.getLogger("medseg")
    try:
        handler = _QuietFileHandler(Path(path), encoding="utf-8")
    except OSError:
        yield None
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    level = logger.level
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    libraries = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    disabled = {lib.name: lib.disabled for lib in libraries}  # a library's logging.config call may have disabled them
    for lib in [logger, *libraries]:
        lib.addHandler(handler)
        lib.disabled = False
    try:
        yield handler
    finally:
        for lib in [logger, *libraries]:
            lib.removeHandler(handler)
            lib.disabled = disabled.get(lib.name, lib.disabled)
        logger.setLevel(level)
        with contextlib.suppress(OSError):
            handler.close()
