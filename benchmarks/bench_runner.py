"""``medseg run`` throughput and memory: local engine with 1 and 2 workers, and the Ray engine.

Writes N small phantom cases (half NIfTI, half DICOM series; coarse spacing)
and an untrained 3D U-Net checkpoint on a coarse grid (throughput does not
depend on the weights), then runs ``pipelines/dicom_volumetry.yaml`` over them
once per engine setting, each in its own process. Prints cases/s and peak
memory: the driver's peak RSS (local engine: everything; Ray: the driver only)
and the largest per-case peak from the state records (for Ray: the actor's),
for the first and the last tenth of the cases, so growth with the number of
cases would show.

    .venv/bin/python benchmarks/bench_runner.py            # 50 cases
    .venv/bin/python benchmarks/bench_runner.py -n 10 --no-ray
    .venv/bin/python benchmarks/bench_runner.py --smoke [--no-ray]                 # seconds: that it runs
    .venv/bin/python benchmarks/bench_runner.py -n 50 --fov 300 240 150 --spacing 1.5 1.5 3   # flat memory?
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


def make_data(root: Path, n: int, spacing=(4.0, 4.0, 6.0), fov=None) -> tuple[Path, Path]:
    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom, write_dicom_series
    from medseg.io.readers import write_volume
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
    cases = root / "cases"
    for i in range(n):
        ph = make_phantom(1000 + i, case_id=f"case{i:03d}", spacing=tuple(spacing), fov_mm=tuple(fov) if fov else None)
        if i % 2:
            write_dicom_series(ph, cases / ph.case_id, seed=i)
        else:
            write_volume(ph.image, cases / f"{ph.case_id}.nii.gz")
    return cases, ckpt


def run_one(cases: Path, ckpt: Path, out: Path, engine: str, workers: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "medseg",
        "run",
        str(ROOT / "pipelines" / "dicom_volumetry.yaml"),
        "--input",
        str(cases),
        "--out",
        str(out),
        "--set",
        f"predict.model={ckpt}",
        "--set",
        "report.html=false",
        "--engine",
        engine,
        "--workers",
        str(workers),
        "--no-progress",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    stderr = proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{engine} x{workers} exited {code}: {stderr.strip()[-500:]}")
    recs = sorted((json.loads(p.read_text()) for p in (out / "state").glob("*.json")), key=lambda r: r["finished"])
    tenth = max(1, len(recs) // 10)
    return {
        "seconds": seconds,
        "cases_per_s": len(recs) / seconds,
        "driver_peak_mb": usage.ru_maxrss / 1024.0,
        "case_peak_first_mb": max(r["peak_rss_mb"] for r in recs[:tenth]),
        "case_peak_last_mb": max(r["peak_rss_mb"] for r in recs[-tenth:]),
        "n": len(recs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50, help="number of cases")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    ap.add_argument("--spacing", type=float, nargs=3, default=[4.0, 4.0, 6.0], help="phantom voxel size (mm)")
    ap.add_argument(
        "--fov",
        type=float,
        nargs=3,
        help="fixed field of view (mm): every case the same size, "
        "so peak memory can be compared between runs of different lengths (default: drawn per case)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (2 cases at 8 mm; local engine with 1 worker, "
        "Ray with 1 unless --no-ray): a test that the script runs",
    )
    args = ap.parse_args()
    if args.smoke:
        args.n, args.spacing = 2, [8.0, 8.0, 8.0]
    with tempfile.TemporaryDirectory(prefix="bench_runner_") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        cases, ckpt = make_data(root, args.n, args.spacing, args.fov)
        size = "fixed fov " + "x".join(f"{f:g}" for f in args.fov) + " mm" if args.fov else "drawn fov"
        print(
            f"{args.n} cases ({size}, spacing {'x'.join(f'{s:g}' for s in args.spacing)} mm) written in "
            f"{time.monotonic() - t0:.0f} s; cpu cores: {os.cpu_count()}"
        )
        settings = [("local", 1), ("local", 2)] + ([] if args.no_ray else [("ray", 2)])
        if args.smoke:
            settings = [("local", 1)] + ([] if args.no_ray else [("ray", 1)])
        print(
            f"{'engine':<10}{'workers':>8}{'cases':>7}{'seconds':>9}{'cases/s':>9}{'driver peak MB':>16}"
            f"{'case peak MB first 10%':>24}{'last 10%':>10}"
        )
        for engine, workers in settings:
            r = run_one(cases, ckpt, root / f"run_{engine}_{workers}", engine, workers)
            print(
                f"{engine:<10}{workers:>8}{r['n']:>7}{r['seconds']:>9.1f}{r['cases_per_s']:>9.2f}{r['driver_peak_mb']:>16.0f}"
                f"{r['case_peak_first_mb']:>24.0f}{r['case_peak_last_mb']:>10.0f}"
            )


if __name__ == "__main__":
    main()
