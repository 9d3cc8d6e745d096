"""Fuzz: hostile nnU-Net architectures (plans.json) and DICOMweb answers (issue 34).

Seeded and bounded. A mutated ``arch_kwargs`` either gives a network within bounds or a one-line
``CheckpointError`` naming plans.json, never another exception and never a large allocation (traced peak
under a fixed bound). A DICOMweb server on loopback answering QIDO-RS with mutated DICOM JSON gives either
the studies or a one-line ``PacsError`` naming the endpoint.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medseg.errors import MedsegError

SEED = 31
N_ARCH, N_ANSWERS = 150, 120
PEAK_LIMIT_MB = 300

HOSTILE = [
    None,
    "",
    "2",
    "x",
    -1,
    0,
    1,
    2,
    3,
    7,
    8,
    9,
    2**31,
    1e9,
    1.5,
    float("nan"),
    True,
    [],
    {},
    [0],
    [-1, 2],
    [[0, 0, 0]],
    [[3, 3]],
    [2, 2, 2],
    "torch.nn.Conv1d",
    "torch.nn.modules.conv.Conv2d",
    "os.system",
    {"eps": "tiny"},
    {"inplace": "yes"},
    {"bogus": 1},
    [1e6, 8, 16],
    [4, 8, 100000],
]


def _arch_cases(rng: random.Random, base: dict):
    keys = list(base["arch_kwargs"]) + ["bogus"]
    for _ in range(N_ARCH):
        arch = copy.deepcopy(base)
        kw = arch["arch_kwargs"]
        for key in rng.sample(keys, rng.randint(1, 3)):
            if rng.random() < 0.15:
                kw.pop(key, None)
            elif isinstance(kw.get(key), list) and kw[key] and rng.random() < 0.5:  # one element of a list
                kw[key][rng.randrange(len(kw[key]))] = rng.choice(HOSTILE)
            else:
                kw[key] = rng.choice(HOSTILE)
        yield arch


def test_fuzzed_nnunet_architectures_build_small_or_refuse_in_one_line():
    pytest.importorskip("dynamic_network_architectures")
    sys.path.insert(0, str(Path(__file__).parents[1] / "external"))
    from test_nnunet_loading import PLAIN_ARCH, _plans

    from medseg.adapters.nnunet.folder import architecture, build_network

    rng = random.Random(SEED)
    outcomes = {"built": 0, "refused": 0}
    tracemalloc.start()
    try:
        for arch in _arch_cases(rng, PLAIN_ARCH):
            conf = _plans()["configurations"]["3d_fullres"]
            conf["architecture"] = arch
            try:
                cls, kw = architecture(conf, path="plans.json")
                net = build_network(cls, kw, 1, 3, path="plans.json")
                assert sum(p.numel() for p in net.parameters()) < 10**8
                outcomes["built"] += 1
            except MedsegError as exc:
                msg = str(exc)
                assert "\n" not in msg and msg.startswith("plans.json: "), msg
                outcomes["refused"] += 1
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak_mb < PEAK_LIMIT_MB, peak_mb
    assert outcomes["refused"] > N_ARCH // 2 and outcomes["built"] > 0, outcomes


STUDY = "1.2.826.0.1.3680043.8.498.77"


def _study() -> dict:
    return {
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "00201208": {"vr": "IS", "Value": [3]},
        "00080061": {"vr": "CS", "Value": ["CT"]},
    }


JSON_HOSTILE = [
    None,
    "",
    "many",
    -3,
    2**70,
    1.5,
    True,
    [],
    {},
    [None],
    ["CT", 7],
    {"vr": "UI"},
    {"Value": "x"},
    {"vr": "IS", "Value": ["many"]},
    {"vr": "UI", "Value": ["../../etc"]},
    {"vr": "UI", "Value": ["1." * 40]},
    {"vr": "UI", "Value": [7]},
    "x" * 10000,
]


def _answer(rng: random.Random):
    items = [_study() for _ in range(rng.randint(0, 3))]
    for item in items:
        for tag in rng.sample(list(item) + ["00080060"], rng.randint(0, 2)):
            item[tag] = rng.choice(JSON_HOSTILE)
    if rng.random() < 0.1:
        return rng.choice([{}, "text", 5, None, [1, 2], [[]]])
    return items


class _Server:
    def __init__(self):
        self.answers: list = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps(server.answers[0] if "/series" not in self.path else []).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def spec(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.http.server_address[1]}/dicom-web?query_deadline=5"


def test_fuzzed_dicomweb_answers_are_studies_or_one_line():
    pytest.importorskip("dicomweb_client")
    from medseg.pacs.endpoints import parse_endpoint
    from medseg.pacs.query import find_studies, parse_query

    srv = _Server()
    try:
        ep = parse_endpoint(srv.spec)
        rng = random.Random(SEED)
        outcomes = {"found": 0, "refused": 0}
        for _ in range(N_ANSWERS):
            srv.answers = [_answer(rng)]
            try:
                result = find_studies(ep, parse_query(["modality=CT"]))
                assert all(hit.study_uid == STUDY for hit in result.studies)
                outcomes["found"] += 1
            except MedsegError as exc:
                msg = str(exc)
                assert "\n" not in msg and "127.0.0.1" in msg, msg
                outcomes["refused"] += 1
    finally:
        srv.http.shutdown()
        srv.http.server_close()
    assert outcomes["found"] > 10 and outcomes["refused"] > 10, outcomes
