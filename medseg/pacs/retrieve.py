"""Retrieve one study into a bounded on-disk cache: WADO-RS, C-GET, or C-MOVE to medseg's own storage SCP.

```
CACHE/
  .medseg-cache.lock          flock'ed for the short moments a study is claimed, placed or evicted
  <key>/                      one study (<key>: ``st`` + salted hash of its StudyInstanceUID); files in[hash].dcm
    .medseg-study.json        written last, inside the folder before it is renamed into place
  .tmp-medseg-<key>-<pid>-*   a retrieval under way (removed when its process is gone)
```

A study is retrieved into a temporary folder, its instances counted against
what the query promised, its marker written, and only then renamed onto
``CACHE/<key>``: a study folder appears complete or not at all, and a killed
run leaves only temporaries. Only image series are retrieved (never SEG, SR,
RTSTRUCT and the like, medseg's own results among them), and of those only
the modalities the pipeline's ``select`` stage takes, when it names any.

The cache has a size limit. Before a study is placed, finished-and-consumed
studies (``consume`` marks them: the run has written that case's outputs)
are evicted, least recently used first, until the new one fits. Nothing else
is ever removed: not a study another run or thread is using, not a folder
without medseg's marker. Studies in use can take the cache past its limit by
at most the run's read-ahead (``workers`` + 2 studies); a single study larger
than the limit fails that case with a one-line reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from medseg.errors import InputError, OutputError
from medseg.io.atomic import TMP_PREFIX, ensure_dir
from medseg.pacs.endpoints import CHUNK, Endpoint, PacsError, associate, make_ae, web_request, web_session
from medseg.pacs.keys import hashed
from medseg.pacs.query import NON_IMAGE_MODALITIES, list_series

log = logging.getLogger("medseg.run")

MARKER = ".medseg-study.json"
LOCK = ".medseg-cache.lock"
GB = 1024**3
DEFAULT_CACHE = "~/.cache/medseg/pacs"
RETRIEVE_ATTEMPTS = 3


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDSEG_PACS_CACHE", DEFAULT_CACHE)).expanduser()


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StudyCache:
    """The on-disk study cache at ``root`` with a size limit of ``max_bytes`` (None: no limit)."""

    _in_use: dict = {}  # (root, key) -> count of users in this process
    _guard = threading.Lock()

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None):
        self.root = Path(root).expanduser().resolve()
        self.max_bytes = max_bytes if max_bytes and max_bytes > 0 else None

    # --- locking and markers --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        ensure_dir(self.root)
        with self._guard:
            try:
                fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError.from_os(exc, self.root / LOCK, "cannot open the cache lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def path(self, key: str) -> Path:
        return self.root / key

    def marker(self, key: str) -> dict | None:
        try:
            rec = json.loads((self.path(key) / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return rec if rec.get("medseg_cache") == 1 and rec.get("complete") else None

    def _write_marker(self, folder: Path, rec: dict) -> None:
        tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}{MARKER}"
        try:
            with open(tmp, "w") as fh:
                json.dump(rec, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / MARKER)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutputError.from_os(exc, folder / MARKER) from None

    def is_complete(self, key: str) -> bool:
        return self.marker(key) is not None

    def studies(self) -> dict[str, dict]:
        """Every complete study in the cache: key -> marker."""
        out = {}
        if not self.root.is_dir():
            return out
        for child in self.root.iterdir():
            if child.is_dir() and not child.name.startswith(".") and not child.is_symlink():
                m = self.marker(child.name)
                if m is not None:
                    out[child.name] = m
        return out

    def size_bytes(self) -> int:
        return sum(int(m.get("bytes") or 0) for m in self.studies().values())

    # --- use ------------------------------------------------------------------------------------------------
    def _claim(self, key: str) -> None:
        k = (str(self.root), key)
        self._in_use[k] = self._in_use.get(k, 0) + 1

    def consume(self, key: str) -> None:
        """The run is finished with this study (its case is written or failed): it may be evicted from now on."""
        with self._locked():
            k = (str(self.root), key)
            n = self._in_use.get(k, 0) - 1
            if n > 0:
                self._in_use[k] = n
                return
            self._in_use.pop(k, None)
            m = self.marker(key)
            if m is not None and not m.get("consumed"):
                self._write_marker(self.path(key), {**m, "consumed": True, "used": time.time()})

    def cleanup(self) -> None:
        """Remove temporaries of retrievals whose process is gone (medseg's own names only)."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if not (child.name.startswith(TMP_PREFIX) and child.is_dir() and not child.is_symlink()):
                continue
            parts = child.name[len(TMP_PREFIX) :].split("-")
            pid = next((int(p) for p in parts if p.isdigit()), None)
            if pid is None or pid == os.getpid() or _pid_alive(pid):
                continue
            shutil.rmtree(child, ignore_errors=True)

    def _evict_for(self, incoming: int) -> None:
        """Evict consumed studies (least recently used first) until ``incoming`` more bytes fit. Under the lock."""
        if self.max_bytes is None:
            return
        studies = self.studies()
        total = sum(int(m.get("bytes") or 0) for m in studies.values())
        in_use = {k for (r, k), n in self._in_use.items() if r == str(self.root) and n > 0}
        victims = sorted((m.get("used") or 0, k) for k, m in studies.items() if m.get("consumed") and k not in in_use)
        for _used, key in victims:
            if total + incoming <= self.max_bytes:
                break
            gone = self.root / f"{TMP_PREFIX}evict-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path(key), gone)  # disappears at once; removed at leisure
            except OSError:
                continue
            total -= int(studies[key].get("bytes") or 0)
            shutil.rmtree(gone, ignore_errors=True)
            log.info("cache: evicted %s", key)
        if total + incoming > self.max_bytes:
            log.warning(
                "cache %s: %.2f GB in use, over its limit of %.2f GB (studies being processed are kept)",
                self.root,
                (total + incoming) / GB,
                self.max_bytes / GB,
            )

    def get(self, ep: Endpoint, study_uid: str, key: str, *, modalities=(), attempts: int = RETRIEVE_ATTEMPTS) -> Path:
        """The folder of study ``key`` in the cache, retrieved from ``ep`` unless it is there complete."""
        with self._locked():
            if self.is_complete(key):
                self._claim(key)
                m = self.marker(key)
                self._write_marker(self.path(key), {**m, "consumed": False, "used": time.time()})
                log.info("%s: taken from the cache", key)
                return self.path(key)
        ensure_dir(self.root)
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            tmp = self.root / f"{TMP_PREFIX}{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                ensure_dir(tmp)
                t0 = time.monotonic()
                n = retrieve_study(ep, study_uid, tmp, modalities=modalities, max_bytes=self.max_bytes)
                size = _folder_bytes(tmp)
                if self.max_bytes is not None and size > self.max_bytes:
                    raise InputError(
                        f"study is {size / GB:.2f} GB, larger than the cache limit "
                        f"({self.max_bytes / GB:.2f} GB); raise --cache-max-gb"
                    )
                self._write_marker(
                    tmp,
                    {
                        "medseg_cache": 1,
                        "key": key,
                        "complete": True,
                        "bytes": size,
                        "instances": n,
                        "retrieved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "consumed": False,
                        "used": time.time(),
                        "endpoint": ep.display,
                        "seconds": round(time.monotonic() - t0, 3),
                    },
                )
                with self._locked():
                    self._evict_for(size)
                    target = self.path(key)
                    if self.is_complete(key):  # another run placed it meanwhile: use that one
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        if target.exists():  # a folder without medseg's complete marker under our name
                            if not (
                                target.is_dir()
                                and not target.is_symlink()
                                and not any(p.name == MARKER for p in target.iterdir())
                            ):
                                raise OutputError(
                                    "cache folder exists and is not a study medseg placed; remove it", path=target
                                )
                            stale = self.root / f"{TMP_PREFIX}stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                            os.rename(target, stale)
                            shutil.rmtree(stale, ignore_errors=True)
                        os.rename(tmp, target)
                    self._claim(key)
                log.info("%s: retrieved %d instances (%.1f MB) in %.2f s", key, n, size / 1e6, time.monotonic() - t0)
                return target
            except PacsError as exc:
                last = exc
                shutil.rmtree(tmp, ignore_errors=True)
                if attempt < attempts:
                    wait = min(2.0 ** (attempt - 1), 30.0)
                    log.info("%s: retrieval attempt %d failed (%s); retrying in %.0f s", key, attempt, exc, wait)
                    time.sleep(wait)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        raise last  # type: ignore[misc]


# --- the protocols ------------------------------------------------------------------------------------------


def _image_series(ep: Endpoint, study_uid: str, modalities, **kw) -> list:
    series = list_series(ep, study_uid, **kw)
    wanted = {m.upper() for m in modalities or ()}
    keep = [
        s
        for s in series
        if s.modality.upper() not in NON_IMAGE_MODALITIES and (not wanted or s.modality.upper() in wanted)
    ]
    if not keep:
        found = sorted({s.modality or "?" for s in series})
        raise InputError(
            f"no image series{' of modality ' + '/'.join(sorted(wanted)) if wanted else ''} in this study "
            f"(series found: {', '.join(found) or 'none'})"
        )
    return keep


def _name(sop_uid: str) -> str:
    return hashed(sop_uid, "in") + ".dcm"


def _check_count(ep: Endpoint, series, counts: dict) -> int:
    total = 0
    for s in series:
        got = counts.get(s.series_uid, 0)
        total += got
        if s.n_instances is not None and got < s.n_instances:
            raise PacsError(
                f"{ep.display}: incomplete retrieval, {got} of {s.n_instances} instances of a series arrived; "
                "check the PACS log"
            )
        if got == 0:
            raise PacsError(f"{ep.display}: no instance of a series arrived; check the PACS log")
    return total


def retrieve_study(
    ep: Endpoint, study_uid: str, dest: str | os.PathLike, *, modalities=(), max_bytes: int | None = None
) -> int:
    """Write the study's image series (of ``modalities`` when given) into ``dest``; returns the instance count.
    Over DICOMweb the bodies are streamed to disk and a study past ``max_bytes`` stops at once (``InputError``)."""
    dest = Path(dest)
    if ep.kind == "dicomweb":
        return _retrieve_dicomweb(ep, study_uid, dest, modalities, max_bytes)
    if ep.retrieve == "move":
        return _retrieve_move(ep, study_uid, dest, modalities)
    return _retrieve_get(ep, study_uid, dest, modalities)


_WADO_ACCEPT = 'multipart/related; type="application/dicom"'
_MAX_PART_HEADERS = 64 * 1024


class _Parts:
    """A ``multipart/related`` body fed in chunks and written part by part into files in ``dest`` (never more than a
    chunk and a delimiter in memory); each finished part is handed to ``done(path)``."""

    def __init__(self, boundary: bytes, dest: Path, done):
        self.delim = b"\r\n--" + boundary
        self.buf = bytearray(b"\r\n")  # the first boundary line then matches the delimiter too
        self.state = "preamble"
        self.dest, self.done = dest, done
        self.fh = None
        self.path: Path | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.state in ("preamble", "body"):
                i = self.buf.find(self.delim)
                if i < 0:
                    keep = len(self.delim) - 1  # a delimiter may straddle two chunks
                    if len(self.buf) > keep:
                        if self.state == "body":
                            self.fh.write(self.buf[:-keep])
                        del self.buf[:-keep]
                    return
                if self.state == "body":
                    self.fh.write(self.buf[:i])
                    self._close()
                del self.buf[: i + len(self.delim)]
                self.state = "boundary"
            if self.state == "boundary":  # "--" (the end) or transport padding and CRLF (a part follows)
                if len(self.buf) < 2:
                    return
                if self.buf[:2] == b"--":
                    self.state = "end"
                    continue
                j = self.buf.find(b"\r\n")
                if j < 0:
                    if len(self.buf) > 1024:
                        raise ValueError("a boundary line without end")
                    return
                del self.buf[: j + 2]
                self.state = "headers"
            if self.state == "headers":
                j = 0 if self.buf[:2] == b"\r\n" else self.buf.find(b"\r\n\r\n")
                if j < 0:
                    if len(self.buf) > _MAX_PART_HEADERS:
                        raise ValueError("part headers longer than 64 KiB")
                    return
                del self.buf[: j + (2 if j == 0 else 4)]
                self.path = self.dest / f"{TMP_PREFIX}part-{uuid.uuid4().hex[:12]}.dcm"
                self.fh = open(self.path, "wb")
                self.state = "body"
            if self.state == "end":
                self.buf.clear()  # the epilogue is ignored
                return

    def _close(self) -> None:
        self.fh.close()
        self.fh = None
        path, self.path = self.path, None
        self.done(path)

    def close(self, complete: bool = True) -> None:
        """After the last chunk: the closing delimiter must have arrived (``ValueError`` otherwise). A part cut
        short is removed."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        if complete and self.state != "end":
            raise ValueError("the body ended before its closing boundary")


def _boundary(content_type: str) -> bytes | None:
    from email.message import Message

    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/related":
        return None
    b = msg.get_param("boundary")
    return b.encode("latin-1") if isinstance(b, str) and 0 < len(b) <= 200 else None


def _instance_uids(path: Path) -> tuple[str, str] | None:
    """(SOPInstanceUID, SeriesInstanceUID) from a DICOM file's header (its large values not read); None when the
    file is not in the DICOM file format."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, defer_size=64 * 1024, specific_tags=["SOPInstanceUID", "SeriesInstanceUID"]
        )
        return str(ds.get("SOPInstanceUID", "") or ""), str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 (pydicom raises many types on a file that is not DICOM)
        return None


def _retrieve_dicomweb(ep: Endpoint, study_uid: str, dest: Path, modalities, max_bytes: int | None = None) -> int:
    session = web_session(ep)
    series = _image_series(ep, study_uid, modalities, session=session)
    counts: dict = {}
    received = 0
    doing = "the retrieval (WADO-RS)"
    for s in series:

        def place(path: Path, sid=s.series_uid) -> None:
            uids = _instance_uids(path)
            if uids is None:
                path.unlink()
                raise PacsError(f"{ep.display}: {doing} sent a part that is not a DICOM file; check the server")
            sop = uids[0] or uuid.uuid4().hex
            try:
                os.replace(path, dest / _name(sop))
            except OSError as exc:
                raise OutputError.from_os(exc, dest) from None
            counts[sid] = counts.get(sid, 0) + 1

        with web_request(
            ep,
            session,
            f"/studies/{study_uid}/series/{s.series_uid}",
            doing=doing,
            accept=_WADO_ACCEPT,
            deadline=ep.retrieve_deadline,
            option="retrieve_deadline",
        ) as resp:
            boundary = _boundary(resp.headers.get("Content-Type", ""))
            if boundary is None:
                raise PacsError(
                    f"{ep.display}: {doing} answered Content-Type "
                    f"{' '.join(resp.headers.get('Content-Type', 'none').split())[:80]!r}, not "
                    "multipart/related with a boundary; check the server"
                )
            parts = _Parts(boundary, dest, place)
            try:
                try:
                    for chunk in resp.iter_content(CHUNK):
                        received += len(chunk)
                        if max_bytes is not None and received > max_bytes:
                            raise InputError(
                                f"study is more than {max_bytes / GB:.2f} GB, larger than the cache limit "
                                f"({max_bytes / GB:.2f} GB); raise --cache-max-gb"
                            )
                        parts.feed(chunk)
                except BaseException:
                    parts.close(complete=False)
                    raise
                parts.close()
            except ValueError as exc:
                raise PacsError(
                    f"{ep.display}: {doing} sent a malformed multipart body ({exc}); check the server"
                ) from None
            except OSError as exc:
                raise OutputError.from_os(exc, dest) from None
    return _check_count(ep, series, counts)


def _storage_contexts():
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
    )
    from pynetdicom import StoragePresentationContexts
    from pynetdicom.sop_class import (
        CTImageStorage,
        EnhancedCTImageStorage,
        EnhancedMRImageStorage,
        EnhancedPETImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        LegacyConvertedEnhancedPETImageStorage,
        MRImageStorage,
        PositronEmissionTomographyImageStorage,
    )

    images = {
        CTImageStorage,
        EnhancedCTImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        MRImageStorage,
        EnhancedMRImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        PositronEmissionTomographyImageStorage,
        EnhancedPETImageStorage,
        LegacyConvertedEnhancedPETImageStorage,
    }
    rich = [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        RLELossless,
    ]
    out = []
    for cx in StoragePresentationContexts:
        out.append(
            (
                cx.abstract_syntax,
                rich if cx.abstract_syntax in images else [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
            )
        )
    return out


def _received_file(event) -> Path | None:
    """Where pynetdicom wrote the received dataset when ``STORE_RECV_CHUNKED_DATASET`` is on (None otherwise)."""
    try:
        return Path(event.dataset_path)
    except (AttributeError, TypeError):
        return None


def _received_uids(event) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a received instance, from its header only when it is on disk."""
    path = _received_file(event)
    if path is None:
        ds = event.dataset
    else:
        import pydicom

        ds = pydicom.dcmread(
            path, stop_before_pixels=True, defer_size=64 * 1024, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"]
        )
    return str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SeriesInstanceUID", "") or "")


def _writer(dest_for, counts: dict, lock: threading.Lock):
    """A C-STORE handler: the instance's encoded bytes (or pynetdicom's file of them) into ``dest_for(event)``
    (None: refuse)."""

    def handle(event):
        try:
            dest = dest_for(event)
            if dest is None:
                return 0xA801  # Refused: move destination unknown / not expected
            sop = str(event.request.AffectedSOPInstanceUID)
            src = _received_file(event)
            if src is not None:
                shutil.copyfile(src, dest / _name(sop))
            else:
                with open(dest / _name(sop), "wb") as fh:
                    fh.write(event.encoded_dataset(include_meta=True))
            sid = _received_uids(event)[1]
            with lock:
                counts[sid] = counts.get(sid, 0) + 1
            return 0x0000
        except OSError:
            return 0xA700  # Refused: out of resources
        except Exception:  # noqa: BLE001 (a dataset that cannot be decoded)
            return 0xC210

    return handle


def _series_identifier(study_uid: str, series_uid: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def _final(ep: Endpoint, responses, what: str) -> None:
    final, failed = None, 0
    for status, _identifier in responses:
        if not status:
            raise PacsError(f"{ep.display}: no answer to {what} (connection lost or timed out); check the PACS")
        final = int(status.Status)
        failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
    if final is None:
        raise PacsError(f"{ep.display}: no answer to {what}; check the PACS")
    if final == 0xB000 or failed:
        raise PacsError(
            f"{ep.display}: {what}: {failed or 'some'} instance(s) could not be sent to medseg; check the "
            "PACS log (transfer syntax or SOP class refused?)"
        )
    if final != 0x0000:
        hint = "; check that the PACS knows medseg's AE title as a move destination" if what == "C-MOVE" else ""
        raise PacsError(f"{ep.display}: {what} failed with status 0x{final:04X}{hint}")


def _retrieve_get(ep: Endpoint, study_uid: str, dest: Path, modalities) -> int:
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ae = make_ae(ep)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    contexts = _storage_contexts()[:126]
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    roles = [build_role(abstract, scp_role=True) for abstract, _ in contexts]
    counts: dict = {}
    handler = _writer(lambda event: dest, counts, threading.Lock())
    assoc = associate(ae, ep, "C-GET", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)])
    try:
        series = _image_series(ep, study_uid, modalities, assoc=assoc)
        for s in series:
            _final(
                ep,
                assoc.send_c_get(
                    _series_identifier(study_uid, s.series_uid), StudyRootQueryRetrieveInformationModelGet
                ),
                "C-GET",
            )
    finally:
        if assoc.is_established:
            assoc.release()
    return _check_count(ep, series, counts)


class _StorageSCP:
    """medseg's storage SCP for C-MOVE: one per (AE title, address, port) in this process, routing by study."""

    _servers: dict = {}
    _guard = threading.Lock()

    def __init__(self, ep: Endpoint):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.routes: dict[str, Path] = {}
        self.counts: dict[str, dict] = {}
        self.lock = threading.Lock()
        ae = make_ae(ep)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)

        def dest_for(event):
            study = _received_uids(event)[0]
            with self.lock:
                return self.routes.get(study)

        def handle(event):
            try:
                study = _received_uids(event)[0]
            except Exception:  # noqa: BLE001 (not decodable: the writer refuses it)
                study = ""
            with self.lock:
                counts = self.counts.get(study)
            return _writer(dest_for, counts if counts is not None else {}, self.lock)(event)

        try:
            self.server = ae.start_server(
                (ep.scp_host, ep.scp_port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
            )
        except OSError as exc:
            raise PacsError(
                f"{ep.display}: medseg's storage SCP cannot listen on {ep.scp_host}:{ep.scp_port} "
                f"({exc.strerror or exc}); choose another scp_port"
            ) from None

    @classmethod
    def get(cls, ep: Endpoint) -> _StorageSCP:
        key = (ep.calling_aet, ep.scp_host, ep.scp_port)
        with cls._guard:
            if key not in cls._servers:
                cls._servers[key] = cls(ep)
            return cls._servers[key]

    @classmethod
    def shutdown_all(cls) -> None:
        with cls._guard:
            for srv in cls._servers.values():
                with contextlib.suppress(Exception):
                    srv.server.shutdown()
            cls._servers.clear()

    @contextlib.contextmanager
    def route(self, study_uid: str, dest: Path):
        with self.lock:
            if study_uid in self.routes:
                raise PacsError(f"study retrieved twice at once over C-MOVE (key {hashed(study_uid, 'st')})")
            self.routes[study_uid] = dest
            self.counts[study_uid] = counts = {}
        try:
            yield counts
        finally:
            with self.lock:
                self.routes.pop(study_uid, None)
                self.counts.pop(study_uid, None)


def shutdown_storage_scps() -> None:
    """Stop medseg's C-MOVE storage SCPs of this process (the end of a run)."""
    _StorageSCP.shutdown_all()


def _retrieve_move(ep: Endpoint, study_uid: str, dest: Path, modalities) -> int:
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    )

    scp = _StorageSCP.get(ep)
    ae = make_ae(ep)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = associate(ae, ep, "C-MOVE")
    try:
        series = _image_series(ep, study_uid, modalities, assoc=assoc)
        with scp.route(study_uid, dest) as counts:
            for s in series:
                _final(
                    ep,
                    assoc.send_c_move(
                        _series_identifier(study_uid, s.series_uid),
                        ep.calling_aet,
                        StudyRootQueryRetrieveInformationModelMove,
                    ),
                    "C-MOVE",
                )
            result = _check_count(ep, series, dict(counts))
    finally:
        if assoc.is_established:
            assoc.release()
    return result
