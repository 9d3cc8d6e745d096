"""One nnU-Net window, several ways: seconds per forward pass and logits against nnU-Net's float32 pass.

    .venv/bin/python benchmarks/bench_window_layout.py [--patch 48,128,160] [--features 32,320] [--compile] [--smoke]

The network is nnU-Net's full-width 3D PlainConvUNet (``dynamic_network_architectures``, as nnU-Net's planner
configures it for CT: six stages 32..320, instance norm, LeakyReLU), randomly initialised (seed 0): the seconds do
not depend on the weights, and the logit differences are those of the arithmetic. Each row runs the same window
(seed 1); seconds are the fastest of ``--repeat`` passes after one warm-up pass. Rows:

- ``float32, channels-first``: nnU-Net's own pass on a CPU (the reference: x 1.00, the logits compared against);
- ``bf16 weights, channels-first``: medseg's ``cast: weights`` (the whole network in bf16);
- ``bf16 weights, channels-last``: the same with the weights and windows laid out channels-last; PyTorch's instance
  norm copies each activation out of that layout and back;
- ``bf16 weights, channels-last, layout norms``: instance norms that keep the layout
  (``medseg.inference.channels_last``) -- the fast preset;
- ``float32, channels-last, layout norms``: why the faithful preset does not use them (the statistics' summation
  order moves float32 logits more than a compile does);
- with ``--compile``: inductor with frozen weights (the compile's seconds printed apart), float32 and the fast row.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(features: tuple[int, int], classes: int = 5):
    """nnU-Net's 3D PlainConvUNet as its CT plans describe it, built by medseg's nnU-Net loader (randomly
    initialised)."""
    import torch

    from medseg.adapters.nnunet.folder import build_network

    f0, fmax = features
    torch.manual_seed(0)
    kwargs = {
        "n_stages": 6,
        "features_per_stage": [min(f0 * 2**i, fmax) for i in range(6)],
        "conv_op": torch.nn.Conv3d,
        "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2] * 6,
        "n_conv_per_stage_decoder": [2] * 5,
        "conv_bias": True,
        "norm_op": torch.nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": torch.nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
    }
    return build_network("PlainConvUNet", kwargs, 1, classes).eval()


def timed(net, x, repeat: int):
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = net(x)
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = net(x)
            best = min(best, time.perf_counter() - t0)
    return first, best, out.float()


def main(argv=None) -> int:
    import os
    import tempfile

    # an empty inductor cache: the compiled rows' first pass is a cold compile, as on a fresh server
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="medseg-bench-inductor-")
    import torch
    import torch._inductor.config as inductor_config

    from medseg.inference.channels_last import channels_last_network

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch", default="48,128,160")
    ap.add_argument("--features", default="32,320", help="first stage, cap (nnU-Net: 32,320)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also compiled rows (each compile takes 10-20 s here)")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (window 16x64x64, features 2,8, one pass): a test that it runs",
    )
    a = ap.parse_args(argv)
    if a.smoke:
        a.patch, a.features, a.repeat = "16,64,64", "2,8", 1
    patch = [int(v) for v in a.patch.split(",")]
    base = build(tuple(int(v) for v in a.features.split(",")))
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(1))
    cl = torch.channels_last_3d

    def bf16(net):
        return copy.deepcopy(net).to(torch.bfloat16)

    rows = [
        ("float32, channels-first (nnU-Net on a CPU)", lambda: base, x),
        ("bf16 weights, channels-first", lambda: bf16(base), x.bfloat16()),
        (
            "bf16 weights, channels-last",
            lambda: bf16(base).to(memory_format=cl),
            x.bfloat16().contiguous(memory_format=cl),
        ),
        (
            "bf16 weights, channels-last, layout norms (fast)",
            lambda: channels_last_network(bf16(base)),
            x.bfloat16().contiguous(memory_format=cl),
        ),
        (
            "float32, channels-last, layout norms",
            lambda: channels_last_network(copy.deepcopy(base)),
            x.contiguous(memory_format=cl),
        ),
    ]
    if a.compile:

        def compiled(make):
            def build_compiled():
                with inductor_config.patch(freezing=True):
                    return torch.compile(make(), dynamic=False)

            return build_compiled

        rows += [
            ("float32 compiled (faithful)", compiled(lambda: copy.deepcopy(base)), x),
            (
                "bf16 weights, channels-last, layout norms, compiled",
                compiled(lambda: channels_last_network(bf16(base))),
                x.bfloat16().contiguous(memory_format=cl),
            ),
        ]
    print(
        f"# bench_window_layout.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; window {patch}, PlainConvUNet features {a.features}, 5 classes"
    )
    print(f"{'run':<52}{'s/pass':>8}{'x fp32':>8}{'first s':>9}{'max |dlogit|':>14}{'argmax =':>10}")
    ref = ref_s = None
    for name, make, inp in rows:
        with inductor_config.patch(freezing=True):
            first, best, out = timed(make(), inp, a.repeat)
        if ref is None:
            ref, ref_s = out, best
        diff = float((out - ref).abs().max())
        same = float((out.argmax(1) == ref.argmax(1)).float().mean())
        print(f"{name:<52}{best:>8.3f}{ref_s / best:>8.2f}{first:>9.1f}{diff:>14.2e}{same:>10.5f}", flush=True)
    print(
        f"# logit scale: max |logit| {float(ref.abs().max()):.2f}; 'first s' is the first pass (a cold compile's "
        "included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
