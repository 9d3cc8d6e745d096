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

Flow: pynetdicom's association threads call :meth:`Listener.on_store`, which
writes the instance durably into the spool and only then answers 0x0000
(0xA700 when the spool is full or the write failed: nothing is acknowledged
that is not on disk). The main thread marks a study complete once it received
nothing for the quiet period and queues it; one worker thread runs the
pipeline on the complete studies (``medseg.runner.run_pipeline`` on
``batch.csv``, so every stage of the pipeline runs, forwarding included) with
the predictor loaded once at start (``medseg.runner.stages.keep_predictors``).
The run directory's resume rules make a restart safe: a study done earlier is
skipped, a study cut short is run again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, InputError, MedsegError, OutputError
from medseg.pacs.spool import GB, Spool, SpoolFull, instance_name, received_file, study_key

log = logging.getLogger("medseg.listen")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # C-STORE "Refused: Out of resources"
STATUS_CANNOT_UNDERSTAND = 0xC000  # C-STORE "Error: Cannot understand"


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


def shown(ae_title) -> str:
    """An AE title from the network as one safe, quoted token for the log."""
    if isinstance(ae_title, bytes):
        ae_title = ae_title.decode("ascii", "backslashreplace")
    return ascii(str(ae_title).strip())


def _size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1024**2:.1f} MB"


def check_config(cfg: ListenConfig) -> None:
    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        from medseg.errors import OptionalDependencyError

        raise OptionalDependencyError("medseg listen needs pynetdicom: pip install 'medseg[pacs]'") from None
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


def storage_contexts():
    """Every storage SOP class (CT, MR, SEG, RTSTRUCT, ...) with the uncompressed transfer syntaxes and the
    compressed ones this installation can decode (pydicom's decoders: RLE, JPEG, JPEG-LS, JPEG 2000 when
    their libraries are there), so nothing is accepted that the pipeline could not read."""
    from pydicom import uid as U
    from pydicom.pixels import get_decoder
    from pynetdicom import AllStoragePresentationContexts

    syntaxes = [U.ImplicitVRLittleEndian, U.ExplicitVRLittleEndian, U.DeflatedExplicitVRLittleEndian, U.ExplicitVRBigEndian]
    for ts in (U.RLELossless, U.JPEGLosslessSV1, U.JPEGLossless, U.JPEGLSLossless, U.JPEG2000Lossless,
               U.JPEGBaseline8Bit, U.JPEGExtended12Bit, U.JPEGLSNearLossless, U.JPEG2000):
        with contextlib.suppress(Exception):
            if get_decoder(ts).is_available:
                syntaxes.append(ts)
    return [(cx.abstract_syntax, syntaxes) for cx in AllStoragePresentationContexts]


class Listener:
    """One receiving node on one RUN_DIR. ``open()`` checks everything and loads the model; ``serve(stop)``
    receives until ``stop`` is set; ``close()`` stops (finishing the write and the study under way)."""

    def __init__(self, cfg: ListenConfig):
        check_config(cfg)
        self.cfg = cfg
        self.root = Path(cfg.out).resolve()
        self.run_root = self.root / "run"
        self.spool = Spool(self.root, max_bytes=int(cfg.spool_max_gb * GB))
        self.queue: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.worker: threading.Thread | None = None
        self.server = None
        self.ae = None
        self.processing: list[str] = []
        self._assoc_stats: dict[int, dict] = {}
        self._assoc_lock = threading.Lock()
        self._keep = None
        self._log_handler = None
        self.processed = 0
        self._chunked_before: bool | None = None
        self._rejects: dict[int, object] = {}  # id(association) -> the A-ASSOCIATE-RJ pynetdicom sent it

    # -- start ----------------------------------------------------------------------------------------------
    def open(self) -> None:
        from medseg.models.checkpoint import load_checkpoint
        from medseg.runner.pipeline import load_pipeline
        from medseg.runner.rundir import RunDir

        cfg = self.cfg
        pipe = load_pipeline(cfg.pipeline, overrides=list(cfg.overrides))
        if not pipe.has("predict"):
            raise ConfigError(f"pipeline has no predict stage; nothing to run per study (stages: {', '.join(pipe.stages)})",
                              path=cfg.pipeline)
        for st in ("train", "plan", "evaluate"):
            if pipe.has(st):
                raise ConfigError(f"medseg listen runs per-study pipelines; the {st} stage needs a manifest run "
                                  "(medseg run)", path=cfg.pipeline)
        model = pipe.stages["predict"].model
        if not model:
            raise ConfigError("the pipeline names no model: --set predict.model=PATH", path=cfg.pipeline)
        from medseg.adapters import formats as external

        ckpt = external.run_summary(model) if external.is_external_model(model) else load_checkpoint(model)
        self.pipe, self.ckpt = pipe, ckpt
        self.ssl = ssl_context(cfg)
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
            self._write_settings()
            self._load_model()
        except BaseException:
            self.close_log()
            self.rd.release()
            raise
        for key in todo:
            self.queue.put(key)
        if todo:
            log.info("%d studies received before a restart are complete and queued: %s", len(todo), " ".join(todo))

    def _open_log(self) -> None:
        from medseg.io.atomic import ensure_dir

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

    def _write_settings(self) -> None:
        import medseg
        from medseg.io.atomic import write_json
        from medseg.runner.rundir import now

        c = self.cfg
        write_json(self.root / "listen.json", {
            "ae_title": c.ae_title, "host": c.host, "port": int(c.port), "pipeline": str(Path(c.pipeline).resolve())
            if Path(c.pipeline).exists() else str(c.pipeline), "overrides": list(c.overrides),
            "allow_ae": list(c.allow_ae), "quiet_seconds": c.quiet_seconds, "spool_max_gb": c.spool_max_gb,
            "tls": bool(c.tls_cert), "tls_client_ca": bool(c.tls_ca), "keep_spool": c.keep_spool,
            "model": {"path": self.ckpt["path"], "sha256": self.ckpt["file_sha256"]}, "pid": os.getpid(),
            "started": now(), "medseg_version": medseg.__version__})

    def _load_model(self) -> None:
        """Load the predictor now, once, into the cache every later run_pipeline call takes it from."""
        from medseg.runner.stages import RunContext, keep_predictors, load_predictor

        self._keep = keep_predictors()
        self._keep.__enter__()
        ctx = RunContext(root=str(self.run_root), pipeline=self.pipe, config_sha256="", model_path=self.ckpt["path"],
                         model_sha256=self.ckpt["file_sha256"], labels=self.ckpt["labels"], device=self.cfg.device or "")
        t0 = time.monotonic()
        load_predictor(ctx)
        log.info("model %s loaded in %.1f s", Path(self.ckpt["path"]).name, time.monotonic() - t0)

    # -- the SCP --------------------------------------------------------------------------------------------
    def start_server(self) -> None:
        from pynetdicom import AE, _config, evt

        cfg = self.cfg
        # received datasets go straight to a file (pynetdicom's temporary, then copied into the spool in chunks):
        # the listener's memory does not grow with the size of an instance
        if self._chunked_before is None:
            self._chunked_before = _config.STORE_RECV_CHUNKED_DATASET
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=cfg.ae_title)
        for abstract, syntaxes in storage_contexts():
            ae.add_supported_context(abstract, syntaxes)
        from pynetdicom.sop_class import Verification

        ae.add_supported_context(Verification)
        if cfg.allow_ae:
            ae.require_calling_aet = list(cfg.allow_ae)
        handlers = [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_STORE, self.on_store),
                    (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
                    (evt.EVT_ACSE_SENT, self.on_acse_sent), (evt.EVT_REJECTED, self.on_rejected),
                    (evt.EVT_ACCEPTED, self.on_accepted),
                    (evt.EVT_RELEASED, self.on_end), (evt.EVT_ABORTED, self.on_end)]
        try:
            self.server = ae.start_server((cfg.host, int(cfg.port)), block=False, evt_handlers=handlers,
                                          ssl_context=self.ssl)
        except OSError as exc:
            raise InputError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc})") from None
        self.ae = ae
        tls = " with TLS" + (" (client certificates required)" if cfg.tls_ca else "") if self.ssl else ""
        log.info("listening as %s on %s:%d%s; pipeline %s; studies complete after %g s without new instances; "
                 "spool limit %g GB (%s used)", shown(cfg.ae_title), cfg.host, int(cfg.port), tls, self.pipe.name,
                 cfg.quiet_seconds, cfg.spool_max_gb, _size(self.spool.used_bytes))
        if not cfg.allow_ae:
            log.warning("no --allow-ae list: any calling AE title is accepted; name the senders with --allow-ae AE ...")
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and not self.ssl:
            log.warning("listening on %s without TLS: DICOM travels unencrypted on this network", cfg.host)

    def _stats(self, event) -> dict:
        with self._assoc_lock:
            return self._assoc_stats.setdefault(id(event.assoc), {"stored": 0, "again": 0, "refused": 0,
                                                                  "full_logged": False, "studies": set()})

    def reserve_bytes(self) -> int:
        """Free spool space below which a new association is refused (a tenth of the limit, at most 16 MiB)."""
        return min(self.spool.max_bytes // 10, 16 * 1024**2)

    def on_requested(self, event) -> None:
        """A new association while the spool is (nearly) full: rejected, transient, "local limit exceeded"."""
        free = self.spool.max_bytes - self.spool.used_bytes
        if free >= self.reserve_bytes():
            return
        calling = event.assoc.requestor.primitive.calling_ae_title
        if self.cfg.allow_ae and str(calling).strip() not in self.cfg.allow_ae:
            return  # pynetdicom rejects it for its AE title (logged by on_rejected)
        event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient, service provider, local limit exceeded
        log.error("spool full (%s used of --spool-max-gb %g): association from AE %s refused (rejected transient: "
                  "local limit exceeded); nothing spooled is lost. Raise the limit with --spool-max-gb or wait until "
                  "received studies are processed (a done study's spool is freed), then resend",
                  _size(self.spool.used_bytes), self.cfg.spool_max_gb, shown(calling))
        event.assoc.kill()

    def on_accepted(self, event) -> None:
        self._stats(event)

    def on_acse_sent(self, event) -> None:
        """Remember the A-ASSOCIATE-RJ pynetdicom sends, so that :meth:`on_rejected` can say why."""
        rsp = event.primitive
        if type(rsp).__name__ == "A_ASSOCIATE" and getattr(rsp, "result", None) in (0x01, 0x02):
            with self._assoc_lock:
                self._rejects[id(event.assoc)] = rsp

    def on_rejected(self, event) -> None:
        who = event.assoc.requestor
        with self._assoc_lock:
            rsp = self._rejects.pop(id(event.assoc), None)
        why = (getattr(rsp, "result_source", None), getattr(rsp, "diagnostic", None))
        if why == (0x03, 0x02):  # service provider (presentation): local limit exceeded
            log.warning("association from AE %s (%s) refused: the association limit was reached (%d associations at "
                        "once; rejected transient, local limit exceeded); the sender may retry later",
                        shown(who.ae_title), who.address, self.ae.maximum_associations if self.ae else 0)
        elif why == (0x01, 0x03) or rsp is None:
            log.warning("association from AE %s (%s) refused: calling AE title not on the --allow-ae list (%s)",
                        shown(who.ae_title), who.address, " ".join(self.cfg.allow_ae))
        else:
            reason = ""
            with contextlib.suppress(Exception):
                reason = f" ({rsp.reason_str})"
            log.warning("association from AE %s (%s) refused%s", shown(who.ae_title), who.address, reason)

    def on_end(self, event) -> None:
        with self._assoc_lock:
            s = self._assoc_stats.pop(id(event.assoc), None)
        if s and (s["stored"] or s["refused"] or s["again"]):
            who = event.assoc.requestor
            log.info("association from AE %s ended: %d instances stored, %d already there, %d refused; studies %s",
                     shown(who.ae_title), s["stored"], s["again"], s["refused"], " ".join(sorted(s["studies"])) or "-")

    def on_store(self, event):
        """C-STORE: on disk first, then success; any problem is a failure status, never a false success."""
        from pydicom.dataset import Dataset

        def status(code: int, comment: str = ""):
            rsp = Dataset()
            rsp.Status = code
            if comment:
                rsp.ErrorComment = comment[:64]
            return rsp

        s = self._stats(event)
        if self.stopping.is_set() and self.server is None:
            s["refused"] += 1
            return status(STATUS_OUT_OF_RESOURCES, "medseg listener is stopping")
        try:
            data = received_file(event)  # the instance on disk (pynetdicom's chunked receive): only its header is read
            if data is not None:
                import pydicom

                ds = pydicom.dcmread(data, stop_before_pixels=True, defer_size=64 * 1024,
                                     specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
            else:
                ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            sop_uid = str(event.request.AffectedSOPInstanceUID or ds.get("SOPInstanceUID", "") or "")
            if not study_uid or not sop_uid:
                s["refused"] += 1
                return status(STATUS_CANNOT_UNDERSTAND, "no StudyInstanceUID or SOPInstanceUID")
            if data is None:
                data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001 (a malformed dataset: refused, the listener goes on)
            s["refused"] += 1
            log.warning("instance from AE %s refused: cannot decode it (%s)", shown(event.assoc.requestor.ae_title),
                        type(exc).__name__)
            return status(STATUS_CANNOT_UNDERSTAND, "cannot decode the dataset")
        key = study_key(study_uid)
        s["studies"].add(key)
        aet = str(event.assoc.requestor.ae_title).strip()
        try:
            written = self.spool.store(key, instance_name(sop_uid), data, calling_aet=aet)
        except SpoolFull:
            s["refused"] += 1
            if not s["full_logged"]:
                s["full_logged"] = True
                log.error("spool full (%s used of --spool-max-gb %g): refusing instances of study %s from AE %s with "
                          "status A700 (out of resources); nothing spooled is lost. Raise the limit with --spool-max-gb "
                          "or wait until received studies are processed (a done study's spool is freed), then resend",
                          _size(self.spool.used_bytes), self.cfg.spool_max_gb, key, shown(aet))
            return status(STATUS_OUT_OF_RESOURCES, "medseg spool full; raise --spool-max-gb")
        except MedsegError as exc:
            s["refused"] += 1
            log.error("cannot spool an instance of study %s: %s", key, " ".join(str(exc).split()))
            return status(STATUS_OUT_OF_RESOURCES, "medseg cannot write to its spool")
        if written:
            s["stored"] += 1
        else:
            s["again"] += 1
        return STATUS_SUCCESS

    # -- studies --------------------------------------------------------------------------------------------
    def tick(self) -> None:
        due, held = self.spool.due(self.cfg.quiet_seconds)
        for st in held:
            log.warning("study %s is not processed: %d of its instances were refused (spool full or not written); it "
                        "is complete once the sender sends them again", st.key, len(st.missing))
        for key in due:
            st = self.spool.studies[key]
            log.info("study %s complete (%d instances, no new one for %g s): queued", key, st.instances,
                     self.cfg.quiet_seconds)
            self.queue.put(key)

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None or self.stopping.is_set():
                return
            keys = [key]
            with contextlib.suppress(queue.Empty):
                while True:
                    k = self.queue.get_nowait()
                    if k is None:
                        self.queue.put(None)
                        break
                    keys.append(k)
            keys = [k for k in dict.fromkeys(keys) if self.spool.start_processing(k)]
            if keys:
                self.processing = keys
                try:
                    self.process(keys)
                finally:
                    self.processing = []

    def process(self, keys: list[str]) -> None:
        """Run the pipeline on these complete studies (one ``run_pipeline`` call on batch.csv)."""
        import pandas as pd

        from medseg.io.atomic import write_csv
        from medseg.runner import run_pipeline

        col = self.pipe.input.column
        rows = [{"case_id": k, col: str(self.spool.study_folder(k))} for k in keys]
        if self.pipe.input.split:
            for r in rows:
                r["split"] = self.pipe.input.split
        t0 = time.monotonic()
        log.info("processing %s", " ".join(keys))
        outcome: dict[str, tuple[bool, str]] = {}
        try:
            batch = write_csv(self.root / "batch.csv", pd.DataFrame(rows))
            r = run_pipeline(pipeline=self.cfg.pipeline, input=batch, out=self.run_root, overrides=list(self.cfg.overrides),
                             progress=False, device=self.cfg.device)
            for k in keys:
                if k in r.done or k in r.skipped:
                    outcome[k] = (True, "")
                else:
                    outcome[k] = (False, r.failures.get(k, "not processed"))
        except MedsegError as exc:
            line = " ".join(str(exc).split())
            log.error("pipeline run failed: %s", line)
            outcome = {k: (False, line) for k in keys}
        except Exception as exc:  # noqa: BLE001 (a bug must not stop the node; the studies are marked failed)
            log.exception("internal error while processing %s", " ".join(keys))
            outcome = {k: (False, f"internal error {type(exc).__name__}") for k in keys}
        for k, (ok, err) in outcome.items():
            new = self.spool.finish(k, ok, err, keep=self.cfg.keep_spool)
            if new == "done":
                self.processed += 1
                log.info("study %s done (%.1f s): results in %s", k, time.monotonic() - t0,
                         (self.run_root / "cases" / k).relative_to(self.root))
            elif new == "failed":
                log.error("study %s failed: %s", k, err)
            else:
                log.info("study %s received new instances while it was processed: it runs again when complete", k)
        self.processing = []
        with contextlib.suppress(MedsegError):
            self.rebuild_tables()

    def rebuild_tables(self) -> None:
        """volumes.csv & co., status.csv, failures.csv in run/ over every study processed so far (run_pipeline
        writes them for its batch only)."""
        import json

        from medseg.labels import LabelTable
        from medseg.runner.core import aggregate
        from medseg.runner.inputs import Case
        from medseg.runner.rundir import RunDir

        rd = RunDir(self.run_root)
        if not rd.state_dir.is_dir():
            return
        cases = []
        for p in sorted(rd.state_dir.glob("st*.json")):
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(p.read_text())
                cases.append(Case(rec["case_id"], rec.get("source", ""), "dicom", fingerprint=rec.get("fingerprint", "")))
        try:
            rd.claim()
        except OutputError:
            return  # a `medseg run` on run/ right now: it writes them itself
        try:
            aggregate(rd, self.pipe, cases, LabelTable.from_dict(self.ckpt["labels"], source=self.ckpt["path"]))
            rd.write_tables(cases)
        finally:
            rd.release()

    # -- run and stop ---------------------------------------------------------------------------------------
    def serve(self, stop: threading.Event, *, tick_seconds: float = 0.2) -> None:
        self.start_server()
        self.worker = threading.Thread(target=self._work, name="medseg-listen-worker", daemon=True)
        self.worker.start()
        while not stop.wait(tick_seconds):
            self.tick()

    def close(self, *, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let the writes under way finish, finish the study being processed, release RUN_DIR."""
        self.stopping.set()
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()  # no new associations
            deadline = time.monotonic() + grace_seconds
            while self.ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in self.ae.active_associations:
                assoc.abort()
        while self.spool.inflight():
            time.sleep(0.02)
        if self.worker is not None:
            if self.processing:
                log.info("stopping: finishing study %s first (a second signal stops at once; it then runs again "
                         "at the next start)", " ".join(self.processing))
            self.queue.put(None)
            self.worker.join()
        if server is not None:
            counts = self.spool.counts()
            log.info("stopped: %d studies processed in this session; %s", self.processed,
                     ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no studies")
        if self._chunked_before is not None:
            from pynetdicom import _config

            _config.STORE_RECV_CHUNKED_DATASET, self._chunked_before = self._chunked_before, None
        if self._keep is not None:
            self._keep.__exit__(None, None, None)
            self._keep = None
        self.close_log()
        self.rd.release()


def run_listener(cfg: ListenConfig, *, stop: threading.Event | None = None, console: bool = True) -> dict:
    """Open, serve until SIGTERM/SIGINT (or ``stop`` is set), close; returns the study counts.

    Signals are handled when called from the main thread: the first one stops
    gracefully (the write under way finishes, no new association is accepted,
    the study being processed is finished); a second one exits at once with
    code 1 (that study is processed again at the next start).
    """
    import signal
    import sys

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
                    log.error("second signal: stopping now; study %s runs again at the next start",
                              " ".join(listener.processing) or "-")
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
