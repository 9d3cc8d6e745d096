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


class _QuietFileHandler(logging.FileHandler):
    def handleError(self, record) -> None:  # disk full: drop the line
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
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        with contextlib.suppress(OSError):
            handler.close()
