"""The SCP side of ``medseg listen``: DICOM associations and C-STORE / C-ECHO requests, each instance streamed
durably into the spool before it is acknowledged.

pynetdicom's association threads call :meth:`StoreSCP.on_store`, which writes the instance durably into the
spool and only then answers 0x0000 (0xA700 when the spool is full or the write failed: nothing is
acknowledged that is not on disk). A new association while the spool is (nearly) full is rejected
(transient, local limit exceeded). What happens to complete studies is ``medseg.service.scheduler``'s work.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from medseg.errors import InputError, MedsegError
from medseg.optional import optional_import
from medseg.pacs.spool import GB, SpoolFull, instance_name, received_file, study_key

pynetdicom = optional_import("pynetdicom", extra="pacs", purpose="medseg listen")
sop_class = optional_import("pynetdicom.sop_class", extra="pacs", purpose="medseg listen")

log = logging.getLogger("medseg.listen")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # C-STORE "Refused: Out of resources"
STATUS_CANNOT_UNDERSTAND = 0xC000  # C-STORE "Error: Cannot understand"


def shown(ae_title) -> str:
    """An AE title from the network as one safe, quoted token for the log."""
    if isinstance(ae_title, bytes):
        ae_title = ae_title.decode("ascii", "backslashreplace")
    return ascii(str(ae_title).strip())


def size_text(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1024**2:.1f} MB"


def storage_contexts():
    """Every storage SOP class (CT, MR, SEG, RTSTRUCT, ...) with the uncompressed transfer syntaxes and the
    compressed ones this installation can decode (pydicom's decoders: RLE, JPEG, JPEG-LS, JPEG 2000 when
    their libraries are there), so nothing is accepted that the pipeline could not read."""
    from pydicom import uid as U
    from pydicom.pixels import get_decoder

    syntaxes = [
        U.ImplicitVRLittleEndian,
        U.ExplicitVRLittleEndian,
        U.DeflatedExplicitVRLittleEndian,
        U.ExplicitVRBigEndian,
    ]
    for ts in (
        U.RLELossless,
        U.JPEGLosslessSV1,
        U.JPEGLossless,
        U.JPEGLSLossless,
        U.JPEG2000Lossless,
        U.JPEGBaseline8Bit,
        U.JPEGExtended12Bit,
        U.JPEGLSNearLossless,
        U.JPEG2000,
    ):
        with contextlib.suppress(Exception):
            if get_decoder(ts).is_available:
                syntaxes.append(ts)
    return [(cx.abstract_syntax, syntaxes) for cx in pynetdicom.AllStoragePresentationContexts]


def _status(code: int, comment: str = ""):
    from pydicom.dataset import Dataset

    rsp = Dataset()
    rsp.Status = code
    if comment:
        rsp.ErrorComment = comment[:64]
    return rsp


class StoreSCP:
    """The C-STORE / C-ECHO service provider of one listener: associations in, instances into ``spool``.

    ``stopping`` (set by the listener when it closes) makes a C-STORE that still arrives a failure status.
    """

    def __init__(self, cfg, spool, ssl_context, stopping: threading.Event):
        self.cfg = cfg
        self.spool = spool
        self.ssl = ssl_context
        self.stopping = stopping
        self.server = None
        self.ae = None
        self._assoc_stats: dict[int, dict] = {}
        self._assoc_lock = threading.Lock()
        self._chunked_before: bool | None = None
        self._rejects: dict[int, object] = {}  # id(association) -> the A-ASSOCIATE-RJ pynetdicom sent it

    # -- start and stop -------------------------------------------------------------------------------------
    def start(self, pipeline_name: str) -> None:
        cfg, evt = self.cfg, pynetdicom.evt
        # received datasets go straight to a file (pynetdicom's temporary, then copied into the spool in chunks):
        # the listener's memory does not grow with the size of an instance
        if self._chunked_before is None:
            self._chunked_before = pynetdicom._config.STORE_RECV_CHUNKED_DATASET
        pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True
        ae = pynetdicom.AE(ae_title=cfg.ae_title)
        for abstract, syntaxes in storage_contexts():
            ae.add_supported_context(abstract, syntaxes)
        ae.add_supported_context(sop_class.Verification)
        if cfg.allow_ae:
            ae.require_calling_aet = list(cfg.allow_ae)
        handlers = [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_ACSE_SENT, self.on_acse_sent),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
        ]
        try:
            self.server = ae.start_server(
                (cfg.host, int(cfg.port)), block=False, evt_handlers=handlers, ssl_context=self.ssl
            )
        except OSError as exc:
            raise InputError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc})") from None
        self.ae = ae
        tls = " with TLS" + (" (client certificates required)" if cfg.tls_ca else "") if self.ssl else ""
        log.info(
            "listening as %s on %s:%d%s; pipeline %s; studies complete after %g s without new instances; "
            "spool limit %g GB (%s used)",
            shown(cfg.ae_title),
            cfg.host,
            int(cfg.port),
            tls,
            pipeline_name,
            cfg.quiet_seconds,
            cfg.spool_max_gb,
            size_text(self.spool.used_bytes),
        )
        if not cfg.allow_ae:
            log.warning("no --allow-ae list: any calling AE title is accepted; name the senders with --allow-ae AE ...")
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and not self.ssl:
            log.warning("listening on %s without TLS: DICOM travels unencrypted on this network", cfg.host)

    def stop(self, *, grace_seconds: float) -> bool:
        """No new association; the ones under way get ``grace_seconds``, then are aborted. Whether a server ran."""
        server, self.server = self.server, None
        if server is None:
            return False
        server.shutdown()  # no new associations
        deadline = time.monotonic() + grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        return True

    def restore_settings(self) -> None:
        """pynetdicom's chunked-receive switch as it was before ``start``."""
        if self._chunked_before is not None:
            pynetdicom._config.STORE_RECV_CHUNKED_DATASET, self._chunked_before = self._chunked_before, None

    # -- associations ---------------------------------------------------------------------------------------
    def _stats(self, event) -> dict:
        with self._assoc_lock:
            return self._assoc_stats.setdefault(
                id(event.assoc), {"stored": 0, "again": 0, "refused": 0, "full_logged": False, "studies": set()}
            )

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
        log.error(
            "spool full (%s used of --spool-max-gb %g): association from AE %s refused (rejected transient: "
            "local limit exceeded); nothing spooled is lost. Raise the limit with --spool-max-gb or wait until "
            "received studies are processed (a done study's spool is freed), then resend",
            size_text(self.spool.used_bytes),
            self.cfg.spool_max_gb,
            shown(calling),
        )
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
            log.warning(
                "association from AE %s (%s) refused: the association limit was reached (%d associations at "
                "once; rejected transient, local limit exceeded); the sender may retry later",
                shown(who.ae_title),
                who.address,
                self.ae.maximum_associations if self.ae else 0,
            )
        elif why == (0x01, 0x03) or rsp is None:
            log.warning(
                "association from AE %s (%s) refused: calling AE title not on the --allow-ae list (%s)",
                shown(who.ae_title),
                who.address,
                " ".join(self.cfg.allow_ae),
            )
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
            log.info(
                "association from AE %s ended: %d instances stored, %d already there, %d refused; studies %s",
                shown(who.ae_title),
                s["stored"],
                s["again"],
                s["refused"],
                " ".join(sorted(s["studies"])) or "-",
            )

    def on_store(self, event):
        """C-STORE: on disk first, then success; any problem is a failure status, never a false success."""
        s = self._stats(event)
        if self.stopping.is_set() and self.server is None:
            s["refused"] += 1
            return _status(STATUS_OUT_OF_RESOURCES, "medseg listener is stopping")
        try:
            data = received_file(event)  # the instance on disk (pynetdicom's chunked receive): only its header is read
            if data is not None:
                import pydicom

                ds = pydicom.dcmread(
                    data,
                    stop_before_pixels=True,
                    defer_size=64 * 1024,
                    specific_tags=["StudyInstanceUID", "SOPInstanceUID"],
                )
            else:
                ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            sop_uid = str(event.request.AffectedSOPInstanceUID or ds.get("SOPInstanceUID", "") or "")
            if not study_uid or not sop_uid:
                s["refused"] += 1
                return _status(STATUS_CANNOT_UNDERSTAND, "no StudyInstanceUID or SOPInstanceUID")
            if data is None:
                data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001 (a malformed dataset: refused, the listener goes on)
            s["refused"] += 1
            log.warning(
                "instance from AE %s refused: cannot decode it (%s)",
                shown(event.assoc.requestor.ae_title),
                type(exc).__name__,
            )
            return _status(STATUS_CANNOT_UNDERSTAND, "cannot decode the dataset")
        key = study_key(study_uid)
        s["studies"].add(key)
        aet = str(event.assoc.requestor.ae_title).strip()
        try:
            written = self.spool.store(key, instance_name(sop_uid), data, calling_aet=aet)
        except SpoolFull:
            s["refused"] += 1
            if not s["full_logged"]:
                s["full_logged"] = True
                log.error(
                    "spool full (%s used of --spool-max-gb %g): refusing instances of study %s from AE %s with "
                    "status A700 (out of resources); nothing spooled is lost. Raise the limit with --spool-max-gb "
                    "or wait until received studies are processed (a done study's spool is freed), then resend",
                    size_text(self.spool.used_bytes),
                    self.cfg.spool_max_gb,
                    key,
                    shown(aet),
                )
            return _status(STATUS_OUT_OF_RESOURCES, "medseg spool full; raise --spool-max-gb")
        except MedsegError as exc:
            s["refused"] += 1
            log.error("cannot spool an instance of study %s: %s", key, " ".join(str(exc).split()))
            return _status(STATUS_OUT_OF_RESOURCES, "medseg cannot write to its spool")
        if written:
            s["stored"] += 1
        else:
            s["again"] += 1
        return STATUS_SUCCESS
