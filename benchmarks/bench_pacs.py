"""``medseg run`` with a PACS as input: studies per minute, time inference waited for data, peak memory.

Writes N phantom CT studies (DICOM, one series each) and an untrained 3D U-Net
checkpoint (throughput does not depend on the weights), starts a real Orthanc
with its DICOMweb plugin on free loopback ports (tests/pacs/orthanc.py),
uploads the studies, and runs ``dicom_volumetry`` over them, each run in its
own process:

* ``folder``: the same studies from a local folder (the reference);
* ``dicomweb``: QIDO-RS + WADO-RS into a fresh cache, retrieval in the reader
  threads, overlapped with inference;
* ``dimse``: C-FIND + C-GET (``--dimse``).

Per run: seconds, studies/minute, ``input wait s`` (the seconds the network
sat idle waiting for the next case to be read or retrieved, from run.json)
and the run process's peak RSS.

    .venv/bin/python benchmarks/bench_pacs.py                 # 20 studies, 2 reader threads, + C-GET
    .venv/bin/python benchmarks/bench_pacs.py -n 5 --workers 1 --no-dimse
    .venv/bin/python benchmarks/bench_pacs.py --smoke                            # seconds: that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_data(root: Path, n: int, spacing) -> tuple[Path, Path]:
    from pydicom.uid import generate_uid

    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom, write_dicom_series
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    cfg = config_from_dict(
        {
            "model": {"name": "unet"},
            "preprocessing": {"spacing": [4.0, 4.0, 4.0]},
            "inference": {"roi_size": [32, 32, 32], "overlap": 0.0, "sw_batch_size": 4},
        }
    )
    model = create_model("unet", spatial_dims=3, in_channels=1, out_channels=PHANTOM_LABELS.num_classes)
    ckpt = save_checkpoint(root / "unet.pt", model, config=cfg, label_table=PHANTOM_LABELS)
    studies = root / "studies"
    for i in range(n):
        ph = make_phantom(2000 + i, case_id=f"study{i:03d}", spacing=tuple(spacing))
        write_dicom_series(ph, studies / ph.case_id, seed=i, study_uid=generate_uid())
    return studies, ckpt


def run_one(label: str, inp: str, ckpt: Path, out: Path, workers: int, *extra: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "medseg",
        "run",
        "dicom_volumetry",
        "--input",
        inp,
        "--out",
        str(out),
        "--set",
        f"predict.model={ckpt}",
        "--set",
        "report.html=false",
        "--set",
        "report.qc=false",
        "--workers",
        str(workers),
        "--no-progress",
        *extra,
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    stderr = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} run failed (exit {os.waitstatus_to_exitcode(status)}): {stderr.strip()[-2000:]}")
    inv = json.loads((out / "run.json").read_text())["invocations"][-1]
    n = inv["done"]
    return {
        "source": label,
        "workers": workers,
        "studies": n,
        "seconds": seconds,
        "per_min": 60.0 * n / seconds,
        "run_seconds": inv["seconds"],
        "wait": inv.get("input_wait_s", 0.0),
        "peak_mb": usage.ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="studies (default 20)")
    ap.add_argument("--workers", type=int, default=2, help="reader (retrieval) threads (default 2)")
    ap.add_argument("--spacing", type=float, nargs=3, default=[3.0, 3.0, 5.0], help="phantom voxel size in mm")
    ap.add_argument("--no-dimse", action="store_true", help="skip the C-GET run")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (1 study at 8 mm, 1 reader thread; folder and DICOMweb, no C-GET): "
        "a test that the script runs",
    )
    args = ap.parse_args()
    if args.smoke:
        args.n, args.workers, args.spacing, args.no_dimse = 1, 1, [8.0, 8.0, 8.0], True

    from pacs.orthanc import OrthancServer, missing_reason

    reason = missing_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    with tempfile.TemporaryDirectory(prefix="bench_pacs_") as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        studies, ckpt = make_data(tmp, args.n, args.spacing)
        n_files = sum(1 for _ in studies.rglob("*") if _.is_file())
        mb = sum(f.stat().st_size for f in studies.rglob("*") if f.is_file()) / 1e6
        print(
            f"{args.n} studies ({n_files} CT slices, {mb:.0f} MB, spacing {'x'.join(f'{s:g}' for s in args.spacing)} "
            f"mm) written in {time.monotonic() - t0:.0f} s; cpu cores: {os.cpu_count()}"
        )
        with OrthancServer(tmp / "orthanc") as orthanc:
            t0 = time.monotonic()
            orthanc.upload(studies)
            print(f"uploaded to Orthanc (REST) in {time.monotonic() - t0:.1f} s")
            rows = [run_one("folder", str(studies), ckpt, tmp / "run_folder", args.workers)]
            rows.append(
                run_one(
                    "dicomweb",
                    orthanc.dicomweb_spec,
                    ckpt,
                    tmp / "run_web",
                    args.workers,
                    "--query",
                    "modality=CT",
                    "--cache",
                    str(tmp / "cache_web"),
                )
            )
            if not args.no_dimse:
                rows.append(
                    run_one(
                        "dimse c-get",
                        orthanc.dimse_spec,
                        ckpt,
                        tmp / "run_dimse",
                        args.workers,
                        "--query",
                        "modality=CT",
                        "--cache",
                        str(tmp / "cache_dimse"),
                    )
                )
    print(
        f"{'source':<12} {'workers':>7} {'studies':>7} {'seconds':>8} {'studies/min':>11} {'input wait s':>12} "
        f"{'peak RSS MB':>11}"
    )
    for r in rows:
        print(
            f"{r['source']:<12} {r['workers']:>7} {r['studies']:>7} {r['seconds']:>8.1f} {r['per_min']:>11.1f} "
            f"{r['wait']:>12.2f} {r['peak_mb']:>11.0f}"
        )
    print(
        "seconds: the whole process (start, model load, query, run, tables); input wait s: inference idle, "
        "waiting for the next study to be read/retrieved (run.json invocations[-1].input_wait_s)"
    )


if __name__ == "__main__":
    main()
