"""The receiving node's spool: received instances on disk, one folder per study, and each study's state.

```
RUN_DIR/
  spool/<study>/<instance>.dcm   received instances as sent (DICOM file format); <study> = ``st`` + salted hash of the
                                 StudyInstanceUID (``medseg.io.dicom.scan.pseudonym``, the keys medseg scan uses),
                                 <instance> = ``in`` + salted hash of the SOPInstanceUID
  studies/<study>.json           state: received | complete | processing | done | failed (+ counts and times)
```

No patient name, ID or date is ever part of a name. An instance is written to
a temporary sibling (``.tmp-medseg-*``), flushed with ``fsync``, renamed onto
its name and the folder is ``fsync``'ed: once :meth:`Spool.store` returns, the
instance survives a crash or power loss, and only then is the C-STORE
acknowledged. A killed listener leaves at most temporaries, which
:meth:`Spool.recover` removes (medseg's own names only).

A study is *complete* once no instance arrived for it for the quiet period.
The registry keeps per study the time of its last instance, the writes in
flight and whether instances arrived while it was being processed (it is then
processed again), so a study's folder is never removed while a write to it is
under way. The spool's size is counted as instances are written and removed;
a write that would take it past its limit raises :class:`SpoolFull` and
nothing already spooled is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import OutputError
from medseg.io.atomic import TMP_PREFIX, ensure_dir
from medseg.pacs.keys import salt, study_key  # noqa: F401  (study_key: part of this module's API)

log = logging.getLogger("medseg.listen")

STATUSES = ("received", "complete", "processing", "done", "failed")
GB = 1024**3
CHUNK = 1024**2


class SpoolFull(Exception):  # noqa: N818 (public name medseg.service.scp catches: a refusal signal, not an error)
    """Storing would take the spool past its size limit."""


def instance_name(sop_uid: str) -> str:
    """``in`` + 20 hex digits of the salted SHA-256 of the SOPInstanceUID, ``.dcm``."""
    return "in" + hashlib.sha256(f"{salt()}\x00{sop_uid}".encode()).hexdigest()[:20] + ".dcm"


def received_file(event) -> Path | None:
    """The file pynetdicom received a C-STORE's dataset into (``_config.STORE_RECV_CHUNKED_DATASET``), or None."""
    try:
        return Path(event.dataset_path)
    except (AttributeError, TypeError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data) -> None:
    """Write ``data`` (bytes, or a ``Path`` whose file is copied in chunks: never held in memory) to ``path``
    through a temporary sibling: fsync'ed file, rename, fsync'ed folder."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if isinstance(data, Path):
                with open(data, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError.from_os(exc, path) from None


def _same(path: Path, data) -> bool:
    """Is the file at ``path`` byte for byte ``data`` (bytes or a ``Path``)? Compared in chunks."""
    if isinstance(data, Path):
        import filecmp

        return filecmp.cmp(path, data, shallow=False)
    return path.read_bytes() == data


@dataclass
class Study:
    key: str
    status: str = "received"
    first_received: float = 0.0
    last_received: float = 0.0  # monotonic clock of the last instance (in memory; a restart starts it afresh)
    instances: int = 0  # instances in the spool folder
    bytes: int = 0
    refused: int = 0  # instances refused (spool full, write failed)
    missing: set = field(default_factory=set)  # names of refused instances not received since: not complete
    warned_missing: bool = False  # (not persisted)
    attempts: int = 0
    error: str = ""
    inflight: int = 0  # writes under way (not persisted)
    dirty: bool = False  # instances arrived while processing: process again (not persisted)
    calling_aets: list = field(default_factory=list)

    def record(self) -> dict:
        return {
            "study": self.key,
            "status": self.status,
            "instances": self.instances,
            "bytes": self.bytes,
            "refused": self.refused,
            "missing": sorted(self.missing),
            "attempts": self.attempts,
            "error": self.error,
            "first_received": self.first_received,
            "calling_aets": self.calling_aets,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


class Spool:
    """The spool of one listener (RUN_DIR/spool, RUN_DIR/studies); thread-safe."""

    def __init__(self, root: str | os.PathLike, *, max_bytes: int):
        self.root = Path(root).resolve()
        self.spool_dir = self.root / "spool"
        self.studies_dir = self.root / "studies"
        self.max_bytes = int(max_bytes)
        self.used_bytes = 0
        self.studies: dict[str, Study] = {}
        self.lock = threading.Lock()

    # -- start: recover what a previous listener left -------------------------------------------------------
    def recover(self) -> list[str]:
        """Remove temporaries, load every study's state, count the spool; returns the studies to process now.

        ``complete`` and ``processing`` studies (a listener stopped or killed
        before it finished them) and ``failed`` ones whose instances are still
        spooled are processed again; ``received`` ones wait for a quiet period
        from now; ``done`` ones are left alone (their spool folder, if still
        there, is removed by the caller unless the spool is kept).
        """
        ensure_dir(self.spool_dir)
        ensure_dir(self.studies_dir)
        for d in (self.spool_dir, self.studies_dir):
            for dirpath, _dirs, files in os.walk(d):
                for name in files:
                    f = Path(dirpath) / name
                    if name.startswith(TMP_PREFIX) and not f.is_symlink():
                        with contextlib.suppress(OSError):
                            f.unlink()
        now = time.monotonic()
        todo = []
        keys = {p.stem for p in self.studies_dir.glob("st*.json")} | {
            p.name for p in self.spool_dir.glob("st*") if p.is_dir()
        }
        for key in sorted(keys):
            rec = {}
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads((self.studies_dir / f"{key}.json").read_text())
            st = Study(
                key,
                status=rec.get("status") if rec.get("status") in STATUSES else "received",
                first_received=float(rec.get("first_received") or time.time()),
                last_received=now,
                refused=int(rec.get("refused") or 0),
                attempts=int(rec.get("attempts") or 0),
                error=str(rec.get("error") or ""),
                calling_aets=list(rec.get("calling_aets") or []),
                missing=set(rec.get("missing") or ()),
            )
            folder = self.spool_dir / key
            files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
            st.instances = len(files)
            st.bytes = sum(f.stat().st_size for f in files)
            self.used_bytes += st.bytes
            if st.status in ("complete", "processing") or (st.status == "failed" and st.instances):
                st.status = "complete"
                todo.append(key)
            if st.instances or st.missing or st.status != "received":
                self.studies[key] = st
                self.save(st)
        return todo

    # -- state records --------------------------------------------------------------------------------------
    def save(self, st: Study) -> None:
        durable_write(
            self.studies_dir / f"{st.key}.json", (json.dumps(st.record(), indent=2, sort_keys=True) + "\n").encode()
        )

    def set_status(self, key: str, status: str, **extra) -> Study:
        with self.lock:
            st = self.studies[key]
            st.status = status
            for k, v in extra.items():
                setattr(st, k, v)
            self.save(st)
            return st

    def study_folder(self, key: str) -> Path:
        return self.spool_dir / key

    # -- receiving ------------------------------------------------------------------------------------------
    def store(self, key: str, name: str, data, *, calling_aet: str = "") -> bool:
        """Put one instance on disk (durably) before returning; False when the same instance was already there.
        ``data``: its bytes, or a ``Path`` to the file pynetdicom received it into (copied in chunks; its size is
        checked against the limit before anything is read).

        Raises :class:`SpoolFull` (nothing written) or ``OutputError`` (the write failed; nothing kept).
        """
        try:
            n = data.stat().st_size if isinstance(data, Path) else len(data)
        except OSError as exc:
            raise OutputError.from_os(exc, data) from None
        path = self.spool_dir / key / name
        with self.lock:
            st = self.studies.get(key)
            if st is None:
                st = Study(
                    key,
                    first_received=time.time(),
                    last_received=time.monotonic(),
                    calling_aets=[calling_aet] if calling_aet else [],
                )
                self.save(st)  # the study exists on disk before its first instance (raises: nothing kept)
                self.studies[key] = st
            elif calling_aet and calling_aet not in st.calling_aets:
                st.calling_aets.append(calling_aet)
            with contextlib.suppress(OSError):
                if path.stat().st_size == n and _same(path, data):
                    st.last_received = time.monotonic()
                    return False  # a resend of what is already on disk: acknowledged as stored, not rewritten
            if self.used_bytes + n > self.max_bytes:
                self._refused(st, name)
                raise SpoolFull(f"{self.used_bytes} + {n} > {self.max_bytes} bytes")
            self.used_bytes += n
            st.inflight += 1
        ok = False
        try:
            ensure_dir(path.parent)
            old = path.stat().st_size if path.exists() else None
            durable_write(path, data)
            ok = True
        finally:
            with self.lock:
                st.inflight -= 1
                st.last_received = time.monotonic()
                if ok:
                    if name in st.missing:
                        st.missing.discard(name)
                        with contextlib.suppress(OutputError):
                            self.save(st)
                    if old is None:
                        st.instances += 1
                        st.bytes += n
                    else:  # the same SOP instance with other bytes replaced the earlier file
                        self.used_bytes -= old
                        st.bytes += n - old
                    if st.status == "processing":
                        st.dirty = True
                    elif st.status != "received":
                        st.status = "received"
                        st.error = ""
                        with contextlib.suppress(OutputError):
                            self.save(st)
                else:
                    self.used_bytes -= n
                    self._refused(st, name)
        return True

    def _refused(self, st: Study, name: str) -> None:
        """Caller holds the lock: the study is not complete until this instance arrives."""
        st.refused += 1
        if name not in st.missing:
            st.missing.add(name)
            st.warned_missing = False
            with contextlib.suppress(OutputError):
                self.save(st)

    def inflight(self) -> int:
        with self.lock:
            return sum(st.inflight for st in self.studies.values())

    def due(self, quiet_seconds: float) -> tuple[list[str], list[Study]]:
        """Studies with no instance for ``quiet_seconds`` and no write under way: marked ``complete`` and returned,
        with the quiet ones held back because instances of theirs were refused (each returned once)."""
        now = time.monotonic()
        out, held = [], []
        with self.lock:
            for st in self.studies.values():
                if st.status == "received" and st.inflight == 0 and now - st.last_received >= quiet_seconds:
                    if st.missing:
                        if not st.warned_missing:
                            st.warned_missing = True
                            held.append(st)
                    elif st.instances:
                        st.status = "complete"
                        self.save(st)
                        out.append(st.key)
        return out, held

    def start_processing(self, key: str) -> bool:
        """``complete`` -> ``processing`` (False when new instances made it ``received`` again meanwhile)."""
        with self.lock:
            st = self.studies.get(key)
            if st is None or st.status != "complete":
                return False
            st.status, st.dirty = "processing", False
            st.attempts += 1
            self.save(st)
            return True

    def finish(self, key: str, ok: bool, error: str = "", *, keep: bool) -> str:
        """After the pipeline: ``done`` (its spool folder removed unless ``keep``) or ``failed``; ``received``
        again when instances arrived meanwhile. Returns the new status."""
        with self.lock:
            st = self.studies[key]
            if st.dirty:
                st.status, st.dirty, st.last_received = "received", False, time.monotonic()
            else:
                st.status, st.error = ("done", "") if ok else ("failed", error)
            self.save(st)
            if st.status == "done" and not keep:
                self._remove_folder(st)
            return st.status

    def _remove_folder(self, st: Study) -> None:
        """Caller holds the lock; no write to this study is under way (its status is not ``received``)."""
        folder = self.spool_dir / st.key
        if st.inflight or not folder.is_dir():
            return
        shutil.rmtree(folder, ignore_errors=True)
        self.used_bytes -= st.bytes
        st.instances = st.bytes = 0

    def remove_done_folders(self) -> None:
        with self.lock:
            for st in self.studies.values():
                if st.status == "done":
                    self._remove_folder(st)

    def counts(self) -> dict:
        with self.lock:
            out = dict.fromkeys(STATUSES, 0)
            for st in self.studies.values():
                out[st.status] += 1
            return out
