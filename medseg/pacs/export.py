"""Send a case's DICOM results to a PACS (STOW-RS or C-STORE), with retries, recorded per case.

Entry point (the pipeline's ``export`` stage calls it once per case; ``medseg listen`` can call it the same way)::

    from medseg.pacs.export import export_case

    record = export_case("dimse://ORTHANC@pacs:4242",            # or an Endpoint, or dicomweb+http://.../dicom-web
                         {"dicom_seg": case_dir / "seg.dcm", "rtstruct": case_dir / "rtstruct.dcm"},
                         record_path=run_dir / "export" / "CASE.json", case_id="CASE", retries=3, backoff_s=1.0)

It sends each object in turn and rewrites the JSON record (atomically) after
each one, so a killed run knows exactly what went out. An object whose SOP
Instance UID the record already lists as sent to this destination is not sent
again (``status: "already_sent"``): a resumed or repeated run sends nothing
twice. medseg makes the SEG and RTSTRUCT UIDs of a run case deterministic (from
the source series, the model checksum and the settings: ``medseg.inference.outputs``), so
even an object sent just before a crash, and sent again after it, arrives
under the same UIDs: the PACS sees the same instance again, never a new one.

Failures are retried with exponential back-off (``backoff_s`` x 1, 2, 4 ...,
at most 60 s between attempts); what still fails raises :class:`ExportError`
(one line naming the destination) after the record says which objects went
out and which did not. Objects missing from ``objects`` (a case whose SEG
could not be written) are recorded as ``not_written`` and are not an error.

The record (no patient identifiers: file names, UIDs medseg made, sizes, times)::

    {"case_id", "destination", "kind", "status": "sent" | "failed" | "nothing_to_send",
     "objects": [{"kind", "file", "sop_class_uid", "sop_instance_uid", "series_instance_uid", "bytes",
                  "status": "sent" | "already_sent" | "failed" | "not_written", "attempts", "sent_at", "error"}],
     "attempts", "updated"}
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.atomic import write_json
from medseg.pacs.endpoints import Endpoint, PacsError, associate, dicomweb_client, http_error, make_ae, parse_endpoint

log = logging.getLogger("medseg.run")

KINDS = ("dicom_seg", "rtstruct", "sr")
MAX_WAIT_S = 60.0
#: C-STORE statuses that mean "stored" (success and the warnings: coerced, elements discarded, ...).
STORED = (0x0000, 0xB000, 0xB006, 0xB007)


class ExportError(PacsError):
    """Some objects of a case could not be sent after the retries (exit code 3 outside a batch run)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _read_record(path: Path) -> dict:
    import json

    try:
        rec = json.loads(path.read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def _sent_before(rec: dict, destination: str) -> dict:
    """SOP Instance UID -> object entry for everything the record lists as sent to ``destination``."""
    out = {}
    for history in [rec] + list(rec.get("history") or []):
        if history.get("destination") != destination:
            continue
        for o in history.get("objects") or []:
            if o.get("status") in ("sent", "already_sent") and o.get("sop_instance_uid"):
                out[o["sop_instance_uid"]] = o
    return out


def _store_dimse(ep: Endpoint, ds) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = make_ae(ep)
    syntax = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else ""
    syntaxes = [s for s in dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]) if s]
    ae.add_requested_context(str(ds.SOPClassUID), syntaxes)
    assoc = associate(ae, ep, "C-STORE")
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if not status:
        raise PacsError(f"{ep.display}: no answer to C-STORE (connection lost or timed out); check the PACS")
    code = int(status.Status)
    if code not in STORED:
        raise PacsError(
            f"{ep.display}: C-STORE refused with status 0x{code:04X}; check the PACS log "
            "(storage full, SOP class or transfer syntax not accepted?)"
        )


def _store_dicomweb(ep: Endpoint, ds) -> None:
    client = dicomweb_client(ep)
    try:
        rsp = client.store_instances([ds], study_instance_uid=str(ds.StudyInstanceUID))
    except Exception as exc:  # noqa: BLE001 (requests, dicomweb-client)
        raise http_error(exc, ep, "STOW-RS") from None
    failed = rsp.get("FailedSOPSequence") if rsp is not None else None
    if failed:
        reason = failed[0].get("FailureReason", "")
        raise PacsError(f"{ep.display}: STOW-RS refused the object (failure reason {reason}); check the PACS log")


def send(ep: Endpoint, path: str | os.PathLike) -> dict:
    """Send one DICOM file once (no retry); returns its UIDs. ``PacsError`` when the destination refuses it."""
    import pydicom

    ds = pydicom.dcmread(path)
    info = {
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
    }
    (_store_dicomweb if ep.kind == "dicomweb" else _store_dimse)(ep, ds)
    return info


def _uids(path: Path) -> dict:
    import pydicom

    ds = pydicom.dcmread(
        path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"]
    )
    return {
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
    }


def _send_with_retries(ep, path: Path, kind: str, entry: dict, case_id: str, retries, backoff_s, sleep, save):
    """Send one object, retrying with a doubling wait; ``entry`` records the outcome. The error (``kind: message``)
    when the last attempt failed too, else None."""
    for attempt in range(1, max(0, int(retries)) + 2):
        entry["attempts"] = attempt
        try:
            send(ep, path)
        except MedsegError as exc:
            message = " ".join(str(exc).split())
            entry.update(status="failed", error=message)
            if attempt <= retries:
                wait = min(float(backoff_s) * 2 ** (attempt - 1), MAX_WAIT_S)
                log.info(
                    "%s: sending %s to %s failed (attempt %d: %s); retrying in %.1f s",
                    case_id,
                    kind,
                    ep.display,
                    attempt,
                    message,
                    wait,
                )
                save()
                sleep(wait)
                continue
            return f"{kind}: {message}"
        entry.update(status="sent", sent_at=_now())
        entry.pop("error", None)
        log.info("%s: %s sent to %s (attempt %d)", case_id, kind, ep.display, attempt)
        return None
    return None


def export_case(
    destination: str | Endpoint,
    objects: dict,
    *,
    record_path: str | os.PathLike,
    case_id: str = "",
    retries: int = 3,
    backoff_s: float = 1.0,
    base: str | os.PathLike | None = None,
    sleep=time.sleep,
) -> dict:
    """Send ``objects`` (kind -> DICOM file path, or None when not written) to ``destination``; write and return the
    record. Raises :class:`ExportError` after recording when an object still fails after ``retries`` retries.

    ``base``: file names in the record are relative to it (default: the record's folder's parent).
    """
    ep = destination if isinstance(destination, Endpoint) else parse_endpoint(destination, what="export destination")
    record_path = Path(record_path)
    base = Path(base) if base is not None else record_path.parent.parent
    previous = _read_record(record_path)
    already = _sent_before(previous, ep.display)
    history = list(previous.get("history") or [])
    if previous.get("destination") and previous.get("destination") != ep.display:
        history.append({k: previous[k] for k in ("destination", "objects", "status", "updated") if k in previous})
    rec = {
        "case_id": case_id,
        **ep.to_record(),
        "destination": ep.display,
        "status": "sending",
        "objects": [],
        "attempts": int(previous.get("attempts") or 0) + 1,
        "started": _now(),
        "history": history[-5:],
    }

    def save():
        rec["updated"] = _now()
        write_json(record_path, rec)

    errors = []
    for kind, path in objects.items():
        entry = {"kind": kind}
        rec["objects"].append(entry)
        if path is None or not Path(path).is_file():
            entry.update(status="not_written")
            continue
        path = Path(path)
        try:
            entry["file"] = os.path.relpath(path, base)
        except ValueError:
            entry["file"] = path.name
        entry["bytes"] = path.stat().st_size
        try:
            entry.update(_uids(path))
        except Exception as exc:  # noqa: BLE001 (not a DICOM file: that object fails, the record says why)
            entry.update(status="failed", error=f"not a readable DICOM file ({type(exc).__name__})", attempts=0)
            errors.append(f"{kind}: not a readable DICOM file")
            save()
            continue
        if entry["sop_instance_uid"] in already:
            entry.update(
                status="already_sent", sent_at=already[entry["sop_instance_uid"]].get("sent_at", ""), attempts=0
            )
            log.info("%s: %s already sent to %s, not sent again", case_id, kind, ep.display)
            continue
        error = _send_with_retries(ep, path, kind, entry, case_id, retries, backoff_s, sleep, save)
        if error is not None:
            errors.append(error)
        save()  # after every object: a killed run knows what went out
    statuses = {o.get("status") for o in rec["objects"]}
    rec["status"] = "failed" if errors else ("sent" if statuses & {"sent", "already_sent"} else "nothing_to_send")
    rec["finished"] = _now()
    save()
    if errors:
        raise ExportError(f"export to {ep.display}: {'; '.join(errors)}")
    return rec
