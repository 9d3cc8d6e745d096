"""``medseg listen``: a receiving DICOM node (C-STORE SCP) that segments each study it receives.

```
RUN_DIR/
  .medseg-run, .medseg-lock   the run-directory marker and lock (one listener per RUN_DIR)
  listen.json                 this listener's settings (AE title, address, pipeline, limits; no patient data)
  listen.log                  one line per association, study and refusal
  spool/, studies/            received instances and each study's state (see medseg.pacs.spool)
  batch.csv                   the studies handed to the pipeline last (case_id = study key, path of its spool folder)
  run/                        the pipeline's run directory (as ``medseg run`` writes it; case ids are study keys):
                              cases/<study>/labels.nii.gz, seg.dcm, ..., state/, volumes.csv (all studies), run.log
```

Two parts, one thread each: ``medseg.service.scp.StoreSCP`` (pynetdicom's association threads: each
instance written durably into the spool before it is acknowledged) and ``medseg.service.scheduler.StudyScheduler``
(complete studies -> batches -> ``medseg.runner.run_pipeline`` on ``batch.csv``, with the predictor loaded once
at start). :class:`Listener` opens the run directory and wires them together; :func:`run_listener` is the entry
point. The run directory's resume rules make a restart safe: a study done earlier is skipped, a study cut short
is run again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import medseg
from medseg.errors import ConfigError, InputError, OptionalDependencyError, OutputError
from medseg.io.atomic import ensure_dir, write_json
from medseg.optional import available
from medseg.pacs.spool import GB, Spool
from medseg.runner.rundir import RunDir, now
from medseg.service.scheduler import StudyScheduler, load_listen_pipeline
from medseg.service.scp import StoreSCP, shown, size_text, storage_contexts  # noqa: F401  (shown, size_text, storage_contexts: re-exported)

log = logging.getLogger("medseg.listen")


@dataclass
class ListenConfig:
    ae_title: str
    port: int
    pipeline: str
    out: str
    host: str = "127.0.0.1"
    allow_ae: tuple = ()
    quiet_seconds: float = 30.0
    spool_max_gb: float = 20.0
    overrides: tuple = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    device: str | None = None
    keep_spool: bool = False
    extra: dict = field(default_factory=dict)


def _ae(title: str, what: str) -> str:
    t = str(title).strip()
    if not t or len(t) > 16 or "\\" in t or any(ord(c) < 32 or ord(c) > 126 for c in t):
        raise ConfigError(f"{what} {title!r} is not a valid AE title: 1 to 16 printable ASCII characters, no backslash")
    return t


def check_config(cfg: ListenConfig) -> None:
    if not available("pynetdicom"):
        raise OptionalDependencyError("medseg listen needs pynetdicom: pip install 'medseg[pacs]'")
    cfg.ae_title = _ae(cfg.ae_title, "--ae-title")
    cfg.allow_ae = tuple(_ae(a, "--allow-ae") for a in cfg.allow_ae)
    if not 0 < int(cfg.port) < 65536:
        raise ConfigError(f"--port {cfg.port}: give a TCP port between 1 and 65535")
    if not cfg.quiet_seconds > 0:
        raise ConfigError(f"--quiet-seconds {cfg.quiet_seconds}: give a positive number of seconds")
    if not cfg.spool_max_gb > 0:
        raise ConfigError(f"--spool-max-gb {cfg.spool_max_gb}: give a positive size in GB")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    if cfg.tls_ca and not cfg.tls_cert:
        raise ConfigError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
    for opt, path in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key), ("--tls-ca", cfg.tls_ca)):
        if path and not Path(path).is_file():
            raise InputError(f"{opt}: no such file", path=path)


def ssl_context(cfg: ListenConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED  # callers must show a certificate signed by this CA
            ctx.load_verify_locations(cfg.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot use the TLS certificate/key ({exc})", path=cfg.tls_cert) from None
    return ctx


class Listener:
    """One receiving node on one RUN_DIR. ``open()`` checks everything and loads the model; ``serve(stop)``
    receives until ``stop`` is set; ``close()`` stops (finishing the write and the study under way)."""

    def __init__(self, cfg: ListenConfig):
        check_config(cfg)
        self.cfg = cfg
        self.root = Path(cfg.out).resolve()
        self.run_root = self.root / "run"
        self.spool = Spool(self.root, max_bytes=int(cfg.spool_max_gb * GB))
        self.stopping = threading.Event()
        self.scp: StoreSCP | None = None
        self.scheduler: StudyScheduler | None = None
        self.rd: RunDir | None = None
        self._log_handler = None

    @property
    def server(self):
        return self.scp.server if self.scp is not None else None

    @property
    def ae(self):
        return self.scp.ae if self.scp is not None else None

    @property
    def processing(self) -> list[str]:
        return self.scheduler.processing if self.scheduler is not None else []

    # -- start ----------------------------------------------------------------------------------------------
    def open(self) -> None:
        cfg = self.cfg
        pipe, ckpt = load_listen_pipeline(cfg)
        self.scheduler = StudyScheduler(cfg, self.root, self.spool, pipe, ckpt, self.stopping)
        self.scp = StoreSCP(cfg, self.spool, ssl_context(cfg), self.stopping)
        self.rd = RunDir(self.root)
        self.rd.claim()  # marker + lock: one listener per RUN_DIR (refused with the holder's pid otherwise)
        try:
            # of the listener's own writes a kill cut short (batch.csv, listen.json); spool/ and studies/ are swept
            # by the spool's recovery below, run/ by the pipeline's run directory when it next runs
            self.rd.discard_temporaries(recursive=False)
            self._open_log()
            todo = self.spool.recover()
            if not cfg.keep_spool:
                self.spool.remove_done_folders()
            self._write_settings(ckpt)
            self.scheduler.load_model()
        except BaseException:
            self.close_log()
            self.rd.release()
            raise
        self.scheduler.queue_studies(todo)
        if todo:
            log.info("%d studies received before a restart are complete and queued: %s", len(todo), " ".join(todo))

    def _open_log(self) -> None:
        ensure_dir(self.root)
        try:
            h = logging.FileHandler(self.root / "listen.log", encoding="utf-8")
        except OSError as exc:
            raise OutputError.from_os(exc, self.root / "listen.log") from None
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        self._log_handler = h

    def close_log(self) -> None:
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            with contextlib.suppress(OSError):
                self._log_handler.close()
            self._log_handler = None

    def _write_settings(self, ckpt: dict) -> None:
        c = self.cfg
        write_json(
            self.root / "listen.json",
            {
                "ae_title": c.ae_title,
                "host": c.host,
                "port": int(c.port),
                "pipeline": str(Path(c.pipeline).resolve()) if Path(c.pipeline).exists() else str(c.pipeline),
                "overrides": list(c.overrides),
                "allow_ae": list(c.allow_ae),
                "quiet_seconds": c.quiet_seconds,
                "spool_max_gb": c.spool_max_gb,
                "tls": bool(c.tls_cert),
                "tls_client_ca": bool(c.tls_ca),
                "keep_spool": c.keep_spool,
                "model": {"path": ckpt["path"], "sha256": ckpt["file_sha256"]},
                "pid": os.getpid(),
                "started": now(),
                "medseg_version": medseg.__version__,
            },
        )

    # -- run and stop ---------------------------------------------------------------------------------------
    def serve(self, stop: threading.Event, *, tick_seconds: float = 0.2) -> None:
        self.scp.start(self.scheduler.pipe.name)
        self.scheduler.start()
        while not stop.wait(tick_seconds):
            self.scheduler.tick()

    def close(self, *, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let the writes under way finish, finish the study being processed, release RUN_DIR."""
        self.stopping.set()
        served = self.scp.stop(grace_seconds=grace_seconds)
        while self.spool.inflight():
            time.sleep(0.02)
        self.scheduler.stop()
        if served:
            counts = self.spool.counts()
            log.info(
                "stopped: %d studies processed in this session; %s",
                self.scheduler.processed,
                ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no studies",
            )
        self.scp.restore_settings()
        self.scheduler.release_model()
        self.close_log()
        self.rd.release()


def run_listener(cfg: ListenConfig, *, stop: threading.Event | None = None, console: bool = True) -> dict:
    """Open, serve until SIGTERM/SIGINT (or ``stop`` is set), close; returns the study counts.

    Signals are handled when called from the main thread: the first one stops
    gracefully (the write under way finishes, no new association is accepted,
    the study being processed is finished); a second one exits at once with
    code 1 (that study is processed again at the next start).
    """
    stop = stop or threading.Event()
    handler = None
    if console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("medseg listen: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines show association internals
    listener = Listener(cfg)
    previous = {}
    try:
        listener.open()
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum, frame):
                if stop.is_set():
                    log.error(
                        "second signal: stopping now; study %s runs again at the next start",
                        " ".join(listener.processing) or "-",
                    )
                    for h in log.handlers:
                        with contextlib.suppress(Exception):
                            h.flush()
                    os._exit(1)
                log.info("%s: stopping", signal.Signals(signum).name)
                stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            listener.serve(stop)
        finally:
            if listener.rd is not None:
                listener.close()
        return listener.spool.counts()
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        if handler is not None:
            log.removeHandler(handler)
            log.propagate = True
