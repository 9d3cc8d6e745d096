"""The costs around the network for a medseg checkpoint: process start-up, and peak memory on a CT-sized volume.

Start-up (each its own process, best of ``--repeat``): ``medseg predict --help``; importing what ``medseg predict``
loads (``medseg.api.predicting``); the whole ``medseg predict`` of a small case, with the start-up it records in its
sidecar (``seconds_startup``: process start until the model is loaded). Reference, measured in the same run:
importing every verb's module (what ``import medseg.api`` did before the API became one module per verb).

Memory: a phantom-like int16 CT of ``--shape`` voxels (default 512x512x1920: 1.0 GB) through ``medseg predict`` in
its own process; its peak RSS (``wait4``) against the input's own size. Target (issue 37): at most 2x.

    .venv/bin/python benchmarks/bench_startup.py                 # start-up + 512x512x1920 memory (minutes)
    .venv/bin/python benchmarks/bench_startup.py --model best.pt # a trained checkpoint (realistic boundaries)
    .venv/bin/python benchmarks/bench_startup.py --smoke         # seconds: that it runs
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

#: What every verb imported, all at once: ``import medseg.api`` before it became one module per verb.
EVERY_VERB = (
    "import medseg.api.predicting, medseg.api.training, medseg.api.reporting, medseg.api.pipelines, "
    "medseg.api.dicom, medseg.api.datasets, medseg.api.catalog, medseg.api.demos"
)
TARGET_RATIO = 2.0


def _run(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak RSS MiB of that process alone)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0


def _best(cmd: list[str], repeat: int) -> tuple[float, float]:
    runs = [_run(cmd) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _phantom(path: Path, shape) -> int:
    """A body-like int16 CT (air, soft tissue, a brighter organ, bone) of ``shape``, 0.7 x 0.7 x 0.625 mm, written
    slice by slice into one array; returns its voxel bytes."""
    import nibabel as nib
    import numpy as np

    a = np.full(shape, -1000, np.int16, order="F")
    x = (np.arange(shape[0]) - shape[0] / 2)[:, None]
    y = (np.arange(shape[1]) - shape[1] / 2)[None, :]
    body = (x / (0.42 * shape[0])) ** 2 + (y / (0.32 * shape[1])) ** 2 <= 1
    organ = ((x + 0.12 * shape[0]) / (0.15 * shape[0])) ** 2 + (y / (0.12 * shape[1])) ** 2 <= 1
    bone = (x - 0.1 * shape[0]) ** 2 + y**2 < (0.05 * shape[0]) ** 2
    for k in range(shape[2]):
        s = a[:, :, k]
        s[body] = 40
        if (k // max(1, shape[2] // 8)) % 2 == 0:
            s[organ] = 60
        s[bone] = 300
    img = nib.Nifti1Image(a, np.diag([-0.7, -0.7, 0.625, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return int(a.nbytes)


def _checkpoint(path: Path) -> str:
    """The demo config's U-Net, untrained, at 4 mm on 64^3 windows (labels are noise: many boundary voxels)."""
    import torch

    from medseg.config import CONFIG_ROOT, load_config
    from medseg.data.phantoms import PHANTOM_LABELS
    from medseg.models import create_model
    from medseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = load_config(
        CONFIG_ROOT / "training" / "phantom_demo.yaml",
        overrides=["preprocessing.spacing=[4,4,4]", "inference.roi_size=[64,64,64]", "inference.overlap=0.0"],
    )
    model = create_model(
        cfg.model.name, spatial_dims=3, in_channels=1, out_channels=PHANTOM_LABELS.num_classes, **cfg.model.kwargs
    )
    return str(save_checkpoint(path, model, config=cfg, label_table=PHANTOM_LABELS))


def _predict(model: str, image: Path, out: Path) -> tuple[float, float, dict]:
    cmd = [sys.executable, "-m", "medseg", "predict", "--model", model, str(image), "--out", str(out), "--no-progress"]
    wall, peak = _run(cmd)
    sidecar = json.loads((out / (image.name.split(".")[0] + ".json")).read_text())
    return wall, peak, sidecar


def _made(child: list[str]):
    out = subprocess.run([sys.executable, __file__, "--child", *child], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="medseg checkpoint; default: an untrained U-Net at 4 mm")
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 1920], help="memory volume (voxels)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per start-up row (best of)")
    ap.add_argument("--smoke", action="store_true", help="48x48x32 volume, one run per row, no reference: that it runs")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # the checkpoint and the volumes are made in a child: the parent stays small (a child's peak
        kind, path, *shape = args.child  # RSS counts the parent's pages at fork)
        done = _checkpoint(Path(path)) if kind == "model" else _phantom(Path(path), tuple(int(n) for n in shape))
        print(json.dumps(done))
        return
    if args.smoke:
        args.shape, args.repeat = [48, 48, 32], 1
    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    py = sys.executable
    model = args.model or _made(["model", str(work / "untrained.pt")])
    print(f"{os.cpu_count()} CPU cores; model {model}", flush=True)

    rows = []
    if not args.smoke:
        rows.append(("import every verb (reference)", *_best([py, "-c", EVERY_VERB], args.repeat)))
        rows.append(("import the predict path", *_best([py, "-c", "import medseg.api.predicting"], args.repeat)))
    rows.append(("medseg predict --help", *_best([py, "-m", "medseg", "predict", "--help"], args.repeat)))
    small = work / "small.nii.gz"
    small_bytes = _made(["volume", str(small), *map(str, (96, 96, 64) if not args.smoke else args.shape)])
    runs = [_predict(model, small, work / f"small_{i}") for i in range(args.repeat)]
    wall, peak, side = min(runs, key=lambda r: r[0])
    rows.append(("medseg predict, small case", wall, peak))
    ref = rows[0][1] if not args.smoke else float("nan")
    print(f"\n{'start-up (own process each)':<32} {'seconds':>8} {'x faster':>9} {'peak RSS MB':>12}")
    for name, sec, mb in rows:
        print(f"{name:<32} {sec:>8.2f} {ref / sec:>9.2f} {mb:>12.0f}")
    print(
        f"  sidecar of the small case: seconds_startup {side.get('seconds_startup')}, seconds_model_load "
        f"{side.get('seconds_model_load')}, seconds (case) {side.get('seconds')}, seconds_total "
        f"{side.get('seconds_total')}"
    )

    if args.smoke:  # the small case is the memory case
        nbytes = small_bytes
    else:
        big = work / "big.nii.gz"
        t0 = time.perf_counter()
        nbytes = _made(["volume", str(big), *map(str, args.shape)])
        print(f"\nmemory volume: int16, {nbytes / 2**20:.0f} MiB, written in {time.perf_counter() - t0:.0f} s")
        wall, peak, side = _predict(model, big, work / "big_out")
    ratio = peak * 2**20 / nbytes
    print(f"\n{'memory':<32} {'seconds':>8} {'peak MiB':>9} {'input MiB':>10} {'peak/input':>11} {'target':>7}")
    print(
        f"{'medseg predict, ' + 'x'.join(map(str, args.shape)):<32} {wall:>8.2f} {peak:>9.0f} {nbytes / 2**20:>10.0f} "
        f"{ratio:>11.2f} {TARGET_RATIO:>7.1f}  ({'met' if ratio <= TARGET_RATIO else 'NOT met'})"
    )
    print(f"  (sidecar: peak_rss_mb {side.get('peak_rss_mb')} at the end of the case's prediction)")


if __name__ == "__main__":
    main()
