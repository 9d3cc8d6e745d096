"""``medseg listen``: a real ``medseg listen`` process on a free loopback port, studies sent with dcmtk's ``storescu``.

Checked: a received study is segmented exactly as ``medseg run`` segments the
same files from a folder; a calling AE title not on the allow-list is refused
(storescu fails, nothing is spooled); with a small spool limit a second study is
refused with status A700 and the first one's files stay; SIGKILL while a study
is processed, restart: the study is done once and not redone at the next
start; SIGTERM exits 0; no patient name, ID or birth date in any file name,
log or CSV. In-process: a failed spool write answers A700 (nothing
acknowledged that is not on disk), the spool's recovery, the predictor cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .orthanc import assert_no_identifiers, child_script, free_port, write_study

PIPELINE = str(Path(__file__).resolve().parents[2] / "pipelines" / "dicom_volumetry.yaml")


def _dcmtk_storescu() -> str | None:
    """dcmtk's storescu on PATH: pynetdicom installs a ``storescu`` of its own into the virtual environment, with
    other options and messages, which comes first on PATH in an activated environment."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        exe = shutil.which("storescu", path=folder)
        if exe:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
                if "dcmtk" in version.lower():
                    return exe
    return None


STORESCU = _dcmtk_storescu()
_no_storescu = pytest.mark.skipif(STORESCU is None, reason="dcmtk's storescu is not installed (Debian package 'dcmtk')")


def needs_storescu(test):
    """Skipped without dcmtk's storescu; marked ``needs_dcmtk`` (``pytest -m "not needs_dcmtk"``)."""
    return pytest.mark.needs_dcmtk(_no_storescu(test))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("listen_studies")
    return [write_study(root / f"s{n}", 40 + n) for n in range(2)]


class Node:
    """``medseg listen`` in a child process (the oracle model registered), on a free port."""

    def __init__(
        self,
        tmp: Path,
        out: Path,
        model: Path,
        *extra: str,
        quiet: float = 1.0,
        ae: str = "MEDSEG",
        pipeline: str = PIPELINE,
    ):
        self.out, self.ae, self.port = out, ae, free_port()
        self.stderr_path = tmp / f"listen-{time.monotonic_ns()}.err"
        args = [
            "listen",
            "--ae-title",
            ae,
            "--port",
            str(self.port),
            "--pipeline",
            pipeline,
            "--out",
            str(out),
            "--quiet-seconds",
            str(quiet),
            "--set",
            f"predict.model={model}",
            *extra,
        ]
        self.err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(child_script(tmp)), *args], stdout=subprocess.DEVNULL, stderr=self.err
        )
        self.wait_for("listening as", timeout=90)

    def log(self) -> str:
        try:
            return (self.out / "listen.log").read_text()
        except OSError:
            return ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, *, timeout: float = 60, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"medseg listen exited ({self.proc.returncode}):\n{self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in listen.log after {timeout} s:\n{self.log()}\n{self.stderr()}")

    def send(self, folder: Path, *, aet: str = "SENDER") -> subprocess.CompletedProcess:
        return subprocess.run(
            [STORESCU, "-v", "-aet", aet, "-aec", self.ae, "127.0.0.1", str(self.port), "+sd", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.err.close()
        return rc


def _state(out: Path, key: str) -> dict:
    return json.loads((out / "studies" / f"{key}.json").read_text())


def _key(study) -> str:
    from medseg.pacs.spool import study_key

    return study_key(study.study_uid)


@needs_storescu
@pytest.mark.slow
def test_received_study_is_segmented_as_a_folder_run(studies, pacs_oracle, tmp_path):
    from medseg import api
    from medseg.io.readers import read_volume

    st = studies[0]
    out = tmp_path / "node"
    node = Node(tmp_path, out, pacs_oracle)
    try:
        sent = node.send(st.folder)
        assert sent.returncode == 0, sent.stderr
        key = _key(st)
        node.wait_for(f"study {key} done", timeout=90)
    finally:
        rc = node.stop()
    assert rc == 0, node.stderr()
    assert _state(out, key)["status"] == "done" and _state(out, key)["instances"] == len(list(st.folder.iterdir()))
    assert not (out / "spool" / key).exists()  # freed once done
    assert node.log().count("model oracle.pt loaded") == 1

    ref = tmp_path / "ref"
    folder = tmp_path / "cases"
    shutil.copytree(st.folder, folder / key)  # the same study, from a folder, under the same case id
    r = api.run(pipeline=PIPELINE, input=folder, out=ref, overrides=[f"predict.model={pacs_oracle}"], progress=False)
    assert r.done == [key]
    got, want = (
        read_volume(out / "run" / "cases" / key / "labels.nii.gz"),
        read_volume(ref / "cases" / key / "labels.nii.gz"),
    )
    np.testing.assert_array_equal(got.array, want.array)
    np.testing.assert_allclose(got.affine, want.affine)
    assert (got.array > 0).sum() > 1000  # the oracle found the organs
    drop = ["source_image", "source_labels"]  # paths differ (spool folder vs copy)
    vol, vol_ref = pd.read_csv(out / "run" / "volumes.csv"), pd.read_csv(ref / "volumes.csv")
    assert len(vol) > 0 and set(vol["case_id"]) == {key}
    pd.testing.assert_frame_equal(vol.drop(columns=drop), vol_ref.drop(columns=drop), check_exact=True)
    assert (out / "run" / "cases" / key / "seg.dcm").is_file()
    assert_no_identifiers(out, [st], node.stderr())


@needs_storescu
def test_allow_list_and_full_spool_are_refused_and_nothing_spooled_is_lost(studies, pacs_oracle, tmp_path):
    import pydicom

    from medseg.pacs.spool import instance_name

    s0, s1 = studies
    size0 = sum(f.stat().st_size for f in s0.folder.iterdir())
    # room for study 0 and part of study 1; a new association is refused when less than a tenth of the limit is free
    limit_gb = 1.5 * size0 / 1024**3
    out = tmp_path / "node"
    node = Node(
        tmp_path, out, pacs_oracle, "--allow-ae", "GOODSENDER", "OTHER", "--spool-max-gb", f"{limit_gb:.9f}", quiet=120
    )
    try:
        bad = node.send(s0.folder, aet="INTRUDER")
        assert bad.returncode != 0 and "Calling AE Title Not Recognized" in bad.stderr
        node.wait_for("'INTRUDER' (127.0.0.1) refused: calling AE title not on the --allow-ae list")
        assert not any((out / "spool").iterdir())  # nothing spooled

        ok = node.send(s0.folder, aet="GOODSENDER")
        assert ok.returncode == 0, ok.stderr
        k0, k1 = _key(s0), _key(s1)
        files0 = {f.name: f.read_bytes() for f in (out / "spool" / k0).iterdir()}
        assert sorted(files0) == sorted(instance_name(pydicom.dcmread(f).SOPInstanceUID) for f in s0.folder.iterdir())

        part = node.send(s1.folder, aet="GOODSENDER")  # accepted; fills the spool part-way: A700
        assert part.returncode != 0 and "Refused: OutOfResources" in part.stderr, part.stderr
        node.wait_for(f"refusing instances of study {k1} from AE 'GOODSENDER' with status A700 (out of resources)")
        n1 = len(list((out / "spool" / k1).iterdir()))
        assert 0 < n1 < len(list(s1.folder.iterdir()))
        again = node.send(s1.folder, aet="GOODSENDER")  # a new association on a full spool: rejected
        assert again.returncode != 0 and "Local Limit Exceeded" in again.stderr, again.stderr
        node.wait_for("association from AE 'GOODSENDER' refused (rejected transient: local limit exceeded)")
        assert node.log().count("spool full (") == 2 and "Raise the limit with --spool-max-gb" in node.log()
        assert {f.name: f.read_bytes() for f in (out / "spool" / k0).iterdir()} == files0  # intact
        assert len(list((out / "spool" / k1).iterdir())) == n1
        assert _state(out, k1)["missing"] and _state(out, k0)["status"] == "received"
    finally:
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.stderr()
    assert "SIGINT: stopping" in node.log()
    assert not (out / "run").exists()  # nothing processed within the quiet period
    assert_no_identifiers(out, studies, node.stderr(), skip_suffixes=(".dcm",))


@needs_storescu
@pytest.mark.slow
def test_sigkill_while_processing_then_restart_processes_once(studies, pacs_oracle, tmp_path):
    st = studies[1]
    out = tmp_path / "node"
    key = _key(st)
    node = Node(tmp_path, out, pacs_oracle, quiet=0.5)
    try:
        assert node.send(st.folder).returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _state(out, key)["status"] != "processing":
            time.sleep(0.01)
        assert _state(out, key)["status"] == "processing"
    finally:
        node.stop(signal.SIGKILL)
    assert (
        not (out / "run" / "state" / f"{key}.json").is_file()
        or json.loads((out / "run" / "state" / f"{key}.json").read_text())["status"] != "done"
    ), "killed too late"
    # a temporary of a write cut short is discarded at restart; a file not medseg's is not
    (out / "spool" / key / ".tmp-medseg-deadbeef-x.dcm").write_bytes(b"half")
    (out / "spool" / "not-medseg.txt").write_text("keep")
    (out / ".tmp-medseg-cafe0123-batch.csv").write_text("half")  # as a kill during the batch table's write leaves it
    (out / "not-medseg.csv").write_text("keep")
    n_files = len(list(st.folder.iterdir()))
    assert len(list((out / "spool" / key).glob("in*.dcm"))) == n_files

    node = Node(tmp_path, out, pacs_oracle, quiet=0.5)
    try:
        node.wait_for("are complete and queued: " + key)
        node.wait_for(f"study {key} done", timeout=90)
    finally:
        assert node.stop() == 0
    rec = json.loads((out / "run" / "state" / f"{key}.json").read_text())
    assert rec["status"] == "done"
    assert _state(out, key)["status"] == "done" and _state(out, key)["attempts"] == 2  # the cut-short one and this
    assert (out / "spool" / "not-medseg.txt").read_text() == "keep" and (out / "not-medseg.csv").read_text() == "keep"
    assert not list(out.rglob(".tmp-medseg-*"))
    vol = pd.read_csv(out / "run" / "volumes.csv")
    assert vol["case_id"].tolist().count(key) == vol["structure"].nunique()  # one row per structure, once
    assert_no_identifiers(out, [st], node.stderr())


@needs_storescu
@pytest.mark.slow
def test_results_of_a_received_study_arrive_in_orthanc(orthanc, pacs_oracle, tmp_path):
    """The pipeline's export stage forwards the SEG of each received study; the listener only runs the pipeline."""
    st = write_study(tmp_path / "study", 47)
    out = tmp_path / "node"
    key = _key(st)
    node = Node(
        tmp_path,
        out,
        pacs_oracle,
        "--set",
        f"export.destination={orthanc.dimse_spec}",
        quiet=0.5,
        pipeline="pacs_volumetry",
    )
    try:
        assert node.send(st.folder).returncode == 0
        node.wait_for(f"study {key} done", timeout=120)
    finally:
        assert node.stop() == 0
    (seg,) = orthanc.seg_instances(st.study_uid)
    assert seg["StudyInstanceUID"] == st.study_uid and seg["Modality"] == "SEG"
    import pydicom

    ds = pydicom.dcmread(out / "run" / "cases" / key / "seg.dcm")
    assert seg["SOPInstanceUID"] == ds.SOPInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == st.series_uid
    rec = json.loads((out / "run" / "export" / f"{key}.json").read_text())
    assert rec["status"] == "sent"
    assert_no_identifiers(out, [st], node.stderr())


# --- in-process: store statuses, recovery, the predictor cache -------------------------------------------------


def _in_process_node(out, model, **kw):
    from medseg.service.listen import ListenConfig, Listener

    cfg = ListenConfig(
        ae_title="MEDSEG",
        port=free_port(),
        pipeline=PIPELINE,
        out=str(out),
        overrides=(f"predict.model={model}",),
        quiet_seconds=kw.pop("quiet", 60.0),
        **kw,
    )
    node = Listener(cfg)
    node.open()
    stop = threading.Event()
    t = threading.Thread(target=node.serve, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while node.server is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return node, stop, t


def _send_one(port: int, path: Path) -> int:
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_store_answers_a700_when_the_write_fails_and_success_only_once_on_disk(
    studies, pacs_oracle, tmp_path, monkeypatch
):
    from medseg.errors import OutputError
    from medseg.pacs import spool as spool_mod
    from medseg.pacs.spool import instance_name, study_key

    out = tmp_path / "node"
    node, stop, t = _in_process_node(out, pacs_oracle)
    try:
        f1, f2 = sorted(studies[0].folder.iterdir())[:2]
        real = spool_mod.durable_write

        def failing(path, data):  # the instance's write fails (its study's state record is written)
            if path.suffix == ".dcm":
                raise OutputError("cannot write (No space left on device)", path=path, errno=28)
            return real(path, data)

        monkeypatch.setattr(spool_mod, "durable_write", failing)
        assert _send_one(node.cfg.port, f1) == 0xA700
        key = study_key(studies[0].study_uid)
        assert not list((out / "spool").rglob("*.dcm"))
        monkeypatch.setattr(spool_mod, "durable_write", real)
        assert _send_one(node.cfg.port, f2) == 0x0000
        import pydicom

        on_disk = out / "spool" / key / instance_name(pydicom.dcmread(f2).SOPInstanceUID)
        assert pydicom.dcmread(on_disk).SOPInstanceUID == pydicom.dcmread(f2).SOPInstanceUID
        assert _send_one(node.cfg.port, f2) == 0x0000  # a resend: acknowledged, not written twice
        assert len(list((out / "spool" / key).iterdir())) == 1
        assert _state(out, key)["missing"]  # f1 was refused: the study waits for it
    finally:
        stop.set()
        t.join(10)
        node.close()
    assert "cannot spool an instance of study " + key in (out / "listen.log").read_text()


def test_spool_recover_requeues_cut_short_studies_and_keeps_done_ones(tmp_path):
    from medseg.pacs.spool import Spool

    sp = Spool(tmp_path, max_bytes=10**6)
    sp.recover()
    assert sp.store("staaaa", "in1.dcm", b"x" * 100) is True
    assert sp.store("staaaa", "in1.dcm", b"x" * 100) is False  # same bytes: not rewritten
    sp.store("stbbbb", "in1.dcm", b"y" * 50)
    sp.store("stcccc", "in1.dcm", b"z" * 10)
    sp.due(0.0)
    assert sp.start_processing("stbbbb") and sp.start_processing("stcccc")
    assert sp.finish("stcccc", True, keep=False) == "done"
    assert not (tmp_path / "spool" / "stcccc").exists() and sp.used_bytes == 150
    (tmp_path / "spool" / "staaaa" / ".tmp-medseg-0000-in2.dcm").write_bytes(b"half")

    again = Spool(tmp_path, max_bytes=10**6)  # a restart after a kill
    assert again.recover() == ["staaaa", "stbbbb"]  # complete and processing: run (again); done: not
    assert again.studies["stcccc"].status == "done" and again.used_bytes == 150
    assert not (tmp_path / "spool" / "staaaa" / ".tmp-medseg-0000-in2.dcm").exists()
    full = Spool(tmp_path, max_bytes=160)
    full.recover()
    from medseg.pacs.spool import SpoolFull

    with pytest.raises(SpoolFull):
        full.store("stdddd", "in9.dcm", b"w" * 20)
    assert full.studies["stdddd"].missing == {"in9.dcm"} and full.due(0.0) == ([], [full.studies["stdddd"]])

    # an instance that arrives while its study is processed: the study runs again, its files stay
    sp2 = Spool(tmp_path / "b", max_bytes=10**6)
    sp2.recover()
    sp2.store("steeee", "in1.dcm", b"a" * 10)
    assert sp2.due(0.0)[0] == ["steeee"] and sp2.start_processing("steeee")
    sp2.store("steeee", "in2.dcm", b"b" * 10)
    assert sp2.finish("steeee", True, keep=False) == "received"
    assert sorted(p.name for p in (tmp_path / "b" / "spool" / "steeee").iterdir()) == ["in1.dcm", "in2.dcm"]


def test_the_predictor_is_loaded_once_while_kept(pacs_oracle):
    from medseg.models.checkpoint import load_checkpoint
    from medseg.runner.case_work import RunContext
    from medseg.runner.model import keep_predictors, load_predictor
    from medseg.runner.settings import load_pipeline

    ck = load_checkpoint(pacs_oracle)
    pipe = load_pipeline(PIPELINE, overrides=[f"predict.model={pacs_oracle}", "predict.device=cpu"])
    ctx = RunContext(
        root="",
        pipeline=pipe,
        config_sha256="",
        model_path=ck["path"],
        model_sha256=ck["file_sha256"],
        labels=ck["labels"],
    )
    assert load_predictor(ctx) is not load_predictor(ctx)
    with keep_predictors():
        p = load_predictor(ctx)
        assert load_predictor(ctx) is p
    assert load_predictor(ctx) is not p


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ae-title", "TOO-LONG-AE-TITLE-X"], "not a valid AE title"),
        (["--ae-title", "MEDSEG", "--tls-cert", "x.pem"], "needs both --tls-cert and --tls-key"),
        (["--ae-title", "MEDSEG", "--spool-max-gb", "0"], "--spool-max-gb 0.0: give a positive size"),
    ],
)
def test_bad_settings_are_one_line_errors(args, message, tmp_path, capsys):
    from medseg.cli import main

    code = main(["listen", *args, "--port", "11112", "--pipeline", PIPELINE, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_one_listener_per_directory(pacs_oracle, tmp_path):
    from medseg.errors import OutputError

    out = tmp_path / "node"
    node, stop, t = _in_process_node(out, pacs_oracle)
    try:
        from medseg.service.listen import ListenConfig, Listener

        second = Listener(
            ListenConfig(
                ae_title="MEDSEG",
                port=free_port(),
                pipeline=PIPELINE,
                out=str(out),
                overrides=(f"predict.model={pacs_oracle}",),
            )
        )
        with pytest.raises(OutputError, match="another medseg run is using this run directory"):
            second.open()
    finally:
        stop.set()
        t.join(10)
        node.close()
    assert os.path.isfile(out / ".medseg-run")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl program is needed to make a test certificate")
def test_tls_only_tls_callers_are_served(studies, pacs_oracle, tmp_path):
    import ssl

    import pydicom
    from pynetdicom import AE

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "node"
    node, stop, t = _in_process_node(out, pacs_oracle, tls_cert=str(cert), tls_key=str(key))
    f = sorted(studies[0].folder.iterdir())[0]
    ds = pydicom.dcmread(f)
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.cfg.port, ae_title="MEDSEG", tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()
        ae.acse_timeout = ae.network_timeout = 5
        plain = ae.associate("127.0.0.1", node.cfg.port, ae_title="MEDSEG")  # no TLS: no association
        assert not plain.is_established
    finally:
        stop.set()
        t.join(10)
        node.close()
    assert len(list((out / "spool").rglob("in*.dcm"))) == 1
    assert "with TLS" in (out / "listen.log").read_text()
