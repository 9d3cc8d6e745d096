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
    timeout=S         seconds to wait for a connection or a response (default 30)

DICOMweb credentials: ``user:password@`` in the URL (HTTP basic), or a bearer token in the environment
variable ``MEDSEG_DICOMWEB_TOKEN``; neither is ever written to the run directory or printed
(``Endpoint.display`` drops them).

A spec that cannot be parsed raises ``ConfigError`` (one line, exit code 2). A server that cannot be
reached, refuses the association or answers with an HTTP error raises :class:`PacsError` (one line naming
the endpoint and what to do, exit code 3).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass, field

from medseg.errors import ConfigError, MedsegError, OptionalDependencyError

INSTALL_HINT = "DICOM networking needs pynetdicom and dicomweb-client: pip install 'medseg[pacs]'"
OPTIONS = {"calling": "dimse", "retrieve": "dimse", "scp_port": "dimse", "scp_host": "dimse", "timeout": "any"}
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
    return ConfigError(f"{what} {_redact(spec)!r}: {problem}; expected dicomweb+http://HOST:PORT/PATH or "
                       "dimse://AET@HOST:PORT[?calling=MEDSEG&retrieve=get|move&scp_port=N]")


def _redact(spec: str) -> str:
    return re.sub(r"(://)[^/@]*@", r"\1***@", spec) if "dicomweb" in spec.lower() or spec.lower().startswith("http") else spec


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
    opts = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, list(OPTIONS), n=1)
            raise _bad(spec, what, f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                                f" (known: {', '.join(OPTIONS)})"))
        opts[key] = values[-1]
    def number(key, cast, default, ok, rule):  # a numeric option, checked
        if key not in opts:
            return default
        try:
            value = cast(opts[key])
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise _bad(spec, what, f"{key} must be {rule}")
        return value

    timeout = number("timeout", float, 30.0, lambda v: 0 < v <= 3600, "seconds between 0 and 3600")
    if scheme != "dimse":
        for key in opts:
            if OPTIONS[key] == "dimse":
                raise _bad(spec, what, f"option {key!r} is for dimse:// endpoints")
        web = scheme.removeprefix("dicomweb+")
        netloc = host if port is None else f"{host}:{port}"
        if ":" in host:  # IPv6 literal
            netloc = f"[{host}]" if port is None else f"[{host}]:{port}"
        url = urllib.parse.urlunsplit((web, netloc, parts.path.rstrip("/"), "", ""))
        return Endpoint("dicomweb", host, port or (443 if web == "https" else 80), url=url, timeout=timeout,
                        username=urllib.parse.unquote(parts.username or ""), password=urllib.parse.unquote(parts.password or ""))
    if parts.path not in ("", "/"):
        raise _bad(spec, what, "a dimse:// endpoint has no path")
    if not parts.username:
        raise _bad(spec, what, "no AE title (dimse://AET@HOST:PORT)")
    if port is None or not 0 < port < 65536:
        raise _bad(spec, what, "no port (dimse://AET@HOST:PORT)")
    called = check_aet(urllib.parse.unquote(parts.username), f"{what} {spec!r}: called AE title")
    calling = check_aet(opts.get("calling", DEFAULT_CALLING_AET), f"{what} {spec!r}: calling")
    retrieve = opts.get("retrieve", "get").lower()
    if retrieve not in ("get", "move"):
        raise _bad(spec, what, f"retrieve must be 'get' or 'move', not {retrieve!r}")
    scp_port = number("scp_port", int, 0, lambda v: 0 < v < 65536, "a TCP port (1-65535)")
    if retrieve == "move" and not scp_port:
        raise _bad(spec, what, "retrieve=move needs scp_port=N (the port of medseg's storage SCP, known to the PACS "
                               f"as AE {calling!r})")
    return Endpoint("dimse", host, port, called_aet=called, calling_aet=calling, retrieve=retrieve, scp_port=scp_port,
                    scp_host=opts.get("scp_host", "127.0.0.1") or "127.0.0.1", timeout=timeout)


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


def http_error(exc: Exception, ep: Endpoint, doing: str) -> PacsError:
    """A requests / dicomweb-client exception -> one line naming the endpoint and what to do."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {401: "check the credentials (user:password@ in the URL or MEDSEG_DICOMWEB_TOKEN)",
                403: "the server refuses medseg; check its access rules",
                404: "check the DICOMweb root in the URL (e.g. /dicom-web)"}.get(
            code, "the server reported an error; check its log" if code >= 500 else "check the request")
        return PacsError(f"{ep.display}: {doing} failed with HTTP {code} {exc.response.reason or ''}".rstrip()
                         + f"; {hint}")
    if isinstance(exc, requests.Timeout):
        return PacsError(f"{ep.display}: {doing} timed out after {ep.timeout:g} s; check that the server is up "
                         "(or raise ?timeout=S)")
    if isinstance(exc, requests.ConnectionError):
        return PacsError(f"{ep.display}: cannot connect for {doing}; check the host and port and that the DICOMweb "
                         "server is running and reachable")
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
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        reason = ""
        if rsp is not None:
            try:
                reason = f" ({rsp.reason_str})"
            except Exception:  # noqa: BLE001 (only for the message)
                reason = ""
        raise PacsError(f"{ep.display}: association for {doing} rejected{reason}; check that the PACS knows medseg's "
                        f"AE title {ep.calling_aet!r} (and this host) and that the called AE title {ep.called_aet!r} "
                        "is right")
    if assoc.is_aborted and _reachable(ep):
        raise PacsError(f"{ep.display}: association for {doing} aborted by the peer; check the PACS log and that it "
                        "accepts the requested SOP classes")
    raise PacsError(f"{ep.display}: cannot connect for {doing}; check the host and port and that the DICOM server is "
                    "running and reachable")


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
        client = dicomweb_client(ep)
        try:
            client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
        except Exception as exc:  # noqa: BLE001 (requests and dicomweb-client raise many types)
            raise http_error(exc, ep, "a study search") from None
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
