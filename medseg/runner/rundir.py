"""The run directory: what a run was, what each case is doing, and its outputs.

```
RUN_DIR/
  pipeline.yaml         the resolved pipeline (after --set, paths made absolute)
  run.json              versions, model checksum, config hash, engine, every invocation with its counts
  inputs.csv            case_id, kind, source, fingerprint (sizes + mtimes; content hash is in the state record)
  state/<case>.json     one record per case: pending | running | done | failed, error line, seconds, peak memory,
                        input_sha256, config_sha256, outputs (paths relative to RUN_DIR)
  cases/<case>/         image.nii.gz (+ .json), labels.nii.gz (+ .json), seg.dcm, volumes.json, metrics.json
  qc/<case>.png         montages
  volumes.csv, volumes_wide.csv, summary.csv, report.html, metrics.csv   cohort outputs (rebuilt at the end)
  status.csv            one row per case from the state records
  failures.csv          case_id, stage, error (header only when nothing failed)
  run.log               what happened, per case
```

Every file is written atomically (temporary sibling + rename); a case's state
record turns ``done`` only after all its outputs exist, and cohort outputs are
removed when an invocation starts and written when it ends, so a killed run
never leaves a file that reads as complete but is not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from medseg.io.atomic import write_json

STATES = ("pending", "running", "done", "failed")
COHORT_FILES = ("volumes.csv", "volumes_wide.csv", "summary.csv", "report.html", "metrics.csv", "status.csv", "failures.csv")
RUN_LOG = "medseg.run"  # the run.log logger (does not propagate to the console)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def reset_peak_rss() -> None:
    """Start a new peak-memory window for this process (Linux: /proc/self/clear_refs; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory since the last ``reset_peak_rss`` (Linux VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.state_dir = self.root / "state"
        self.cases_dir = self.root / "cases"
        self.qc_dir = self.root / "qc"
        self.log_path = self.root / "run.log"

    def case_dir(self, case_id: str) -> Path:
        return self.cases_dir / case_id

    def rel(self, path: str | os.PathLike) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    # -- state records ------------------------------------------------------------------
    def state_path(self, case_id: str) -> Path:
        return self.state_dir / f"{case_id}.json"

    def read_state(self, case_id: str) -> dict | None:
        try:
            return json.loads(self.state_path(case_id).read_text())
        except (OSError, ValueError):
            return None

    def write_state(self, case_id: str, record: dict) -> None:
        write_json(self.state_path(case_id), {**record, "case_id": case_id, "updated": now()})

    def is_current(self, case, config_sha256: str) -> bool:
        """A case finished earlier with the same inputs (fingerprint) and config, its outputs all present."""
        rec = self.read_state(case.case_id)
        if not rec or rec.get("status") != "done":
            return False
        if rec.get("fingerprint") != case.fingerprint or rec.get("config_sha256") != config_sha256:
            return False
        return all((self.root / rel).is_file() for rel in (rec.get("outputs") or {}).values())

    # -- start of an invocation ---------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout; remove temporaries of a killed run and the cohort outputs (rebuilt at the end)."""
        for d in (self.root, self.state_dir, self.cases_dir):
            d.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.rglob(".tmp-*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
        for name in COHORT_FILES:
            (self.root / name).unlink(missing_ok=True)

    def open_log(self) -> logging.Handler:
        """run.log gets the runner's per-case lines and every medseg warning; returns the handler to close."""
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        run_log = logging.getLogger(RUN_LOG)
        run_log.setLevel(logging.INFO)
        run_log.propagate = False
        run_log.addHandler(handler)
        warn = logging.FileHandler(self.log_path, encoding="utf-8")
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
            warn.close()
        handler.close()

    # -- end of an invocation -----------------------------------------------------------
    def write_tables(self, cases) -> dict:
        """``status.csv`` and ``failures.csv`` from the state records; returns counts by status."""
        import pandas as pd

        from medseg.io.atomic import write_csv

        rows, fails = [], []
        for c in cases:
            rec = self.read_state(c.case_id) or {"status": "pending"}
            rows.append({"case_id": c.case_id, "status": rec.get("status"), "stage": rec.get("stage", ""),
                         "error": rec.get("error", ""), "seconds": rec.get("seconds"),
                         "peak_rss_mb": rec.get("peak_rss_mb"), "attempt": rec.get("attempt"), "source": c.source})
            if rec.get("status") == "failed":
                fails.append({"case_id": c.case_id, "stage": rec.get("stage", ""), "error": rec.get("error", ""),
                              "source": c.source})
        write_csv(self.root / "status.csv", pd.DataFrame(rows, columns=["case_id", "status", "stage", "error", "seconds",
                                                                         "peak_rss_mb", "attempt", "source"]))
        write_csv(self.root / "failures.csv", pd.DataFrame(fails, columns=["case_id", "stage", "error", "source"]))
        counts = {s: 0 for s in STATES}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts
