"""Training on the phantom cohort with the *planned* config, under a CPU budget.

1. writes a phantom cohort (training cases + held-out test cases, NIfTI),
2. ``medseg plan`` derives spacing, patch size and intensity scheme from the
   training cases (on top of configs/training/phantom_demo.yaml for model and schedule),
3. ``medseg train`` with a wall-clock budget (``--max-minutes``),
4. predicts the held-out cases and prints Dice per structure, seconds per
   epoch, epochs done and the budget.

    .venv/bin/python benchmarks/bench_training.py [--minutes 6] [--n-train 16] [--n-test 4]
    .venv/bin/python benchmarks/bench_training.py --minutes 0 --set training.adversarial_weight=0.05   # GAN term, all epochs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget (wall clock)")
    ap.add_argument("--n-train", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--min-spacing", type=float, default=2.5, help="planning floor for the spacing (CPU budget)")
    ap.add_argument("--work", help="folder for data and runs (default: a temp folder)")
    ap.add_argument("--reference-monai", action="store_true", help="also train the plain MONAI recipe with the same budget and data")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the planned config, e.g. training.adversarial_weight=0.05 (to measure the adversarial term)")
    args = ap.parse_args()

    import os

    import pandas as pd

    from medseg import api
    from medseg.config import CONFIG_ROOT, load_config
    from medseg.phantoms import write_cohort
    from medseg.training.planning import plan

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training_"))
    t0 = time.monotonic()
    train_manifest = write_cohort(work / "train", args.n_train, seed=3000)
    test_manifest = write_cohort(work / "test", args.n_test, seed=8000, split="test")
    t_data = time.monotonic() - t0
    planned, fp = plan(train_manifest, work / "planned.yaml", base_config=CONFIG_ROOT / "training" / "phantom_demo.yaml",
                       min_spacing=args.min_spacing, overrides=args.set)
    cfg = load_config(planned)
    t1 = time.monotonic()
    res = api.train(config=planned, manifest=train_manifest, out=work / "run", max_minutes=args.minutes, progress=False)
    t_train = time.monotonic() - t1
    test = pd.read_csv(test_manifest)
    images = [test_manifest.parent / p for p in test["image"]]
    refs = [test_manifest.parent / p for p in test["label"]]
    pred = api.predict(model=res.best_checkpoint, inputs=images, out=work / "pred", progress=False)
    preds = [pred.outputs[Path(p).name.replace(".nii.gz", "")] for p in images]
    metrics = pd.read_csv(api.evaluate(pred=preds, ref=refs, out=work / "metrics.csv", surface=False))
    hist = pd.read_csv(work / "run" / "metrics.csv")

    print(f"\n{os.cpu_count()} CPU cores; data {t_data:.0f}s; planned from {fp['n_cases']} {fp['modality']} cases: "
          f"spacing {cfg.preprocessing.spacing} mm, patch {cfg.training.patch_size}, batch {cfg.training.batch_size}, "
          f"intensity {cfg.preprocessing.intensity} clip {cfg.preprocessing.clip}")
    print(f"budget {args.minutes:.1f} min: trained {len(hist)} of {cfg.training.epochs} epochs in {t_train:.0f}s "
          f"({hist['epoch_seconds'].mean():.2f} s/epoch); best validation Dice {res.best_mean_dice:.3f} at epoch {res.best_epoch}")
    table = metrics.pivot(index="case_id", columns="structure", values="dice")
    table.loc["mean"] = table.mean()
    print("\nDice on held-out phantoms:")
    print(table.round(3).to_string())
    print(f"\nmean Dice {metrics['dice'].mean():.3f}  (target >= 0.90); changes to the plan: {args.set or 'none'}")
    if args.reference_monai:
        import sys

        from medseg.io.readers import read_volume
        from medseg.reporting.metrics import dice

        sys.path.insert(0, str(Path(__file__).parent))
        from monai_reference_training import train_and_predict

        minutes = args.minutes or t_train / 60
        t2 = time.monotonic()
        outs, epochs = train_and_predict(train_manifest, images, minutes=minutes)
        names = ["liver", "spleen", "kidney_right", "kidney_left"]
        scores = [[dice(o == k, read_volume(r).array == k) for k in range(1, 5)] for o, r in zip(outs, refs)]
        print(f"\nplain MONAI recipe, same data and {minutes:.1f}-minute budget: {epochs} epochs in {time.monotonic() - t2:.0f}s; "
              "Dice " + ", ".join(f"{n} {np.mean([s[i] for s in scores]):.3f}" for i, n in enumerate(names))
              + f"; mean {np.mean(scores):.3f}")
    (work / "summary.json").write_text(json.dumps({"mean_dice": float(metrics["dice"].mean()), "epochs": int(len(hist)),
                                                   "seconds_train": t_train, "s_per_epoch": float(hist["epoch_seconds"].mean())}))


if __name__ == "__main__":
    main()
