"""The run directory: what a run was, what each case is doing, and its outputs.

```
RUN_DIR/
  .medseg-run           marker, written first when medseg creates the folder: only such a folder is used as a run
                        directory (a non-empty folder without it is refused, so nothing of the user's is touched)
  .medseg-lock          flock'ed while an invocation runs (pid, host, start time): a second run is refused
  pipeline.yaml         the resolved pipeline (after --set, paths made absolute)
  run.json              versions, model checksum, config hash, engine, every invocation with its counts
  inputs.csv            case_id, kind, source, fingerprint (sizes + mtimes; content hash is in the state record)
  state/<name>.json     one record per case that has started: pending | running | done | failed, error line,
                        seconds, peak memory, input_sha256, config_sha256, outputs (paths relative to RUN_DIR);
                        a case without one has not started (status.csv lists it as pending)
  cases/<name>/         image.nii.gz (+ .json), labels.nii.gz (+ .json), seg.dcm, volumes.json, metrics.json
  qc/<name>.png         montages (<name>: medseg.io.paths.safe_name of the case id)
  volumes.csv, volumes_wide.csv, summary.csv, report.html, metrics.csv   cohort outputs (rebuilt at the end)
  status.csv            one row per case from the state records
  failures.csv          case_id, stage, error (header only when nothing failed)
  run.log               what happened, per case
```

Every file is written atomically (temporary sibling + rename); a case's state
record turns ``done`` only after all its outputs exist, and cohort outputs are
removed when an invocation starts and written when it ends, so a killed run
never leaves a file that reads as complete but is not. Only medseg's own
temporaries (``.tmp-medseg-*``) inside a folder carrying the marker are ever
removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import medseg
from medseg.errors import OutputError
from medseg.io.atomic import TMP_PREFIX, ensure_dir, write_csv, write_json
from medseg.io.paths import safe_name
from medseg.provenance import peak_rss_mb, reset_peak_rss  # noqa: F401  (re-exported for the runner)

STATES = ("pending", "running", "done", "failed")
COHORT_FILES = (
    "volumes.csv",
    "volumes_wide.csv",
    "summary.csv",
    "report.html",
    "metrics.csv",
    "status.csv",
    "failures.csv",
)
RUN_LOG = "medseg.run"  # the run.log logger (does not propagate to the console)
MARKER = ".medseg-run"
LOCK = ".medseg-lock"


class _LogFileHandler(logging.FileHandler):
    """run.log: a write that fails (disk full) drops the line instead of printing a traceback per line."""

    def handleError(self, record) -> None:  # noqa: N802 (overrides logging.Handler's method)
        self.failed = True

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().flush()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.state_dir = self.root / "state"
        self.cases_dir = self.root / "cases"
        self.qc_dir = self.root / "qc"
        self.log_path = self.root / "run.log"

    def case_dir(self, case_id: str) -> Path:
        return self.cases_dir / safe_name(case_id)

    def rel(self, path: str | os.PathLike) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    # -- state records ------------------------------------------------------------------
    def state_path(self, case_id: str) -> Path:
        return self.state_dir / f"{safe_name(case_id)}.json"

    def qc_path(self, case_id: str) -> Path:
        return self.qc_dir / f"{safe_name(case_id)}.png"

    def read_state(self, case_id: str) -> dict | None:
        try:
            return json.loads(self.state_path(case_id).read_text())
        except (OSError, ValueError):
            return None

    def done_json(self, cases, key: str, ids: list | None = None) -> Iterator:
        """The JSON output ``key`` (``volumes``, ``metrics``: a list of rows) of each case that is done and has one,
        in the order of ``cases``, read one case at a time (a cohort of 1,000,000 rows is never in memory as
        dicts at once); ``ids`` (a list) receives the case ids of what was yielded."""
        for c in cases:
            rec = self.read_state(c.case_id) or {}
            rel = (rec.get("outputs") or {}).get(key)
            if rec.get("status") == "done" and rel:
                rows = json.loads((self.root / rel).read_text())
                if ids is not None:
                    ids.append(c.case_id)
                yield rows

    def write_state(self, case_id: str, record: dict) -> None:
        write_json(self.state_path(case_id), {**record, "case_id": case_id, "updated": now()})

    def is_current(self, case, config_sha256: str, *, record: dict | None = None) -> bool:
        """A case finished earlier with the same inputs (fingerprint) and config, its outputs all present
        (``record``: its state record, when already read)."""
        rec = record if record is not None else self.read_state(case.case_id)
        if not rec or rec.get("status") != "done":
            return False
        if rec.get("fingerprint") != case.fingerprint or rec.get("config_sha256") != config_sha256:
            return False
        return all((self.root / rel).is_file() for rel in (rec.get("outputs") or {}).values())

    # -- ownership: marker and lock -----------------------------------------------------
    def is_run_dir(self) -> bool:
        return (self.root / MARKER).is_file()

    def check_usable(self) -> None:
        """Raise ``OutputError`` unless ``root`` is absent, an empty folder or a run directory (marker)."""
        r = self.root
        if not r.exists():
            return
        if not r.is_dir():
            raise OutputError("--out names an existing file; give a new or empty folder, or a run directory", path=r)
        if self.is_run_dir():
            return
        try:  # empty, or only what a run that is creating it right now has written (its marker's temporary)
            empty = all(e.name.startswith((TMP_PREFIX, ".medseg-")) for e in os.scandir(r))
        except OSError as exc:
            raise OutputError.from_os(exc, r, "cannot list") from None
        if not empty:
            hint = (
                f"; if it is a run of an older medseg, mark it with: touch {r / MARKER}"
                if (r / "run.json").is_file() and (r / "state").is_dir()
                else ""
            )
            raise OutputError(
                f"not a medseg run directory (no {MARKER}) and not empty; medseg will not write into "
                f"or clean up a foreign folder: give a new or empty folder{hint}",
                path=r,
            )

    def adopt(self) -> None:
        """Create the folder with its marker (written first), or accept a run directory; refuse anything else."""
        self.check_usable()
        ensure_dir(self.root)
        if not self.is_run_dir():
            self.check_usable()  # still empty: nobody else adopted it meanwhile
            write_json(
                self.root / MARKER, {"medseg_run_directory": 1, "created": now(), "medseg_version": medseg.__version__}
            )

    def claim(self) -> None:
        """Create the folder (marker first) or adopt a run directory, and take its lock for this invocation.

        The lock is ``flock`` on ``.medseg-lock``: held until ``release`` or
        the process's death (the kernel drops it when a killed run's file
        descriptors close), so a stale lock never blocks; a live one is refused
        with the holder's pid, host and start time.
        """
        self.adopt()
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError.from_os(exc, path, "cannot create the run lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
                holder = f" (pid {info.get('pid')} on {info.get('host')}, since {info.get('started')})"
            os.close(fd)
            raise OutputError(
                f"another medseg run is using this run directory{holder}; wait for it to finish "
                "or choose another --out",
                path=self.root,
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now()}).encode(), 0)
        except OSError:
            pass  # the lock is held; its description is a courtesy
        self._lock_fd = fd

    def release(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            self._lock_fd = None
            with contextlib.suppress(OSError):
                os.close(fd)  # drops the flock

    # -- start of an invocation ---------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout; remove medseg's temporaries of a killed run and the cohort outputs (rebuilt at the end).

        Only in a run directory (marker present; a new or empty folder gets
        it, anything else is refused), only files named ``.tmp-medseg-*``,
        never through a symbolic link.
        """
        self.adopt()
        for d in (self.root, self.state_dir, self.cases_dir):
            ensure_dir(d)
        self.discard_temporaries()
        for name in COHORT_FILES:
            f = self.root / name
            if f.is_file() and not f.is_symlink():
                try:
                    f.unlink()
                except OSError as exc:
                    raise OutputError.from_os(exc, f, "cannot remove the previous cohort output") from None

    def discard_temporaries(self, *, recursive: bool = True) -> None:
        """Remove the temporaries (``.tmp-medseg-*`` files) that writes cut short by a kill left under this run
        directory (``recursive=False``: in its top folder only); never through a symbolic link. Call it only while
        holding the lock, before writing."""
        for root, dirs, files in os.walk(self.root):  # does not follow links
            if not recursive:
                dirs.clear()
            for name in files:
                f = Path(root) / name
                if name.startswith(TMP_PREFIX) and not f.is_symlink():
                    with contextlib.suppress(OSError):
                        f.unlink()

    def open_log(self) -> logging.Handler:
        """run.log gets the runner's per-case lines and every medseg warning; returns the handler to close."""
        try:
            handler = _LogFileHandler(self.log_path, encoding="utf-8")
            warn = _LogFileHandler(self.log_path, encoding="utf-8")
        except OSError as exc:
            raise OutputError.from_os(exc, self.log_path) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        run_log = logging.getLogger(RUN_LOG)
        run_log.setLevel(logging.INFO)
        run_log.propagate = False
        run_log.addHandler(handler)
        warn.setLevel(logging.WARNING)
        warn.setFormatter(handler.formatter)
        logging.getLogger("medseg").addHandler(warn)
        handler._medseg_warn = warn  # closed together
        return handler

    @staticmethod
    def close_log(handler: logging.Handler) -> None:
        logging.getLogger(RUN_LOG).removeHandler(handler)
        warn = getattr(handler, "_medseg_warn", None)
        if warn is not None:
            logging.getLogger("medseg").removeHandler(warn)
            with contextlib.suppress(OSError):
                warn.close()
        with contextlib.suppress(OSError):
            handler.close()

    # -- end of an invocation -----------------------------------------------------------
    def write_tables(self, cases) -> dict:
        """``status.csv`` and ``failures.csv`` from the state records; returns counts by status."""
        import pandas as pd

        rows, fails = [], []
        for c in cases:
            rec = self.read_state(c.case_id) or {"status": "pending"}
            rows.append(
                {
                    "case_id": c.case_id,
                    "status": rec.get("status"),
                    "stage": rec.get("stage", ""),
                    "error": rec.get("error", ""),
                    "seconds": rec.get("seconds"),
                    "peak_rss_mb": rec.get("peak_rss_mb"),
                    "attempt": rec.get("attempt"),
                    "source": c.source,
                }
            )
            if rec.get("status") == "failed":
                fails.append(
                    {
                        "case_id": c.case_id,
                        "stage": rec.get("stage", ""),
                        "error": rec.get("error", ""),
                        "source": c.source,
                    }
                )
        write_csv(
            self.root / "status.csv",
            pd.DataFrame(
                rows, columns=["case_id", "status", "stage", "error", "seconds", "peak_rss_mb", "attempt", "source"]
            ),
        )
        write_csv(self.root / "failures.csv", pd.DataFrame(fails, columns=["case_id", "stage", "error", "source"]))
        counts = {s: 0 for s in STATES}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts
