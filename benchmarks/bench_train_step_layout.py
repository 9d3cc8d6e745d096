"""Seconds per training step, channels-first against channels-last with layout-keeping instance norms, per model preset.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_step_layout.py [--models fcn8s_small,deeplabv3_small]
        [--patch 96,96,64] [--threads 1] [--steps 5] [--smoke]

Each preset's network (``none``: the phantom demo's MONAI U-Net) takes ``--steps`` timed training steps (forward,
backward, AdamW; bf16 autocast, batch 1, random input) after two warm-up steps, in each layout, in this one process;
``converted`` says whether ``channels_last_training`` converts that network in training (it declines networks with
instance norms under 16 channels). Prints a table with the ratio. Results:
benchmarks/results/2026-12-01_training_channels_last.txt.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_UNET = {"name": "unet", "kwargs": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}}


def step_seconds(net, x, steps: int) -> float:
    import torch

    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    net.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
            outs = out if isinstance(out, (list, tuple)) else [out]
            loss = sum(o.float().square().mean() for o in outs)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="none,unet_plain_small,unet_classic_small,fcn8s_small,deeplabv3_small")
    ap.add_argument("--patch", default="96,96,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (the demo U-Net and unet_plain_small, patch 32x32x16, "
        "one timed step): a test that it runs",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.patch, args.steps = "none,unet_plain_small", "32,32,16", 1

    import pandas as pd
    import torch

    from medseg.inference.channels_last import channels_last_training
    from medseg.inference.sliding_window import to_layout
    from medseg.models import create_model
    from medseg.models.presets import load_model_preset

    torch.set_num_threads(args.threads)
    patch = [int(p) for p in args.patch.split(",")]
    rows = []
    for preset in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = DEMO_UNET if preset == "none" else load_model_preset(preset)["model"]
        torch.manual_seed(0)
        base = create_model(spec["name"], spatial_dims=3, in_channels=1, out_channels=5, **spec["kwargs"])
        x = torch.randn(1, 1, *patch)
        first = step_seconds(base, x, args.steps)
        net = copy.deepcopy(base)
        converted = channels_last_training(net, device=torch.device("cpu"), batch_size=1, amp_dtype=torch.bfloat16)
        if not converted:  # force it, to show what the rule avoids
            from medseg.inference.channels_last import channels_last_network

            channels_last_network(net)
        last = step_seconds(net, to_layout(x, True), args.steps)
        rows.append(
            {
                "preset": preset,
                "model": spec["name"],
                "channels_first_s": round(first, 3),
                "channels_last_s": round(last, 3),
                "ratio_last_first": round(last / first, 2),
                "converted": converted,
            }
        )
        print(rows[-1], flush=True)
    print(f"\npatch {patch}, batch 1, bf16 autocast, {args.threads} thread(s), {args.steps} timed steps each")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
