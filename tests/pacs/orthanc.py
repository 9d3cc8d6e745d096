"""A real Orthanc (with its DICOMweb plugin) for the PACS tests, and phantom DICOM studies to put in it.

Import from tests (``tests/pacs`` is a package)::

    from .orthanc import OrthancServer, write_study, oracle_checkpoint_file, child_script

Fixtures (``tests/pacs/conftest.py``): ``orthanc`` (one server per test module,
stopped at teardown), ``orthanc_factory`` (start more servers, e.g. with other
``DicomModalities``), ``pacs_oracle`` (a checkpoint of the intensity-oracle
model on a 4 mm grid), ``free_port``.

The server listens on 127.0.0.1 only, on HTTP and DICOM ports chosen free at
run time; storage and index live in a temporary folder. It knows the remote AEs
given as ``modalities`` (``{"medseg": ("MEDSEG", "127.0.0.1", 11112)}``; more
can be added while it runs with :meth:`OrthancServer.add_modality`), so a
C-MOVE to medseg's own storage SCP finds its destination.

A study is written by :func:`write_study`: a label-coded phantom (the oracle
model reads the label from the HU) as a CT series, with a fake patient name,
ID, birth date and accession number of its own (see :class:`Study`) that the
privacy checks search for in run directories.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ORTHANC = os.environ.get("MEDSEG_TEST_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get("MEDSEG_TEST_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TESTS_DIR = Path(__file__).resolve().parents[1]


def missing_reason() -> str:
    """Why a real Orthanc cannot be started here ('' when it can)."""
    if not (Path(ORTHANC).is_file() and os.access(ORTHANC, os.X_OK)):
        return f"Orthanc not installed ({ORTHANC}; Debian package 'orthanc')"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"Orthanc DICOMweb plugin not installed ({DICOMWEB_PLUGIN}; Debian package 'orthanc-dicomweb')"
    import importlib.util

    for module, what in (
        ("requests", "requests"),
        ("pynetdicom", "pynetdicom"),
        ("dicomweb_client", "dicomweb-client"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {what!r} is missing (pip install 'medseg[pacs]')"
    return ""


def skip_without_orthanc() -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (a killed test run leaves no
    Orthanc behind). Linux only; elsewhere nothing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """One Orthanc process; ``start()`` returns once its REST API answers, ``stop()`` ends it.

    Attributes once started: ``url`` (REST root, ``http://127.0.0.1:PORT``),
    ``dicomweb_url`` (``.../dicom-web``), ``http_port``, ``dicom_port``,
    ``aet``; endpoint specs for medseg: ``dicomweb_spec``
    (``dicomweb+http://127.0.0.1:PORT/dicom-web``) and ``dimse_spec``
    (``dimse://AET@127.0.0.1:PORT``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: dict | None = None,
    ):
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.http_port = self.dicom_port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    # --- life cycle -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dicomweb_spec(self) -> str:
        return f"dicomweb+{self.dicomweb_url}"

    @property
    def dimse_spec(self) -> str:
        return f"dimse://{self.aet}@127.0.0.1:{self.dicom_port}"

    def config(self) -> dict:
        return {
            "Name": "medseg-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {name: list(m) for name, m in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            "StableAge": 1,
            "SaveJobs": False,
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
            **self.extra_config,
        }

    def start(self, timeout: float = 60.0) -> OrthancServer:
        skip_without_orthanc()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a port chosen free can be taken before Orthanc binds it: choose again
            self.http_port, self.dicom_port = free_port(), free_port()
            cfg = self.workdir / "orthanc.json"
            cfg.write_text(json.dumps(self.config(), indent=2))
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, preexec_fn=_die_with_parent
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"Orthanc did not start; log: {self.log_path}\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = requests.get(f"{self.url}/system", timeout=2)
                if r.ok and self._dicom_port_open():
                    r2 = requests.get(f"{self.dicomweb_url}/studies", timeout=5)
                    if r2.status_code in (200, 204):
                        return True
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- REST -------------------------------------------------------------------------------------------------
    def get(self, path: str, **kw):
        import requests

        r = requests.get(f"{self.url}{path}", timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body, **kw):
        import requests

        if isinstance(body, (bytes, bytearray)):
            r = requests.post(f"{self.url}{path}", data=body, timeout=120, **kw)
        else:
            r = requests.post(f"{self.url}{path}", json=body, timeout=120, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def upload(self, *paths: str | os.PathLike) -> list[str]:
        """POST every DICOM file (files, or folders walked recursively) to /instances; the Orthanc instance ids."""
        ids = []
        for p in paths:
            p = Path(p)
            files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
            for f in files:
                ids.append(self.post("/instances", f.read_bytes(), headers={"Content-Type": "application/dicom"})["ID"])
        return ids

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Make a remote AE known while the server runs (a C-MOVE destination, for instance)."""
        import requests

        r = requests.put(
            f"{self.url}/modalities/{name}", json={"AET": aet, "Host": host, "Port": int(port)}, timeout=30
        )
        r.raise_for_status()
        self.modalities[name] = (aet, host, int(port))

    def studies(self) -> list[str]:
        return self.get("/studies")

    def study(self, orthanc_id: str) -> dict:
        return self.get(f"/studies/{orthanc_id}")

    def series(self, orthanc_id: str) -> dict:
        return self.get(f"/series/{orthanc_id}")

    def instance_tags(self, orthanc_id: str) -> dict:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def instance_file(self, orthanc_id: str) -> bytes:
        import requests

        r = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        r.raise_for_status()
        return r.content

    def find(self, level: str, query: dict, expand: bool = True) -> list:
        """/tools/find: ``level`` Patient, Study, Series or Instance; ``query`` DICOM keywords -> values."""
        return self.post("/tools/find", {"Level": level, "Query": query, "Expand": expand})

    def series_of_study(self, study_uid: str, modality: str = "") -> list[dict]:
        """Expanded series (MainDicomTags, Instances, ...) of the study with this StudyInstanceUID."""
        q = {"StudyInstanceUID": study_uid}
        if modality:
            q["Modality"] = modality
        return self.find("Series", q)

    def seg_instances(self, study_uid: str) -> list[dict]:
        """The SEG objects of a study: one dict per instance with its simplified tags and Orthanc id (``_id``)."""
        out = []
        for s in self.series_of_study(study_uid, "SEG"):
            for iid in s["Instances"]:
                out.append({**self.instance_tags(iid), "_id": iid})
        return out

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def delete_all(self) -> None:
        import requests

        for sid in self.get("/patients"):
            requests.delete(f"{self.url}/patients/{sid}", timeout=60).raise_for_status()


# --- phantom studies ----------------------------------------------------------------------------------------


@dataclass
class Study:
    """One phantom study as written: its UIDs, the fake identifiers in its headers, and the truth."""

    folder: Path
    study_uid: str
    series_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    accession: str
    study_date: str
    phantom: object = field(repr=False, default=None)  # medseg.data.phantoms.PhantomCase (labels: the true answer)

    @property
    def identifiers(self) -> tuple[str, str, str]:
        """The strings that must never appear in a run directory (outside DICOM objects)."""
        return self.patient_name, self.patient_id, self.birth_date


def write_study(
    folder: str | os.PathLike,
    n: int,
    *,
    spacing=(4.0, 4.0, 6.0),
    study_date: str = "",
    seed: int | None = None,
    modality: str = "CT",
) -> Study:
    """Study number ``n``: a label-coded phantom (oracle input) as one CT series in ``folder``, one file per slice.

    Each study has its own StudyInstanceUID and fake patient: name ``PACSLEAK^PATIENT<n>``, ID
    ``PACSLEAKID<n>``, birth date ``1902MMDD`` and accession ``ACC<n>`` (study date ``2026-01-(n+1)``
    unless given), so date-range and accession queries have a known answer.
    """
    import pydicom
    from helpers import label_coded
    from pydicom.uid import generate_uid

    from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series

    folder = Path(folder)
    seed = 900 + n if seed is None else seed
    ph = make_phantom(seed, case_id=f"study{n}", spacing=spacing, noise_hu=0)
    coded = PhantomCase(ph.case_id, label_coded(ph), ph.labels, ph.voxel_counts)
    study_uid, series_uid = generate_uid(), generate_uid()
    write_dicom_series(
        coded,
        folder,
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        modality=modality,
        series_description=f"phantom abdomen {n}",
    )
    st = Study(
        folder,
        study_uid,
        series_uid,
        patient_name=f"PACSLEAK^PATIENT{n:03d}",
        patient_id=f"PACSLEAKID{n:03d}",
        birth_date=f"1902{1 + n % 12:02d}{1 + n % 28:02d}",
        accession=f"ACC{n:05d}",
        study_date=study_date or f"202601{1 + n % 28:02d}",
        phantom=ph,
    )
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = st.patient_name, st.patient_id, st.birth_date
        ds.AccessionNumber, ds.StudyDate, ds.SeriesDate = st.accession, st.study_date, st.study_date
        ds.StudyID, ds.StudyTime, ds.StudyDescription = f"S{n}", "120000", "phantom abdomen"
        ds.ReferringPhysicianName = "PACSLEAK^REFERRER"
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
    return st


def write_studies(root: str | os.PathLike, count: int, *, start: int = 0, **kw) -> list[Study]:
    """``count`` studies, numbered from ``start``, one folder each under ``root`` (``root/study<n>``)."""
    root = Path(root)
    return [write_study(root / f"study{n:03d}", n, **kw) for n in range(start, start + count)]


def assert_no_identifiers(run_dir: str | os.PathLike, studies, *texts: str, skip_suffixes=(".dcm",)) -> None:
    """No patient name, ID or birth date of ``studies`` in any file name or file (DICOM objects aside) under
    ``run_dir``, nor in ``texts`` (a command's stdout/stderr)."""
    import gzip

    secrets = [s for st in studies for s in st.identifiers] + ["PACSLEAK"]
    for f in Path(run_dir).rglob("*"):
        for s in secrets:
            assert s not in f.name, f"{s!r} in file name {f}"
        if f.is_file() and f.suffix not in skip_suffixes:
            data = f.read_bytes()
            if f.suffix == ".gz":
                try:
                    data = gzip.decompress(data)
                except OSError:
                    pass
            for s in secrets:
                assert s.encode() not in data, f"{s!r} found in {f}"
    for t in texts:
        for s in secrets:
            assert s not in (t or ""), f"{s!r} in output"


# --- the model and the child process ------------------------------------------------------------------------


def oracle_checkpoint_file(path: str | os.PathLike) -> Path:
    """A checkpoint of the intensity oracle (label = round(HU / 100)) on a 4 mm grid, as
    tests/integration/test_run.py."""
    from helpers import ORACLE_ON_4MM, oracle_checkpoint

    return oracle_checkpoint(path, **ORACLE_ON_4MM)


def child_script(folder: str | os.PathLike) -> Path:
    """A script that runs ``medseg`` (its argv) in a new process with the oracle model registered:
    ``subprocess.Popen([sys.executable, str(child_script(tmp)), "run", ...])``."""
    from helpers import oracle_child_script

    return oracle_child_script(folder, "medseg_child.py")


def run_child(folder, *args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``medseg ARGS`` in a child process (oracle registered); captured text output."""
    return subprocess.run(
        [sys.executable, str(child_script(folder)), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def run_argv(pipeline, out, source, oracle, cache, *extra) -> list[str]:
    """``medseg run PIPELINE --input SOURCE --out OUT --cache CACHE --set predict.model=ORACLE --no-progress EXTRA``."""
    io = ["--input", str(source), "--out", str(out), "--cache", str(cache)]
    return ["run", pipeline, *io, "--set", f"predict.model={oracle}", "--no-progress", *extra]


def copy_tree(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)
