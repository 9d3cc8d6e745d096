"""Endpoint specs: where a PACS is and how medseg talks to it.

Two forms (``medseg run --input SPEC``, ``stages.export.destination: SPEC``)::

    dicomweb+http://HOST:PORT/dicom-web          QIDO-RS, WADO-RS, STOW-RS (also dicomweb+https://, or plain http(s)://)
    dimse://CALLED_AET@HOST:PORT                 C-FIND, C-GET / C-MOVE, C-STORE

with options as a query string (``dimse://ORTHANC@pacs:4242?calling=MEDSEG&retrieve=move&scp_port=11112``):

    calling=AET       dimse: medseg's own (calling) AE title (default MEDSEG)
    retrieve=get|move dimse: C-GET on the same association (default), or C-MOVE to medseg's storage SCP
    scp_port=N        dimse, retrieve=move: the port medseg's storage SCP listens on (the PACS must know
                      calling AET at this host and port as a move destination)
    scp_host=ADDR     dimse, retrieve=move: the address the storage SCP binds (default 127.0.0.1; 0.0.0.0: all)
    timeout=S         seconds to wait for a connection or for each read of a response (default 30)

Bounds on what a server may send (a server that exceeds one gets a one-line PacsError, exit code 3):

    max_studies=N     at most N studies per study search (QIDO-RS or C-FIND; default 10000): narrow the query
    max_series=N      at most N series per study (default 1000)
    max_pages=N       dicomweb: at most N pages of 500 answers per search (default 100)
    query_deadline=S  dicomweb: each QIDO-RS request ends within S seconds in all (default 60), however slowly
                      the server answers (``timeout`` bounds each read only)
    retrieve_deadline=S  dicomweb: each WADO-RS request (one series) ends within S seconds (default 300)

A QIDO-RS answer is read up to 64 MiB (``MAX_JSON_BYTES``) and must be DICOM JSON (a list of objects whose
attributes are ``{"vr": ..., "Value": [...]}``); a WADO-RS answer is streamed to disk, instance by instance,
never held in memory whole.

DICOMweb credentials: ``user:password@`` in the URL (HTTP basic), or a bearer token in the environment
variable ``MEDSEG_DICOMWEB_TOKEN``; neither is ever written to the run directory or printed
(``Endpoint.display`` drops them).

A spec that cannot be parsed raises ``ConfigError`` (one line, exit code 2). A server that cannot be
reached, refuses the association or answers with an HTTP error raises :class:`PacsError` (one line naming
the endpoint and what to do, exit code 3).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field

from medseg.errors import ConfigError, MedsegError, OptionalDependencyError

INSTALL_HINT = "DICOM networking needs pynetdicom and dicomweb-client: pip install 'medseg[pacs]'"
OPTIONS = {
    "calling": "dimse",
    "retrieve": "dimse",
    "scp_port": "dimse",
    "scp_host": "dimse",
    "timeout": "any",
    "max_studies": "any",
    "max_series": "any",
    "max_pages": "dicomweb",
    "query_deadline": "dicomweb",
    "retrieve_deadline": "dicomweb",
}
MAX_STUDIES = 10000
MAX_SERIES = 1000
MAX_PAGES = 100
QUERY_DEADLINE = 60.0
RETRIEVE_DEADLINE = 300.0
MAX_JSON_BYTES = 64 * 1024**2
CHUNK = 1024**2
DEFAULT_CALLING_AET = "MEDSEG"
_SCHEMES = ("dicomweb+http", "dicomweb+https", "http", "https", "dimse")
_SPEC_RE = re.compile(r"^(dicomweb\+https?|https?|dimse)://", re.IGNORECASE)


class PacsError(MedsegError):
    """A PACS cannot be reached, refuses medseg, or answers with an error (exit code 3: check it and retry)."""

    exit_code = 3


def is_endpoint(value) -> bool:
    """Does ``value`` look like an endpoint spec (rather than a file or folder)?"""
    return isinstance(value, str) and bool(_SPEC_RE.match(value.strip()))


def check_aet(aet: str, what: str) -> str:
    aet = aet.strip()
    if not aet or len(aet) > 16 or "\\" in aet or not all(32 <= ord(ch) < 127 for ch in aet):
        raise ConfigError(f"{what}: {aet!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return aet


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "dicomweb" or "dimse"
    host: str
    port: int
    url: str = ""  # dicomweb: the service root without credentials, e.g. http://127.0.0.1:8042/dicom-web
    called_aet: str = ""  # dimse: the PACS's AE title
    calling_aet: str = DEFAULT_CALLING_AET  # dimse: medseg's AE title
    retrieve: str = "get"  # dimse: get | move
    scp_port: int = 0  # dimse, retrieve=move: medseg's storage SCP port
    scp_host: str = "127.0.0.1"
    timeout: float = 30.0
    max_studies: int = MAX_STUDIES
    max_series: int = MAX_SERIES
    max_pages: int = MAX_PAGES
    query_deadline: float = QUERY_DEADLINE
    retrieve_deadline: float = RETRIEVE_DEADLINE
    username: str = field(default="", repr=False, compare=False)
    password: str = field(default="", repr=False, compare=False)

    @property
    def display(self) -> str:
        """The spec as it may be shown and recorded: no credentials."""
        if self.kind == "dicomweb":
            return f"dicomweb+{self.url}"
        return f"dimse://{self.called_aet}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.display

    def to_record(self) -> dict:
        """What run.json and the export records keep about the endpoint."""
        rec = {"endpoint": self.display, "kind": self.kind}
        if self.kind == "dimse":
            rec.update(calling_aet=self.calling_aet, retrieve=self.retrieve)
        return rec


def _bad(spec: str, what: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{what} {_redact(spec)!r}: {problem}; expected dicomweb+http://HOST:PORT/PATH or "
        "dimse://AET@HOST:PORT[?calling=MEDSEG&retrieve=get|move&scp_port=N]"
    )


def _redact(spec: str) -> str:
    return (
        re.sub(r"(://)[^/@]*@", r"\1***@", spec)
        if "dicomweb" in spec.lower() or spec.lower().startswith("http")
        else spec
    )


@dataclass
class _ParsedSpec:
    """An endpoint spec split into its parts, for the checks that follow; ``bad`` words their errors."""

    spec: str
    what: str
    scheme: str
    parts: urllib.parse.SplitResult
    host: str
    port: int | None
    opts: dict

    def bad(self, problem: str) -> ConfigError:
        return _bad(self.spec, self.what, problem)

    def number(self, key, cast, default, ok, rule):
        """A numeric option, checked (``default`` when it is not given)."""
        if key not in self.opts:
            return default
        try:
            value = cast(self.opts[key])
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise self.bad(f"{key} must be {rule}")
        return value


def _spec_options(spec: str, what: str, query: str) -> dict:
    """The ``?key=value`` options of ``spec`` (the last value of a repeated key); unknown keys are refused."""
    opts = {}
    for key, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, list(OPTIONS), n=1)
            raise _bad(
                spec,
                what,
                f"unknown option {key!r}"
                + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(OPTIONS)})"),
            )
        opts[key] = values[-1]
    return opts


def parse_endpoint(spec: str, *, what: str = "endpoint") -> Endpoint:
    """Parse and check ``spec`` (see the module docstring); ``ConfigError`` naming ``what`` when it is malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{what}: empty endpoint; expected dicomweb+http://HOST:PORT/PATH or dimse://AET@HOST:PORT")
    spec = spec.strip()
    m = _SPEC_RE.match(spec)
    if not m:
        raise _bad(spec, what, f"unknown scheme (known: {', '.join(s + '://' for s in _SCHEMES)})")
    scheme = m.group(1).lower()
    try:
        parts = urllib.parse.urlsplit(spec)
        port = parts.port
    except ValueError as exc:
        raise _bad(spec, what, str(exc)) from None
    host = parts.hostname or ""
    if not host:
        raise _bad(spec, what, "no host")
    p = _ParsedSpec(spec, what, scheme, parts, host, port, _spec_options(spec, what, parts.query))
    timeout = p.number("timeout", float, 30.0, lambda v: 0 < v <= 3600, "seconds between 0 and 3600")
    bounds = {
        "max_studies": p.number("max_studies", int, MAX_STUDIES, lambda v: v > 0, "a positive whole number"),
        "max_series": p.number("max_series", int, MAX_SERIES, lambda v: v > 0, "a positive whole number"),
    }
    for key in p.opts:
        if OPTIONS[key] == ("dicomweb" if scheme == "dimse" else "dimse"):
            raise p.bad(f"option {key!r} is for {OPTIONS[key]}:// endpoints")
    if scheme != "dimse":
        return _dicomweb_endpoint(p, timeout, bounds)
    return _dimse_endpoint(p, timeout, bounds)


def _dicomweb_endpoint(p: _ParsedSpec, timeout: float, bounds: dict) -> Endpoint:
    """The DICOMweb endpoint of ``p``, after its DICOMweb-only bounds are checked."""
    bounds.update(
        max_pages=p.number("max_pages", int, MAX_PAGES, lambda v: v > 0, "a positive whole number"),
        query_deadline=p.number(
            "query_deadline", float, QUERY_DEADLINE, lambda v: 0 < v <= 86400, "seconds between 0 and 86400"
        ),
        retrieve_deadline=p.number(
            "retrieve_deadline", float, RETRIEVE_DEADLINE, lambda v: 0 < v <= 86400, "seconds between 0 and 86400"
        ),
    )
    host, port, parts = p.host, p.port, p.parts
    web = p.scheme.removeprefix("dicomweb+")
    netloc = host if port is None else f"{host}:{port}"
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]" if port is None else f"[{host}]:{port}"
    url = urllib.parse.urlunsplit((web, netloc, parts.path.rstrip("/"), "", ""))
    return Endpoint(
        "dicomweb",
        host,
        port or (443 if web == "https" else 80),
        url=url,
        timeout=timeout,
        **bounds,
        username=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
    )


def _dimse_endpoint(p: _ParsedSpec, timeout: float, bounds: dict) -> Endpoint:
    """The DIMSE endpoint of ``p``: path, AE titles, port and retrieve options checked in that order."""
    spec, what, parts, port, opts = p.spec, p.what, p.parts, p.port, p.opts
    if parts.path not in ("", "/"):
        raise p.bad("a dimse:// endpoint has no path")
    if not parts.username:
        raise p.bad("no AE title (dimse://AET@HOST:PORT)")
    if port is None or not 0 < port < 65536:
        raise p.bad("no port (dimse://AET@HOST:PORT)")
    called = check_aet(urllib.parse.unquote(parts.username), f"{what} {spec!r}: called AE title")
    calling = check_aet(opts.get("calling", DEFAULT_CALLING_AET), f"{what} {spec!r}: calling")
    retrieve = opts.get("retrieve", "get").lower()
    if retrieve not in ("get", "move"):
        raise p.bad(f"retrieve must be 'get' or 'move', not {retrieve!r}")
    scp_port = p.number("scp_port", int, 0, lambda v: 0 < v < 65536, "a TCP port (1-65535)")
    if retrieve == "move" and not scp_port:
        raise p.bad(
            f"retrieve=move needs scp_port=N (the port of medseg's storage SCP, known to the PACS as AE {calling!r})"
        )
    return Endpoint(
        "dimse",
        p.host,
        port,
        called_aet=called,
        calling_aet=calling,
        retrieve=retrieve,
        scp_port=scp_port,
        scp_host=opts.get("scp_host", "127.0.0.1") or "127.0.0.1",
        timeout=timeout,
        **bounds,
    )


# --- the libraries -------------------------------------------------------------------------------------------


def require_pynetdicom():
    try:
        import pynetdicom
    except ImportError:
        raise OptionalDependencyError(INSTALL_HINT) from None
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # medseg reports failures itself, in one line
    return pynetdicom


def require_dicomweb():
    try:
        import dicomweb_client
    except ImportError:
        raise OptionalDependencyError(INSTALL_HINT) from None
    for name in ("dicomweb_client", "retrying"):  # retrying logs each failed request with a traceback
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return dicomweb_client


def dicomweb_client(ep: Endpoint):
    """A ``dicomweb_client.DICOMwebClient`` for ``ep`` (retries off: medseg retries with its own back-off)."""
    require_dicomweb()
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if ep.username:
        session.auth = (ep.username, ep.password)
    headers = {}
    token = os.environ.get("MEDSEG_DICOMWEB_TOKEN", "")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(ep.url, session=session, headers=headers or None, timeout=ep.timeout)
    client.set_http_retry_params(retry=False)
    return client


# --- bounded HTTP: every request has a total deadline -----------------------------------------------------------
#
# requests' ``timeout`` bounds each read, so a server that drips a byte at a time is waited for for ever. Each
# request medseg makes runs under a ``_Watch``: the connections it uses register their sockets (urllib3
# connection classes below, through a thread-local), and when the deadline passes a timer shuts those sockets
# down, which ends any read under way at once; the request then fails with a one-line PacsError.

_local = threading.local()


class _Watch:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._socks: list = []
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def add(self, sock) -> None:
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            self._socks.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._socks:
                _shut(sock)

    def __enter__(self):
        _local.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._done = True
        self._timer.cancel()
        _local.watch = None


def _shut(sock) -> None:
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


def _register(sock) -> None:
    watch = getattr(_local, "watch", None)
    if watch is not None:
        watch.add(sock)


_POOLS: dict = {}


def _pool_classes() -> dict:
    """urllib3 pool classes whose connections register their sockets with the request's watch."""
    if not _POOLS:
        from urllib3.connection import HTTPConnection, HTTPSConnection
        from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

        def watched(base):
            class Watched(base):
                def connect(self):
                    super().connect()
                    _register(self.sock)

                def request(self, *args, **kwargs):
                    _register(self.sock)
                    return super().request(*args, **kwargs)

            Watched.__name__ = f"Watched{base.__name__}"
            return Watched

        class Pool(HTTPConnectionPool):
            ConnectionCls = watched(HTTPConnection)

        class SPool(HTTPSConnectionPool):
            ConnectionCls = watched(HTTPSConnection)

        _POOLS.update(http=Pool, https=SPool)
    return _POOLS


def web_session(ep: Endpoint):
    """A ``requests.Session`` for ``ep`` (credentials, token) whose requests :func:`web_request` can bound."""
    require_dicomweb()
    import requests
    from requests.adapters import HTTPAdapter

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = _pool_classes()

        def proxy_manager_for(self, *args, **kwargs):
            manager = super().proxy_manager_for(*args, **kwargs)
            manager.pool_classes_by_scheme = _pool_classes()
            return manager

    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, Adapter())
    if ep.username:
        session.auth = (ep.username, ep.password)
    token = os.environ.get("MEDSEG_DICOMWEB_TOKEN", "")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    session.headers["Accept-Encoding"] = "identity"  # what is counted is what arrives: no decompression bombs
    return session


def deadline_error(ep: Endpoint, doing: str, seconds: float, option: str) -> PacsError:
    return PacsError(
        f"{ep.display}: {doing} did not finish within its deadline of {seconds:g} s; the server is too slow "
        f"or answers without end; check it (or raise ?{option}=S)"
    )


@contextlib.contextmanager
def web_request(
    ep: Endpoint, session, path: str, *, doing: str, accept: str, deadline: float, option: str, params=None
):
    """GET ``ep.url + path`` with the body streamed (``resp.iter_content``), all of it within ``deadline`` seconds.

    Any failure, in the request or while the caller reads the body, becomes a one-line :class:`PacsError`
    (the deadline's own when it passed); the caller's own MedsegErrors pass through.
    """
    watch = _Watch(deadline)
    with watch:
        try:
            resp = session.get(
                ep.url + path,
                params=params,
                headers={"Accept": accept},
                stream=True,
                timeout=(min(ep.timeout, 30.0), ep.timeout),
            )
        except Exception as exc:  # noqa: BLE001 (requests raises many types)
            raise (
                deadline_error(ep, doing, deadline, option) if watch.expired else http_error(exc, ep, doing)
            ) from None
        try:
            if resp.status_code >= 400:
                try:
                    resp.raise_for_status()
                except Exception as exc:  # noqa: BLE001
                    raise http_error(exc, ep, doing) from None
            yield resp
            if watch.expired:  # the body ended because its sockets were shut down
                raise deadline_error(ep, doing, deadline, option)
        except MedsegError:
            if watch.expired:
                raise deadline_error(ep, doing, deadline, option) from None
            raise
        except Exception as exc:  # noqa: BLE001
            raise (
                deadline_error(ep, doing, deadline, option) if watch.expired else http_error(exc, ep, doing)
            ) from None
        finally:
            resp.close()


def qido(ep: Endpoint, session, path: str, params: dict, doing: str) -> list[dict]:
    """One QIDO-RS request: its DICOM JSON answer (a list of objects), read to at most ``MAX_JSON_BYTES``."""
    import json

    with web_request(
        ep,
        session,
        path,
        doing=doing,
        accept="application/dicom+json, application/json",
        deadline=ep.query_deadline,
        option="query_deadline",
        params=params,
    ) as resp:
        if resp.status_code == 204:
            return []
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            raise _too_large(ep, doing, int(declared))
        body = bytearray()
        for chunk in resp.iter_content(CHUNK):
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise _too_large(ep, doing, None)
    if not body.strip():
        return []
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise PacsError(
            f"{ep.display}: {doing} answered something that is not JSON ({exc.msg} at byte {exc.pos}); "
            "check the server's DICOMweb root and its log"
        ) from None
    finally:
        del body
    if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
        raise PacsError(
            f"{ep.display}: {doing} answered JSON that is not DICOM JSON (a list of objects, one per "
            f"match; got {_shape(answer)}); check the server"
        )
    return answer


def _too_large(ep: Endpoint, doing: str, size: int | None) -> PacsError:
    got = f"{size / 1024**2:.0f} MiB" if size else f"more than {MAX_JSON_BYTES // 1024**2} MiB"
    return PacsError(
        f"{ep.display}: {doing} answered {got} of JSON for one page (limit {MAX_JSON_BYTES // 1024**2} "
        "MiB); the server ignores limit=; check it or narrow the query"
    )


def _shape(value) -> str:
    if isinstance(value, list):
        bad = next((v for v in value if not isinstance(v, dict)), None)
        return f"a list holding {type(bad).__name__} {' '.join(repr(bad).split())[:40]}"
    return f"{type(value).__name__} {' '.join(repr(value).split())[:40]}"


def http_error(exc: Exception, ep: Endpoint, doing: str) -> PacsError:
    """A requests / dicomweb-client exception -> one line naming the endpoint and what to do."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {
            401: "check the credentials (user:password@ in the URL or MEDSEG_DICOMWEB_TOKEN)",
            403: "the server refuses medseg; check its access rules",
            404: "check the DICOMweb root in the URL (e.g. /dicom-web)",
        }.get(code, "the server reported an error; check its log" if code >= 500 else "check the request")
        return PacsError(
            f"{ep.display}: {doing} failed with HTTP {code} {exc.response.reason or ''}".rstrip() + f"; {hint}"
        )
    if isinstance(exc, requests.Timeout):
        return PacsError(
            f"{ep.display}: {doing} timed out after {ep.timeout:g} s; check that the server is up (or raise ?timeout=S)"
        )
    if isinstance(exc, requests.ConnectionError):
        return PacsError(
            f"{ep.display}: cannot connect for {doing}; check the host and port and that the DICOMweb "
            "server is running and reachable"
        )
    return PacsError(f"{ep.display}: {doing} failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")


def make_ae(ep: Endpoint):
    """A pynetdicom ``AE`` with medseg's calling AE title and the endpoint's timeouts."""
    require_pynetdicom()
    from pynetdicom import AE

    ae = AE(ae_title=ep.calling_aet or DEFAULT_CALLING_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ep.timeout
    ae.connection_timeout = min(ep.timeout, 30.0)
    ae.maximum_pdu_size = 0  # no limit on what we accept
    return ae


def associate(ae, ep: Endpoint, doing: str, **kw):
    """``ae.associate`` with the endpoint; a refused or failed association raises :class:`PacsError`."""
    assoc = ae.associate(ep.host, ep.port, ae_title=ep.called_aet, **kw)
    if assoc.is_established:
        return assoc
    rsp = assoc.acceptor.primitive if assoc.is_rejected else _unread_rejection(assoc) if assoc.is_aborted else None
    if rsp is not None:
        reason = ""
        try:
            reason = f" ({rsp.reason_str})"
        except Exception:  # noqa: BLE001 (only for the message)
            reason = ""
        raise PacsError(
            f"{ep.display}: association for {doing} rejected{reason}; check that the PACS knows medseg's "
            f"AE title {ep.calling_aet!r} (and this host) and that the called AE title {ep.called_aet!r} "
            "is right"
        )
    if assoc.is_aborted and _reachable(ep):
        raise PacsError(
            f"{ep.display}: association for {doing} rejected or aborted by the peer; check that the PACS "
            f"knows medseg's AE title {ep.calling_aet!r} (and this host), that the called AE title "
            f"{ep.called_aet!r} is right and that the PACS accepts {doing} (its log says why)"
        )
    raise PacsError(
        f"{ep.display}: cannot connect for {doing}; check the host and port and that the DICOM server is "
        "running and reachable"
    )


def _unread_rejection(assoc):
    """The A-ASSOCIATE-RJ of an association pynetdicom reports as aborted, if it arrived.

    pynetdicom (3.0) checks that the connection is up only after the peer's answer may have been read: a PACS
    that rejects at once and closes the connection (Orthanc does) is then, now and again under load, taken for a
    failed connection and the association aborted, with the rejection left unread in the DUL's queue.
    """
    try:
        pending = list(assoc.dul.to_user_queue.queue)
    except Exception:  # noqa: BLE001 (pynetdicom internals: only a better message is lost)
        return None
    return next(
        (p for p in pending if getattr(p, "result", None) in (0x01, 0x02) and type(p).__name__ == "A_ASSOCIATE"), None
    )


def _reachable(ep: Endpoint) -> bool:
    """Does anything accept a TCP connection at the endpoint? (pynetdicom reports a refused connection as an abort.)"""
    import socket

    try:
        with socket.create_connection((ep.host, ep.port), timeout=min(ep.timeout, 10.0)):
            return True
    except OSError:
        return False


def echo(ep: Endpoint) -> None:
    """Check the endpoint answers (C-ECHO, or a QIDO-RS search with limit 1); ``PacsError`` when not."""
    if ep.kind == "dicomweb":
        qido(ep, web_session(ep), "/studies", {"limit": 1, "includefield": "StudyInstanceUID"}, "a study search")
        return
    from pynetdicom.sop_class import Verification

    ae = make_ae(ep)
    ae.add_requested_context(Verification)
    assoc = associate(ae, ep, "C-ECHO")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0:
        raise PacsError(f"{ep.display}: C-ECHO failed; check the PACS")
