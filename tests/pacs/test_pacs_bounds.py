"""A hostile DICOMweb server (a small HTTP server on 127.0.0.1 in a thread) against medseg's PACS input
(issue 34, "Bounded at every edge"): endless QIDO-RS paging, a QIDO-RS answer without end, a body dripped a
byte at a time, a WADO-RS body far larger than memory should hold, and malformed DICOM JSON attributes.

Each case runs medseg in a child process (``_child``) that reports its error line, its exit code, the growth of
its peak RSS (VmHWM after the imports -> at the end) and the seconds it took, so that a hang is a
timeout and a leak is a number.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
pytest.importorskip("requests")
pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[2]
PAGE = 500
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SOP = "1.2.826.0.1.3680043.8.498.3"


def _study(uid: str, pad: int = 0, **extra) -> dict:
    item = {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00201208": {"vr": "IS", "Value": [1]},
        "00080061": {"vr": "CS", "Value": ["CT"]},
        **extra,
    }
    if pad:
        item["00081030"] = {"vr": "LO", "Value": ["x" * pad]}
    return item


def _dicom_header(pixel_bytes: int) -> bytes:
    """A DICOM file (CT image, explicit VR little endian) up to the header of a ``pixel_bytes`` long OB PixelData."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, SOP
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = CTImageStorage, SOP, STUDY, SERIES
    ds.Modality = "CT"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", pixel_bytes)


class Hostile:
    """A DICOMweb root at ``http://127.0.0.1:PORT/dicom-web`` whose answers ``mode`` chooses."""

    def __init__(self, mode: str, **opts):
        self.mode, self.opts, self.requests = mode, opts, 0
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                hostile.requests += 1
                try:
                    getattr(hostile, "_" + hostile.mode)(self)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up: what medseg should do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def spec(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- answers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _json(h, payload, status=200) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _endless(self, h) -> None:
        """Every page full, every UID new: paging never ends by itself."""
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        offset = int(q.get("offset", ["0"])[0])
        self._json(
            h,
            [
                _study(f"1.2.826.0.1.3680043.8.498.{offset + i + 10}", pad=self.opts.get("pad", 1000))
                for i in range(PAGE)
            ],
        )

    def _huge_json(self, h) -> None:
        """One answer of matches without end (no Content-Length: read until the server stops)."""
        h.send_response(200)
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"[")
        item = json.dumps(_study("1.2.826.0.1.3680043.8.498.9", pad=2000)).encode() + b","
        block = item * (1024**2 // len(item))
        for _ in range(self.opts.get("mib", 400)):
            h.wfile.write(block)
        h.wfile.write(json.dumps(_study("1.2.826.0.1.3680043.8.498.8")).encode() + b"]")

    def _drip(self, h) -> None:
        """A body without length (it ends when the connection closes) sent one byte every 0.1 s: no single read
        ever times out."""
        h.send_response(200)
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Connection", "close")
        h.end_headers()
        for _ in range(3000):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.1)

    def _malformed(self, h) -> None:
        self._json(h, [self.opts["item"]] if "/series" not in h.path else [])

    def _wado(self, h) -> None:
        """QIDO-RS: one study, one CT series of one instance; WADO-RS: that instance, ``pixel_mib`` MiB of pixels,
        in a multipart body (streamed by the server; dripped when ``drip``)."""
        path = urllib.parse.urlsplit(h.path).path
        if path.endswith("/series"):
            return self._json(
                h,
                [
                    {
                        "0020000E": {"vr": "UI", "Value": [SERIES]},
                        "00080060": {"vr": "CS", "Value": ["CT"]},
                        "00201209": {"vr": "IS", "Value": [1]},
                    }
                ],
            )
        if path.endswith("/studies"):
            return self._json(h, [_study(STUDY)])
        n = self.opts.get("pixel_mib", 1) * 1024**2
        head = b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n" + _dicom_header(n)
        tail = b"\r\n--BOUNDARY--\r\n"
        h.send_response(200)
        h.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=BOUNDARY')
        h.send_header("Content-Length", str(len(head) + n + len(tail)))
        h.end_headers()
        if self.opts.get("drip"):
            for _ in range(3000):
                h.wfile.write(b"\0")
                h.wfile.flush()
                time.sleep(0.1)
            return
        h.wfile.write(head)
        zeros = bytes(1024**2)
        for _ in range(n // len(zeros)):
            h.wfile.write(zeros)
        h.wfile.write(tail)


@pytest.fixture
def hostile():
    servers = []

    def start(mode, **opts):
        srv = Hostile(mode, **opts)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


CHILD = """
import json, sys, time
from medseg.pacs.endpoints import parse_endpoint
from medseg.pacs import query, retrieve
import requests, pydicom, urllib3
def peak():  # VmHWM, this process's own peak RSS (ru_maxrss would keep the forking parent's)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
base, t0 = peak(), time.monotonic()
ep = parse_endpoint(sys.argv[1])
out = {"error": "", "exit_code": 0}
try:
    if sys.argv[2] == "query":
        out["studies"] = len(query.find_studies(ep, {"ModalitiesInStudy": "CT"}).studies)
    else:
        out["instances"] = retrieve.retrieve_study(ep, sys.argv[3], sys.argv[4])
except Exception as exc:
    out["error"], out["exit_code"] = str(exc), getattr(exc, "exit_code", 1)
out.update(growth_mb=peak() - base, seconds=time.monotonic() - t0)
print(json.dumps(out))
"""


def _child(spec: str, *args: str, timeout: float = 60) -> dict:
    """medseg's query (``"query"``) or retrieve (``"retrieve", STUDY_UID, DEST``) against ``spec`` in a child
    process: {error, exit_code, growth_mb, seconds, ...}. A child still running after ``timeout`` s fails the test."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", CHILD, spec, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"medseg still reading from the hostile server after {timeout} s (no bound)")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print("child:", {k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()})
    return res


def _one_line(res: dict, *needles: str) -> None:
    assert res["exit_code"] == 3, res
    assert "\n" not in res["error"] and "Traceback" not in res["error"], res
    for n in needles:
        assert n in res["error"], res


def test_endless_qido_paging_stops_at_the_study_cap(hostile):
    srv = hostile("endless")
    res = _child(srv.spec, "query")  # the default cap: 10000 studies
    _one_line(res, "127.0.0.1:", "more than 10000 studies", "max_studies=N")
    assert res["growth_mb"] < 150 and res["seconds"] < 30, res
    assert srv.requests <= 21

    res = _child(srv.spec + "?max_studies=1200", "query")
    _one_line(res, "more than 1200 studies")
    assert srv.requests <= 21 + 3
    before = srv.requests
    res = _child(srv.spec + "?max_pages=2&max_studies=100000", "query")
    _one_line(res, "after 2 pages", "max_pages=N")
    assert srv.requests - before == 2


def test_a_qido_answer_without_end_stops_at_64_mib(hostile):
    srv = hostile("huge_json", mib=400)
    res = _child(srv.spec, "query")
    _one_line(res, "127.0.0.1:", "the study search (QIDO-RS)", "limit 64 MiB")
    assert res["growth_mb"] < 200 and res["seconds"] < 30, res


def test_a_dripped_qido_answer_ends_at_its_deadline(hostile):
    srv = hostile("drip")
    res = _child(srv.spec + "?query_deadline=2", "query", timeout=30)
    _one_line(res, "127.0.0.1:", "deadline of 2 s", "query_deadline=S")
    assert 1.5 < res["seconds"] < 8, res


def test_a_wado_body_is_streamed_to_disk(hostile, tmp_path):
    import pydicom

    from medseg.pacs.retrieve import _name

    srv = hostile("wado", pixel_mib=200)
    dest = tmp_path / "study"
    dest.mkdir()
    res = _child(srv.spec, "retrieve", STUDY, str(dest), timeout=120)
    assert res["error"] == "" and res["instances"] == 1, res
    assert res["growth_mb"] < 60, res  # the whole body held in memory: 200 MiB and more
    (f,) = list(dest.iterdir())
    assert f.name == _name(SOP) and f.stat().st_size > 200 * 1024**2
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    assert (ds.SOPInstanceUID, ds.SeriesInstanceUID) == (SOP, SERIES)


def test_a_dripped_wado_body_ends_at_its_deadline(hostile, tmp_path):
    srv = hostile("wado", drip=True)
    dest = tmp_path / "study"
    dest.mkdir()
    res = _child(srv.spec + "?retrieve_deadline=2", "retrieve", STUDY, str(dest), timeout=30)
    _one_line(res, "127.0.0.1:", "the retrieval (WADO-RS)", "deadline of 2 s", "retrieve_deadline=S")
    assert 1.5 < res["seconds"] < 8, res
    assert not [p for p in dest.iterdir() if not p.name.startswith(".tmp-medseg")]


def test_a_wado_body_past_the_cache_limit_stops_at_once(hostile, tmp_path):
    from medseg.errors import InputError
    from medseg.pacs.endpoints import parse_endpoint
    from medseg.pacs.retrieve import retrieve_study

    srv = hostile("wado", pixel_mib=64)
    dest = tmp_path / "study"
    dest.mkdir()
    with pytest.raises(InputError, match="larger than the cache limit"):
        retrieve_study(parse_endpoint(srv.spec), STUDY, dest, max_bytes=8 * 1024**2)
    assert sum(p.stat().st_size for p in dest.iterdir()) < 10 * 1024**2


@pytest.mark.parametrize(
    "item, needle",
    [
        (
            _study(STUDY, **{"00201208": {"vr": "IS", "Value": ["many"]}}),
            "attribute 00201208 (NumberOfStudyRelatedInstances) has the value 'many', not a number",
        ),
        ({"0020000D": STUDY}, "attribute 0020000D (StudyInstanceUID) is '1.2.826"),
        (
            _study(STUDY, **{"00080061": {"vr": "CS", "Value": "CT"}}),
            'attribute 00080061 (ModalitiesInStudy) has "Value"',
        ),
        (_study("../../etc/passwd"), "not a UID"),
    ],
)
def test_malformed_dicom_json_is_one_line_exit_3(hostile, pacs_oracle, tmp_path, capsys, item, needle):
    from medseg.cli import main

    srv = hostile("malformed", item=item)
    code = main(
        [
            "run",
            "dicom_volumetry",
            "--input",
            srv.spec,
            "--out",
            str(tmp_path / "run"),
            "--cache",
            str(tmp_path / "cache"),
            "--set",
            f"predict.model={pacs_oracle}",
            "--no-progress",
            "--query",
            "modality=CT",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert srv.spec.removeprefix("dicomweb+") in err and "malformed DICOM JSON" in err and needle in err, err


def test_bound_options_are_checked():
    from medseg.errors import ConfigError
    from medseg.pacs.endpoints import parse_endpoint

    ep = parse_endpoint(
        "dicomweb+http://h:80/x?max_studies=5&max_series=6&max_pages=7&query_deadline=8&retrieve_deadline=9"
    )
    assert (ep.max_studies, ep.max_series, ep.max_pages, ep.query_deadline, ep.retrieve_deadline) == (5, 6, 7, 8.0, 9.0)
    ep = parse_endpoint("dicomweb+http://h:80/x")
    assert (ep.max_studies, ep.max_series, ep.max_pages, ep.query_deadline, ep.retrieve_deadline) == (
        10000,
        1000,
        100,
        60.0,
        300.0,
    )
    assert parse_endpoint("dimse://A@h:104?max_studies=3").max_studies == 3
    for bad, msg in (
        ("dicomweb+http://h/x?max_studies=0", "max_studies must be"),
        ("dicomweb+http://h/x?query_deadline=-1", "query_deadline must be"),
        ("dimse://A@h:104?query_deadline=5", "is for dicomweb"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_endpoint(bad)
