"""Fixtures of the PACS tests: a real Orthanc per module, phantom studies, the oracle checkpoint.

Helpers (importable: ``from .orthanc import ...``) are in ``tests/pacs/orthanc.py``.
Every fixture that needs Orthanc skips with the reason when Orthanc or its DICOMweb plugin is missing.
"""

from __future__ import annotations

import pytest

from .orthanc import OrthancServer, free_port, oracle_checkpoint_file, skip_without_orthanc


@pytest.fixture(scope="session")
def pacs_oracle(tmp_path_factory):
    """The intensity-oracle checkpoint (4 mm grid) the PACS runs use: ``--set predict.model=PATH``."""
    return oracle_checkpoint_file(tmp_path_factory.mktemp("pacs_oracle") / "oracle.pt")


@pytest.fixture(scope="session")
def orthanc_factory(tmp_path_factory):
    """``start(modalities=None, aet="ORTHANC", **kw) -> OrthancServer``: started servers stop at session end."""
    skip_without_orthanc()
    servers = []

    def start(**kw) -> OrthancServer:
        srv = OrthancServer(tmp_path_factory.mktemp("orthanc"), **kw).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """One Orthanc (DICOMweb plugin on) for a test module; medseg's AE ``MEDSEG`` is a known modality on
    ``medseg_scp_port`` (use it as medseg's storage SCP port for C-MOVE). Stopped at the module's end."""
    skip_without_orthanc()
    port = free_port()
    srv = OrthancServer(tmp_path_factory.mktemp("orthanc"), modalities={"medseg": ("MEDSEG", "127.0.0.1", port)})
    srv.medseg_scp_port = port
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def free_tcp_port():
    return free_port()
