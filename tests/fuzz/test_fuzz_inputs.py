"""Fuzz: randomly corrupted NIfTI headers and files (and DICOM series) fed to the reader and to
``medseg predict`` (in-process, through ``medseg.cli.main``).

Seeded and bounded: a few hundred cases in well under a minute. For every case either a valid
volume comes back, or a ``MedsegError`` whose message is one line naming the file; never another
exception, never a traceback; ``medseg predict`` exits 0/1/2 with per-case failures that are one
line each; the whole run stays under 2 GB of resident memory (measured in the subprocess that
runs it, with the default voxel limit in force).

Run by hand: ``python tests/fuzz/test_fuzz_inputs.py WORKDIR [N_NIFTI] [N_DICOM] [SEED]`` prints
the JSON summary the tests check.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

N_NIFTI, N_DICOM, SEED = 300, 60, 17
MEMORY_LIMIT_MB = 2048

HOSTILE_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 256, 32767, -32768, 65535, 2**31 - 1, -(2**31)]
HOSTILE_FLOATS = [0.0, -0.0, -1.0, 1e-30, 1e-6, 1e6, 1e30, 3e38, -3e38, float("nan"), float("inf"), float("-inf")]
NIFTI_FIELDS = [
    "sizeof_hdr",
    "dim",
    "datatype",
    "bitpix",
    "pixdim",
    "vox_offset",
    "scl_slope",
    "scl_inter",
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "srow_x",
    "srow_y",
    "srow_z",
    "magic",
    "dim_info",
    "xyzt_units",
    "intent_code",
    "slice_code",
]
DATATYPES = [2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 1, 3, 9999]


# --- corrupted files -----------------------------------------------------------------------------


def _base_niftis():
    """Two small valid images (int16 with scaling, float32), as raw header bytes + data."""
    import nibabel as nib

    from medseg.data.phantoms import make_phantom

    case = make_phantom(5, spacing=(8.0, 8.0, 10.0))
    hu = case.image.array
    out = []
    for dtype, scaled in ((np.int16, True), (np.float32, False)):
        img = nib.Nifti1Image(hu.astype(dtype), case.image.affine)
        if scaled:
            img.header.set_slope_inter(1.0, 0.0)
        h = img.header
        h["vox_offset"] = 352
        h.set_qform(case.image.affine, code=1)
        h.set_sform(case.image.affine, code=1)
        out.append((bytearray(h.binaryblock), hu.astype(dtype).tobytes(order="F")))
    return out


def _set_field(block: bytearray, name: str, rng) -> str:
    import nibabel as nib

    view = np.frombuffer(block, dtype=nib.nifti1.header_dtype)  # a writable view of the 348 bytes
    field = view[name]
    kind = field.dtype.base.kind
    if name == "magic":
        value = rng.choice([b"n+1\0", b"ni1\0", b"\0\0\0\0", b"n+2\0", bytes(rng.integers(0, 256, 4, dtype=np.uint8))])
        field[0] = value
        return f"magic={value!r}"
    if name == "datatype":
        value = int(rng.choice(DATATYPES))
    elif kind in "iu":
        value = int(rng.choice(HOSTILE_INTS)) if rng.random() < 0.8 else int(rng.integers(-5, 600))
    else:
        value = (
            float(rng.choice(HOSTILE_FLOATS))
            if rng.random() < 0.8
            else float(rng.normal() * 10.0 ** int(rng.integers(-3, 5)))
        )
    info = np.iinfo(field.dtype.base) if kind in "iu" else None
    if info is not None:
        value = int(np.clip(value, info.min, info.max))
    if field.dtype.shape:
        idx = int(rng.integers(0, field.dtype.shape[0]))
        with np.errstate(all="ignore"):
            field[0, idx] = value
        return f"{name}[{idx}]={value!r}"
    with np.errstate(all="ignore"):
        field[0] = value
    return f"{name}={value!r}"


def corrupt_nifti(path: Path, base, rng) -> str:
    """Write one corrupted NIfTI at ``path`` (.nii or .nii.gz); returns what was done."""
    block, data = bytearray(base[0]), base[1]
    r = rng.random()
    if r < 0.6:
        what = "; ".join(_set_field(block, str(rng.choice(NIFTI_FIELDS)), rng) for _ in range(int(rng.integers(1, 3))))
        payload = bytes(block) + b"\0" * 4 + data
    elif r < 0.75:
        positions = rng.integers(0, 348, int(rng.integers(1, 9)))
        for p in positions:
            block[int(p)] = int(rng.integers(0, 256))
        what = f"bytes {sorted(int(p) for p in positions)} overwritten"
        payload = bytes(block) + b"\0" * 4 + data
    elif r < 0.85:
        full = bytes(block) + b"\0" * 4 + data
        cut = int(rng.integers(0, len(full)))
        what = f"truncated at {cut} of {len(full)} bytes"
        payload = full[:cut]
    else:
        garbage = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
        what = "voxel data replaced by random bytes"
        payload = bytes(block) + b"\0" * 4 + garbage
    if path.name.endswith(".gz"):
        raw = gzip.compress(payload, compresslevel=1)
        if rng.random() < 0.15 and len(raw) > 40:
            raw = bytearray(raw)
            for p in rng.integers(10, len(raw), 4):
                raw[int(p)] ^= 0xFF
            raw = bytes(raw)
            what += "; gzip stream damaged"
        path.write_bytes(raw)
    else:
        path.write_bytes(payload)
    return what


DICOM_EDITS = {
    "Rows": [0, 1, 65535],
    "Columns": [0, 3, 65535],
    "BitsAllocated": [0, 1, 7, 12, 64],
    "BitsStored": [0, 33],
    "HighBit": [40],
    "PixelRepresentation": [1, 7],
    "SamplesPerPixel": [0, 3],
    "NumberOfFrames": ["0", "1000000"],
    "PixelSpacing": [["0", "0"], ["-1", "1"], ["nan", "1"], ["1e30", "1e30"]],
    "ImagePositionPatient": [["nan", "0", "0"], ["1e308", "0", "0"]],
    "ImageOrientationPatient": [["0", "0", "0", "0", "0", "0"], ["1", "0", "0", "1", "0", "0"], ["nan"] * 6],
    "SliceThickness": ["0", "-5", "nan"],
    "RescaleSlope": ["0", "nan", "1e38", "-1"],
    "RescaleIntercept": ["nan", "1e308"],
    "PhotometricInterpretation": ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL"],
}


def _dicom_series(root: Path) -> Path:
    from medseg.data.phantoms import PhantomCase, make_phantom, write_dicom_series

    case = make_phantom(9, spacing=(8.0, 8.0, 12.0))
    src = root / "dicom_base"
    write_dicom_series(PhantomCase("d", case.image, case.labels, case.voxel_counts), src)
    return src


def corrupt_dicom(folder: Path, base: Path, rng) -> str:
    import pydicom

    shutil.copytree(base, folder)
    files = sorted(folder.iterdir())
    targets = files if rng.random() < 0.3 else [files[int(rng.integers(0, len(files)))]]
    r = rng.random()
    if r < 0.65:
        tag = str(rng.choice(sorted(DICOM_EDITS)))
        value = DICOM_EDITS[tag][int(rng.integers(0, len(DICOM_EDITS[tag])))]
        for f in targets:
            ds = pydicom.dcmread(f)
            setattr(ds, tag, value)
            ds.save_as(f, enforce_file_format=True)
        return f"{tag}={value!r} in {len(targets)} file(s)"
    if r < 0.8:
        for f in targets:
            b = f.read_bytes()
            f.write_bytes(b[: int(rng.integers(0, len(b)))])
        return f"{len(targets)} file(s) truncated"
    if r < 0.9:
        for f in targets:
            b = bytearray(f.read_bytes())
            for p in rng.integers(128, len(b), 16):
                b[int(p)] = int(rng.integers(0, 256))
            f.write_bytes(bytes(b))
        return f"bytes overwritten in {len(targets)} file(s)"
    for f in targets:
        ds = pydicom.dcmread(f)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(f, enforce_file_format=True)
    return f"pixel data halved in {len(targets)} file(s)"


# --- the run ---------------------------------------------------------------------------------------


def _tiny_checkpoint(path: Path) -> Path:
    """An untrained tiny U-Net: its answers do not matter, only that inputs reach it safely."""
    import torch

    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "model": {
                "name": "unet",
                "spatial_dims": 3,
                "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
            },
            "preprocessing": {"spacing": [8.0, 8.0, 8.0]},
            "inference": {"roi_size": [32, 32, 16], "sw_batch_size": 2, "amp": "off"},
        }
    )
    model = create_model(
        "unet",
        spatial_dims=3,
        in_channels=1,
        out_channels=PHANTOM_LABELS.num_classes,
        channels=[4, 8],
        strides=[2],
        num_res_units=0,
    )
    return save_checkpoint(path, model, config=cfg, label_table=PHANTOM_LABELS)


def _classify(exc_or_volume, name: str) -> str | None:
    """None when the outcome is acceptable, else why not."""
    from medseg.errors import MedsegError
    from medseg.io.volume import Volume

    if isinstance(exc_or_volume, Volume):
        v = exc_or_volume
        if v.array.ndim != 3 or tuple(v.array.shape) != v.shape or not np.all(np.isfinite(v.affine)):
            return f"bad volume {v.array.shape}"
        return None
    if not isinstance(exc_or_volume, MedsegError):
        return f"{type(exc_or_volume).__name__}: {str(exc_or_volume)[:300]}"
    msg = str(exc_or_volume)
    if "\n" in msg:
        return f"multi-line message: {msg[:300]!r}"
    if name not in msg:
        return f"message does not name the file: {msg[:300]!r}"
    return None


def _predict(ckpt: Path, inputs: list[Path], out: Path) -> tuple[int, str]:
    from medseg.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(
                [
                    "predict",
                    "--model",
                    str(ckpt),
                    *[str(p) for p in inputs],
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--no-progress",
                    "--no-seg",
                ]
            )
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _check_predict(code: int, err: str, out: Path, names: dict) -> list[str]:
    """Exit code documented, no traceback, each failure one line naming its file."""
    import csv

    bad = []
    if code not in (0, 1, 2):
        bad.append(f"exit code {code}")
    if "Traceback" in err or "internal error" in err:
        bad.append(f"traceback/internal error in stderr: {err[-1500:]!r}")
    failures = out / "failures.csv"
    if failures.exists():
        with open(failures, newline="") as fh:
            for row in csv.DictReader(fh):
                name = names.get(row["case_id"], row["case_id"])
                if "\n" in row["error"] or name not in row["error"] or row["error"].startswith("internal error"):
                    bad.append(f"{row['case_id']}: {row['error'][:300]!r}")
    elif code == 2 and err.count("medseg: error:") != 1:
        bad.append(f"exit 2 without exactly one error line: {err[-800:]!r}")
    return bad


def run(workdir: Path, n_nifti: int = N_NIFTI, n_dicom: int = N_DICOM, seed: int = SEED) -> dict:
    import logging

    import torch

    from medseg.io.readers import read_volume

    logging.disable(logging.CRITICAL)  # the CLI's own one-line errors go to stderr regardless
    torch.set_num_threads(1)  # tiny volumes: threads only contend (10x slower on a shared 2-core box)
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ckpt = _tiny_checkpoint(workdir / "tiny.pt")
    summary = {"nifti": {"read": 0, "refused": 0}, "dicom": {"read": 0, "refused": 0}, "bad": [], "cases": {}}

    bases = _base_niftis()
    nifti_dir = workdir / "nifti"
    nifti_dir.mkdir()
    files = []
    for i in range(n_nifti):
        path = nifti_dir / f"case{i:03d}{'.nii.gz' if i % 2 else '.nii'}"
        what = corrupt_nifti(path, bases[int(rng.integers(0, len(bases)))], rng)
        summary["cases"][path.name] = what
        files.append(path)
        try:
            outcome = read_volume(path)
        except Exception as exc:  # noqa: BLE001 -- the point: anything but MedsegError is a finding
            outcome = exc
        summary["nifti"]["read" if not isinstance(outcome, Exception) else "refused"] += 1
        why = _classify(outcome, path.name)
        if why:
            summary["bad"].append(f"read {path.name} ({what}): {why}")
        del outcome

    # one batch over every file (per-case failures), then single-file runs (one line, exit 2)
    from medseg.io.readers import case_id_for

    names = {case_id_for(p): p.name for p in files}
    summary["seconds_read"] = round(time.monotonic() - t0, 1)
    if files:
        code, err = _predict(ckpt, files, workdir / "out_batch")
        summary["predict_batch_exit"] = code
        summary["bad"] += [f"predict batch: {b}" for b in _check_predict(code, err, workdir / "out_batch", names)]
    summary["seconds_batch"] = round(time.monotonic() - t0, 1)
    for i, path in enumerate(files[:40]):
        code, err = _predict(ckpt, [path], workdir / f"out_single{i}")
        summary["bad"] += [
            f"predict {path.name} ({summary['cases'][path.name]}): {b}"
            for b in _check_predict(code, err, workdir / f"out_single{i}", names)
        ]

    if n_dicom:
        base = _dicom_series(workdir)
        folders = []
        for i in range(n_dicom):
            folder = workdir / "dicom" / f"series{i:03d}"
            folder.parent.mkdir(exist_ok=True)
            what = corrupt_dicom(folder, base, rng)
            summary["cases"][folder.name] = what
            folders.append(folder)
            try:
                outcome = read_volume(folder)
            except Exception as exc:  # noqa: BLE001 -- as above
                outcome = exc
            summary["dicom"]["read" if not isinstance(outcome, Exception) else "refused"] += 1
            why = _classify(outcome, folder.name)
            if why:
                summary["bad"].append(f"read {folder.name} ({what}): {why}")
            del outcome
        names = {f.name: f.name for f in folders}
        code, err = _predict(ckpt, folders, workdir / "out_dicom")
        summary["predict_dicom_exit"] = code
        summary["bad"] += [f"predict dicom batch: {b}" for b in _check_predict(code, err, workdir / "out_dicom", names)]

    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary["peak_rss_mb"] = _own_peak_mb()
    return summary


def _run_in_subprocess(tmp_path: Path, n_nifti: int, n_dicom: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("MEDSEG_MAX_VOXELS", None)  # the default limit is what is checked
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "fuzz"), str(n_nifti), str(n_dicom), str(seed)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _own_peak_mb() -> float:
    """This process's own peak RSS: Linux VmHWM (ru_maxrss keeps the forking parent's high-water mark across exec,
    so a test process that has grown to 2.6 GB made the fuzz look 2.6 GB large)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def test_fuzzed_nifti_headers_and_files_are_read_or_refused_in_one_line(tmp_path):
    summary = _run_in_subprocess(tmp_path, N_NIFTI, 0, SEED)
    assert summary["bad"] == [], "\n".join(summary["bad"][:30])
    # the fuzz really exercised both outcomes
    assert summary["nifti"]["read"] >= 30 and summary["nifti"]["refused"] >= 100, summary["nifti"]
    assert summary["predict_batch_exit"] == 1  # some cases segmented, some failed, none crashed the batch
    assert summary["peak_rss_mb"] < MEMORY_LIMIT_MB, summary["peak_rss_mb"]
    assert summary["seconds"] < 60, summary["seconds"]


def test_fuzzed_dicom_series_are_read_or_refused_in_one_line(tmp_path):
    pytest.importorskip("pydicom")
    summary = _run_in_subprocess(tmp_path, 0, N_DICOM, SEED + 1)
    assert summary["bad"] == [], "\n".join(summary["bad"][:30])
    assert summary["dicom"]["read"] >= 5 and summary["dicom"]["refused"] >= 10, summary["dicom"]
    assert summary["peak_rss_mb"] < MEMORY_LIMIT_MB, summary["peak_rss_mb"]
    assert summary["seconds"] < 60, summary["seconds"]


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    args = sys.argv[1:]
    result = run(Path(args[0]), *(int(a) for a in args[1:4]))
    result.pop("cases") if not result["bad"] else None
    print(json.dumps(result))
