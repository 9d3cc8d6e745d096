"""``medseg listen`` under instances larger than its spool and callers beyond its association limit (issue 34):
the listener's peak memory does not grow with the size of an instance (a real ``medseg listen`` process, its
VmHWM read from /proc), an instance that does not fit is answered A700 from its size, and a caller refused at
the association limit is told so in the log, not blamed on the allow-list."""

from __future__ import annotations

import io
import signal
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")

from .test_listen import Node, _in_process_node  # noqa: E402

MIB = 1024**2


def _instance(path: Path, n: int, pixel_bytes: int) -> Path:
    """A CT instance whose OB PixelData holds ``pixel_bytes`` zeros, written without holding them in memory."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    sop = generate_uid()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.7{n}", f"1.2.826.0.1.3680043.8.498.8{n}"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    zeros = bytes(MIB)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", pixel_bytes))
        for _ in range(pixel_bytes // MIB):
            fh.write(zeros)
    return path


def _hwm_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _send_files(port: int, *paths: Path) -> list[int]:
    """C-STORE each file from disk (pynetdicom's chunked send: the test process does not hold them either)."""
    import pydicom
    from pynetdicom import AE, _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="SENDER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        meta = pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
        assert assoc.is_established
        try:
            return [int(assoc.send_c_store(p).Status) for p in paths]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_listener_memory_does_not_grow_with_the_instance_size(pacs_oracle, tmp_path):
    import pydicom

    from medseg.pacs.spool import instance_name, study_key

    small = _instance(tmp_path / "small.dcm", 0, 1 * MIB)
    fits = _instance(tmp_path / "fits.dcm", 1, 60 * MIB)
    too_big = _instance(tmp_path / "too_big.dcm", 2, 100 * MIB)
    out = tmp_path / "node"
    node = Node(tmp_path, out, pacs_oracle, "--spool-max-gb", f"{128 * MIB / 1024**3:.6f}", quiet=300)
    try:
        assert _send_files(node.port, small) == [0x0000]  # the first instance: the receiving code paths warmed up
        base = _hwm_mb(node.proc.pid)
        assert _send_files(node.port, fits, too_big) == [0x0000, 0xA700]  # 100 MiB do not fit in the 67 MiB left
        growth = _hwm_mb(node.proc.pid) - base
        print(f"listener peak RSS growth: {growth:.1f} MB")
        node.wait_for("refusing instances of study")
    finally:
        rc = node.stop(signal.SIGTERM)
    assert rc == 0, node.stderr()
    assert growth < 40, f"the listener's peak RSS grew by {growth:.0f} MB receiving 160 MiB"
    ds = pydicom.dcmread(fits, stop_before_pixels=True)
    spooled = out / "spool" / study_key(ds.StudyInstanceUID) / instance_name(ds.SOPInstanceUID)
    assert abs(spooled.stat().st_size - fits.stat().st_size) < 1024
    assert pydicom.dcmread(spooled, stop_before_pixels=True).SOPInstanceUID == ds.SOPInstanceUID
    with open(spooled, "rb") as fh:  # the pixel data arrived whole
        fh.seek(-MIB, 2)
        assert fh.read() == bytes(MIB)
    big = pydicom.dcmread(too_big, stop_before_pixels=True)
    assert not (out / "spool" / study_key(big.StudyInstanceUID) / instance_name(big.SOPInstanceUID)).exists()
    assert not list((out / "spool").rglob(".tmp-medseg*"))


def test_association_limit_is_logged_as_such(pacs_oracle, tmp_path):
    from pynetdicom import AE

    out = tmp_path / "node"
    node, stop, t = _in_process_node(out, pacs_oracle, allow_ae=("SENDER",))
    try:
        node.ae.maximum_associations = 1
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", node.cfg.port, ae_title="MEDSEG")
        assert first.is_established
        second = ae.associate("127.0.0.1", node.cfg.port, ae_title="MEDSEG")
        assert second.is_rejected
        first.release()
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context("1.2.840.10008.1.1")
        assert intruder.associate("127.0.0.1", node.cfg.port, ae_title="MEDSEG").is_rejected
    finally:
        stop.set()
        t.join(10)
        node.close()
    log = (out / "listen.log").read_text()
    assert "'SENDER' (127.0.0.1) refused: the association limit was reached (1 associations at once" in log, log
    assert "'SENDER' (127.0.0.1) refused: calling AE title not on the --allow-ae list" not in log, log
    assert "'INTRUDER' (127.0.0.1) refused: calling AE title not on the --allow-ae list (SENDER)" in log, log
