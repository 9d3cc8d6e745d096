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

The runner at scale (issue 35), ``--cases N --tiny``: N tiny NIfTI cases (4 phantom volumes of 20x20x16 voxels,
hard-linked under N names) and a tiny U-Net, so the runner itself is measured, not the network:

- ``medseg run`` (local engine, 1 worker, no QC pictures) over the N cases; the runner's overhead per case is its
  wall time minus that of a bare loop (read, predict, label map + volumes.json, in its own process, same model)
  over the same cases, measured in the same invocation (over ``--reference-cases`` of them, scaled to N);
- the rerun of the same command on the finished run (the resume: nothing to do but skip and rebuild the tables);
- the driver's peak RSS (the whole local engine is one process: its ``ru_maxrss``);
- the cohort tables for N cases x ``--structures`` structures (``volumes.csv`` & co., ``status.csv``,
  ``failures.csv`` through ``medseg.runner.run.aggregate``), timed in their own process, with its peak RSS.

    .venv/bin/python benchmarks/bench_runner.py --cases 10000 --tiny          # issue 35 targets (about 15 min)
    .venv/bin/python benchmarks/bench_runner.py --cases 1000 --tiny --profile  # cProfile of the driver -> TMP
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


# -- the runner at scale (``--tiny``) ------------------------------------------------------------------------------
TARGETS = {  # issue 35, on a 2-core machine
    "overhead_ms": 50.0,
    "resume_s": 30.0,
    "driver_peak_mb": 1024.0,
    "cohort_s": 120.0,
}
TINY_FOV = (160.0, 160.0, 128.0)  # at 8 mm: 20 x 20 x 16 voxels


def make_tiny_data(root: Path, n: int) -> tuple[Path, Path]:
    """N cases as hard links to 4 phantom volumes (a copy where links are refused), and a tiny U-Net."""
    from medseg.config import config_from_dict
    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom
    from medseg.io.readers import write_volume
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    cfg = config_from_dict(
        {
            "model": {"name": "unet", "kwargs": {"channels": [4, 8], "strides": [2]}},
            "preprocessing": {"window": [0, 400], "spacing": [8.0, 8.0, 8.0]},
            "inference": {"roi_size": [16, 16, 16], "overlap": 0.0},
        }
    )
    net = create_model(
        "unet", spatial_dims=3, in_channels=1, out_channels=PHANTOM_LABELS.num_classes, channels=[4, 8], strides=[2]
    )
    ckpt = save_checkpoint(root / "tiny.pt", net, config=cfg, label_table=PHANTOM_LABELS)
    seeds = root / "seeds"
    originals = [
        write_volume(make_phantom(2000 + k, spacing=(8.0, 8.0, 8.0), fov_mm=TINY_FOV).image, seeds / f"s{k}.nii.gz")
        for k in range(4)
    ]
    cases = root / "cases"
    cases.mkdir()
    for i in range(n):
        target = cases / f"case{i:05d}.nii.gz"
        try:
            os.link(originals[i % 4], target)
        except OSError:
            target.write_bytes(Path(originals[i % 4]).read_bytes())
    return cases, ckpt


def _timed(cmd: list, what: str) -> tuple[float, float, float, str]:
    """Run ``cmd``; its wall seconds, CPU seconds (user + system), peak RSS (MB, ``ru_maxrss`` from ``wait4``)
    and stdout."""
    # one torch thread: the tiny network is measured in the runner and in the bare loop alike, and does not spin
    # on a core that the other process (or another user of a shared machine) holds
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{what} exited {proc.returncode}: {stderr.strip()[-800:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, stdout


def _tiny_run_cmd(cases: Path, ckpt: Path, out: Path, profile: Path | None = None) -> list:
    head = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else []) + ["-m", "medseg"]
    return head + [
        "run",
        str(ROOT / "pipelines" / "dicom_volumetry.yaml"),
        "--input",
        str(cases),
        "--out",
        str(out),
        "--set",
        f"predict.model={ckpt}",
        "--set",
        "report.qc=false",
        "--set",
        "report.html=false",
        "--set",
        "predict.device=cpu",
        "--workers",
        "1",
        "--no-progress",
    ]


def bare_loop(cases: Path, ckpt: Path, out: Path, k: int) -> None:
    """The reference: what every case needs without the runner (read, predict, label map, volumes.json)."""
    import json as _json

    from medseg.inference.outputs import plain
    from medseg.io.readers import read_volume, write_volume
    from medseg.labels import LabelTable
    from medseg.models.checkpoint import load_checkpoint
    from medseg.reporting.volumes import structure_rows
    from medseg.runner.model import load_predictor
    from medseg.runner.settings import load_pipeline

    pipe = load_pipeline(ROOT / "pipelines" / "dicom_volumetry.yaml", overrides=[f"predict.model={ckpt}"])
    ckpt_info = load_checkpoint(ckpt)
    table = LabelTable.from_dict(ckpt_info["labels"])

    class _Ctx:  # what load_predictor reads of a RunContext
        pipeline, model_path, model_sha256, device = pipe, str(ckpt), ckpt_info["file_sha256"], "cpu"

    predictor = load_predictor(_Ctx)
    t0, c0 = time.monotonic(), time.process_time()
    for src in sorted(cases.iterdir())[:k]:
        image = read_volume(src)
        labels = predictor.predict(image)
        cdir = out / src.name.split(".")[0]
        cdir.mkdir(parents=True)
        write_volume(labels, cdir / "labels.nii.gz")
        rows = structure_rows(cdir.name, labels, table, image)
        (cdir / "volumes.json").write_text(_json.dumps(plain(rows), indent=2, sort_keys=True, default=str) + "\n")
    print(_json.dumps({"loop_s": time.monotonic() - t0, "loop_cpu_s": time.process_time() - c0}))


def cohort_tables(root: Path, n: int, n_structures: int, ckpt: Path) -> None:
    """N cases x ``n_structures`` per-case rows (done state records + volumes.json, as a run leaves them), then the
    run's cohort step (``aggregate`` + ``RunDir.write_tables``) timed; prints seconds and peak RSS (MB)."""
    import json as _json
    from types import SimpleNamespace

    import numpy as np

    from medseg.labels import Label, LabelTable
    from medseg.provenance import peak_rss_mb, reset_peak_rss
    from medseg.runner.run import aggregate
    from medseg.runner.rundir import RunDir
    from medseg.runner.settings import load_pipeline

    table = LabelTable("bench_100", tuple(Label(i + 1, f"structure_{i + 1:03d}") for i in range(n_structures)))
    rd = RunDir(root / "run")
    rd.state_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        cid = f"case{i:05d}"
        cdir = rd.case_dir(cid)
        cdir.mkdir(parents=True)
        vols = rng.lognormal(4.0, 0.3, n_structures)
        rows = [
            {
                "case_id": cid,
                "structure": lb.name,
                "label": lb.index,
                "status": "absent" if v < 35 else "present",
                "voxel_count": 0 if v < 35 else int(v * 10),
                "volume_mm3": 0.0 if v < 35 else float(int(v * 10) * 100.0),
                "volume_ml": 0.0 if v < 35 else float(int(v * 10) * 0.1),
                "n_components": 0 if v < 35 else 1,
                "intensity_mean": None if v < 35 else float(v),
                "touches_border": None if v < 35 else False,
                "voxel_volume_mm3": 100.0,
                "spacing_mm": "4x5x5",
                "source_labels": f"cases/{cid}/labels.nii.gz",
                "source_image": f"/data/{cid}.nii.gz",
                "intensity_sampling": "same grid",
                "model": "unet",
                "model_sha256": "0" * 64,
                "qc": "pass",
                "qc_reasons": "",
            }
            for lb, v in zip(table.labels, vols, strict=True)
        ]
        (cdir / "volumes.json").write_text(_json.dumps(rows, indent=2, sort_keys=True) + "\n")
        rel = f"cases/{cid}/volumes.json"
        (rd.state_dir / f"{cid}.json").write_text(
            _json.dumps({"case_id": cid, "status": "done", "outputs": {"volumes": rel}, "seconds": 0.1})
        )
        cases.append(SimpleNamespace(case_id=cid, source=f"/data/{cid}.nii.gz"))
    pipe = load_pipeline(
        ROOT / "pipelines" / "dicom_volumetry.yaml",
        overrides=["report.html=false", "report.qc=false", f"predict.model={ckpt}"],
    )
    reset_peak_rss()
    base = peak_rss_mb()
    t0 = time.monotonic()
    aggregate(rd, pipe, cases, table)
    rd.write_tables(cases)
    seconds = time.monotonic() - t0
    lines = sum(1 for _ in open(rd.root / "volumes.csv")) - 1
    print(_json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "base_mb": base, "rows": lines}))


def _judge(value: float, target: float) -> str:
    return f"{value / target:>7.2f}  " + ("met" if value <= target else f"over by {value - target:.3g}")


def tiny_main(args) -> None:
    n, k = args.cases, min(args.cases, args.reference_cases)
    with tempfile.TemporaryDirectory(prefix="bench_runner_") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        cases, ckpt = make_tiny_data(root, n)
        print(
            f"{n:,} tiny cases (20x20x16 voxels, hard links to 4 phantoms) written in {time.monotonic() - t0:.1f} s; "
            f"cpu cores: {os.cpu_count()}"
        )
        me = [sys.executable, str(Path(__file__).resolve())]
        bare_s, bare_cpu, _, bare_out = _timed(
            me + ["--_bare", str(cases), str(ckpt), str(root / "bare"), str(k)], "bare loop"
        )
        loop = json.loads(bare_out.strip().splitlines()[-1])
        out = root / "run"
        profile = Path(tempfile.gettempdir()) / f"bench_runner_{n}.prof" if args.profile else None
        run_s, run_cpu, run_peak, _ = _timed(_tiny_run_cmd(cases, ckpt, out, profile), "medseg run")
        done = json.loads((out / "run.json").read_text())["counts"]["done"]
        if done != n:
            raise SystemExit(f"medseg run finished {done} of {n} cases")
        resume_s, resume_cpu, resume_peak, _ = _timed(_tiny_run_cmd(cases, ckpt, out), "medseg run (resume)")
        _, _, _, co = _timed(
            me + ["--_cohort", str(root / "cohort"), str(args.cohort_cases or n), str(args.structures), str(ckpt)],
            "cohort tables",
        )
        cohort = json.loads(co.strip().splitlines()[-1])
        # the bare loop's fixed cost (start-up, imports, model load) once, its per-case cost N times; wall clock,
        # and CPU seconds (user + system of the process: what a shared machine's load does not inflate as much)
        wall_ms = 1000.0 * (run_s - (bare_s - loop["loop_s"]) - loop["loop_s"] / k * n) / n
        cpu_ms = 1000.0 * (run_cpu - (bare_cpu - loop["loop_cpu_s"]) - loop["loop_cpu_s"] / k * n) / n
        print(
            f"medseg run: {run_s:.1f} s wall, {run_cpu:.1f} s CPU ({n / run_s:.1f} cases/s); bare loop: "
            f"{loop['loop_s']:.1f} s wall, {loop['loop_cpu_s']:.1f} s CPU over {k:,} cases "
            f"({1000 * loop['loop_s'] / k:.1f} ms a case) + start-up {bare_s - loop['loop_s']:.1f} s wall, "
            f"{bare_cpu - loop['loop_cpu_s']:.1f} s CPU; load average {os.getloadavg()[0]:.1f}"
            + (f"; driver profile: {profile}" if profile else "")
        )
        print(f"\n{'measure':<50}{'value':>10}{'target':>12}{'ratio':>9}  verdict")
        for what, value, unit, key in (
            ("runner overhead per case, wall (run - bare loop)", wall_ms, "ms", "overhead_ms"),
            ("runner overhead per case, CPU (run - bare loop)", cpu_ms, "ms", "overhead_ms"),
            (f"resume of the finished {n:,}-case run, wall", resume_s, "s", "resume_s"),
            (f"resume of the finished {n:,}-case run, CPU", resume_cpu, "s", "resume_s"),
            ("driver peak RSS (run)", run_peak, "MB", "driver_peak_mb"),
            ("driver peak RSS (resume)", resume_peak, "MB", "driver_peak_mb"),
            (f"cohort tables, {cohort['rows']:,} rows, wall", cohort["seconds"], "s", "cohort_s"),
            ("cohort tables peak RSS", cohort["peak_mb"], "MB", "driver_peak_mb"),
        ):
            print(f"{what:<50}{value:>7.1f} {unit:<2}{TARGETS[key]:>9.0f} {unit:<2}{_judge(value, TARGETS[key])}")


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
    ap.add_argument("--cases", type=int, help="with --tiny: the number of tiny cases (issue 35: 10000)")
    ap.add_argument("--tiny", action="store_true", help="the runner at scale: tiny cases and network (see above)")
    ap.add_argument("--reference-cases", type=int, default=1000, help="--tiny: cases in the bare-loop reference")
    ap.add_argument("--cohort-cases", type=int, help="--tiny: cases in the cohort tables (default: --cases)")
    ap.add_argument("--structures", type=int, default=100, help="--tiny: structures per case in the cohort tables")
    ap.add_argument("--profile", action="store_true", help="--tiny: cProfile the first run's driver (file in TMP)")
    ap.add_argument("--_bare", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_cohort", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._bare:
        cases, ckpt, out, k = args._bare
        return bare_loop(Path(cases), Path(ckpt), Path(out), int(k))
    if args._cohort:
        return cohort_tables(Path(args._cohort[0]), int(args._cohort[1]), int(args._cohort[2]), Path(args._cohort[3]))
    if args.tiny or args.cases:
        if args.smoke:
            args.cases, args.reference_cases, args.structures = 20, 20, 100
        args.cases = args.cases or 10_000
        return tiny_main(args)
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
