"""How fine can a score map at output stride s be? The Dice ceiling of coarse segmentation heads.

FCN-32s/16s/8s and DeepLabV3 predict class scores on a grid ``s`` times coarser than the input and
upsample them. This script measures, on the phantoms of ``bench_models.py`` (its validation cases, at
the 2.5 mm training grid), the best mean Dice that *any* network can reach through such a head: the
low-resolution logits are fitted directly to each case's true label map (Adam on cross-entropy + soft Dice,
``--steps`` steps), upsampled trilinearly (DeepLabV3's head; FCN's learned transposed convolutions are
initialised to the same interpolation), argmaxed and scored against the truth. A network's own scores can
only be worse, so a ceiling under a Dice bar proves the bar unreachable for that head at that stride,
whatever the training recipe. (FCN's learned upsampling can exceed the trilinear ceiling somewhat: the table
prints the measured family Dice beside it, from the 2026-11-30 bench_models records.)

    .venv/bin/python benchmarks/bench_stride_ceiling.py [--strides 1,4,8,16,32] [--steps 300]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

#: measured best validation Dice at the bench budget (benchmarks/results/2026-11-30_models_*.txt)
MEASURED = {8: "fcn8s 0.849-0.865, deeplabv3 (OS 8) 0.859", 16: "fcn16s 0.785", 32: "fcn32s 0.732",
            1: "unet_plain 0.952 (full-resolution head)", 4: "deeplabv3plus (decoder at stride 4) 0.933"}


def fitted_ceiling(lab: np.ndarray, stride: int, steps: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    k = int(lab.max()) + 1
    pad = [(-d) % stride for d in lab.shape]
    t = torch.from_numpy(np.pad(lab, [(0, p) for p in pad])).long()[None]
    oh = F.one_hot(t, k).permute(0, 4, 1, 2, 3).float()
    low = F.avg_pool3d(oh, stride) if stride > 1 else oh
    z = torch.log(low.clamp_min(1e-3)).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(steps if stride > 1 else 0):
        up = F.interpolate(z, size=t.shape[1:], mode="trilinear", align_corners=False)
        p = up.softmax(1)
        inter = (p * oh).sum((0, 2, 3, 4))[1:]
        soft_dice = (2 * inter / (p.sum((0, 2, 3, 4))[1:] + oh.sum((0, 2, 3, 4))[1:])).mean()
        loss = F.cross_entropy(up * 4, t) + (1 - soft_dice)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = F.interpolate(z, size=t.shape[1:], mode="trilinear", align_corners=False) if stride > 1 else z
        pred = up.argmax(1)[0, :lab.shape[0], :lab.shape[1], :lab.shape[2]].numpy()
    return [2 * float(((pred == c) & (lab == c)).sum()) / float((pred == c).sum() + (lab == c).sum()) for c in range(1, k)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strides", default="1,4,8,16,32")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cases", type=int, default=8, help="phantom cohort size (bench_models: 8); its validation cases are scored")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch
    from scipy.ndimage import zoom

    from medseg.phantoms import PHANTOM_LABELS, make_phantom
    from medseg.training.loop import split_cases

    torch.manual_seed(0)
    ids = pd.DataFrame({"case_id": [f"phantom_{n:04d}" for n in range(args.cases)], "split": "train"})
    _, val = split_cases(ids, seed=0)  # bench_models' validation cases (phantom_demo.yaml: training.seed 0)
    grid = 2.5  # phantom_demo.yaml's spacing
    rows = []
    for cid in val["case_id"]:
        case = make_phantom(int(cid.split("_")[1]), case_id=cid)
        lab = np.asarray(case.labels.array)
        spacing = np.sqrt((np.asarray(case.labels.affine)[:3, :3] ** 2).sum(0))
        lab = zoom(lab, spacing / grid, order=0)
        for s in [int(x) for x in args.strides.split(",")]:
            t0 = time.perf_counter()
            d = fitted_ceiling(lab, s, args.steps)
            rows.append({"case": cid, "stride": s, **{n: round(v, 3) for n, v in zip(PHANTOM_LABELS.names, d)},
                         "mean": round(float(np.mean(d)), 3), "s": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby("stride")["mean"].agg(["mean", "min"]).round(3)
    summary["measured at the bench budget"] = [MEASURED.get(s, "") for s in summary.index]
    print(f"\nvalidation cases {list(val['case_id'])} at {grid} mm; trilinear head, logits fitted to the truth ({args.steps} Adam steps)")
    print("bar (issue 12): within 0.05 of the best family (unet_plain 0.952) -> 0.902")
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
