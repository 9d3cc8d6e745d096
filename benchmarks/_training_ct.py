"""``bench_training.py --ct``: the planner's resolution choice on CT phantoms, against what it rejected.

The data are what a newcomer writes with ``medseg phantoms``, with a small structure added: abdominal CT phantoms at
their native, anisotropic spacing (in-plane 0.6-1.0 mm, slices 1.5-5 mm) with liver (~300 mL), spleen (~70 mL), two
kidneys (~45 mL) and a gallbladder (~12 mL, under the 20 mL that a coarse grid can lose). ``--n`` cases, the last
``--n-val`` of them marked ``split=val``, and ``--n-test`` held-out cases.

For one budget, each arm its own ``medseg train --max-minutes`` process, one after another:

- **planner**: ``medseg plan --budget-minutes M`` as a user runs it, and every other spacing it considered (its
  config with that candidate's spacing, patch and network), so the choice is judged against its alternatives;
- **demo config**: the hand-written ``configs/training/phantom_demo.yaml`` (2.5 mm, 96x96x64, with the data's
  label table);
- **classic U-Net**: ``medseg plan --model unet_classic --budget-minutes M`` (the family comparison);
- **MONAI recipe**: the plain MONAI tutorial recipe (``monai_reference_training.py``) at 2.5 mm.

Prints per-structure test Dice (smallest structure included), the best validation Dice, iterations and seconds,
and the issue's three checks: the planner within 0.01 validation Dice of the best candidate, at least the demo
config, and the classic and residual U-Nets within 0.05.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _medseg(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "medseg", *args], check=True, text=True, stdout=subprocess.PIPE if capture else None
    )
    return proc.stdout or ""


def write_data(work: Path, n: int, n_val: int, n_test: int, smoke: bool) -> tuple[Path, Path]:
    """The training manifest (last ``n_val`` rows split=val) and the test manifest."""
    import pandas as pd

    from medseg.data.phantoms import write_cohort

    kw = {"small_structures": True}
    if (work / "data" / "manifest.csv").is_file() and (work / "test" / "manifest.csv").is_file():
        return work / "data" / "manifest.csv", work / "test" / "manifest.csv"  # --work of an earlier run: its data
    if smoke:
        sys.path.insert(0, str(Path(__file__).parent))
        from _smoke import coarse_cohort

        train = coarse_cohort(work / "data", n, seed=3000)
        test = coarse_cohort(work / "test", n_test, seed=8000, split="test")
    else:
        train = write_cohort(work / "data", n, seed=3000, **kw)
        test = write_cohort(work / "test", n_test, seed=8000, split="test", **kw)
    df = pd.read_csv(train)
    df.loc[df.index[-n_val:], "split"] = "val"
    df.to_csv(train, index=False)
    return train, test


def candidate_configs(work: Path, plan_yaml: Path, fp: dict) -> list[tuple[str, Path, dict]]:
    """One config per spacing the planner considered: the plan with that candidate's spacing, patch and network."""
    import yaml

    base = yaml.safe_load(plan_yaml.read_text())
    out = []
    for i, c in enumerate(fp["resolution"]["candidates"]):
        if c["verdict"] == "chosen":
            out.append(("planner: " + "x".join(f"{v:g}" for v in c["spacing"]), plan_yaml, c))
            continue
        cfg = json.loads(json.dumps(base))
        c = json.loads(json.dumps(c))  # fresh lists each time: YAML would write shared ones as aliases
        cfg["preprocessing"]["spacing"] = c["spacing"]
        cfg["training"]["patch_size"] = c["patch"]
        cfg["inference"]["roi_size"] = list(c["patch"])
        cfg["model"] = c["model"]
        path = work / f"candidate{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out.append(("rejected: " + "x".join(f"{v:g}" for v in c["spacing"]), path, c))
    return out


def demo_config(work: Path, labels_yaml: Path) -> Path:
    """The demo's hand-written recipe with the data's label table (it names the four-organ table)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "training" / "phantom_demo.yaml").read_text())
    cfg["labels"] = yaml.safe_load(labels_yaml.read_text())
    path = work / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_and_test(name: str, config: Path, manifest: Path, test: list, refs: list, names: dict, work, minutes):
    """One arm: train for the budget, predict the test cases; per-structure test Dice and the run's figures."""
    from medseg.io.readers import read_volume
    from medseg.reporting.metrics import dice

    run = work / ("run_" + "".join(ch if ch.isalnum() else "_" for ch in name))
    t0 = time.monotonic()
    _medseg("train", "--no-progress", "--config", str(config), "--manifest", str(manifest), "--out", str(run),
            "--max-minutes", str(minutes))  # fmt: skip
    t_train = time.monotonic() - t0
    _medseg("predict", "--no-progress", "--model", str(run / "best.pt"), *map(str, test), "--out", str(run / "pred"))
    info = json.loads((run / "run.json").read_text())
    preds = [read_volume(run / "pred" / f"{Path(p).name.replace('.nii.gz', '')}.nii.gz").array for p in test]
    per = {
        n: float(np.mean([dice(p == k, r == k) for p, r in zip(preds, refs, strict=True)])) for k, n in names.items()
    }
    return {
        **per,
        "mean": float(np.mean(list(per.values()))),
        "val_best": float(info["best_val_mean_dice"]),
        "iterations": int(info["iterations"]),
        "train_s": round(t_train, 1),
    }


def monai_arm(manifest: Path, test: list, refs: list, names: dict, minutes: float) -> dict:
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from monai_reference_training import train_validate_predict

    df = pd.read_csv(manifest)

    def files(split):
        return [
            {"image": str(manifest.parent / r.image), "label": str(manifest.parent / r.label)}
            for r in df[df["split"] == split].itertuples()
        ]

    from medseg.reporting.metrics import dice

    t0 = time.monotonic()
    outs, info = train_validate_predict(files("train"), files("val"), test, minutes=minutes, num_classes=len(names) + 1)
    per = {n: float(np.mean([dice(o == k, r == k) for o, r in zip(outs, refs, strict=True)])) for k, n in names.items()}
    return {
        **per,
        "mean": float(np.mean(list(per.values()))),
        "val_best": float(info["best_val_dice"]),
        "iterations": int(info["iterations"]),
        "train_s": round(time.monotonic() - t0, 1),
    }


def ct_benchmark(args) -> None:
    import pandas as pd
    import yaml

    from medseg.io.readers import read_volume

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training_ct_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    manifest, test_manifest = write_data(work, args.n_train, args.n_val, args.n_test, args.smoke)
    t_data = time.monotonic() - t0
    labels_yaml = manifest.with_name(manifest.stem + "_labels.yaml")
    names = {int(r["index"]): r["name"] for r in yaml.safe_load(labels_yaml.read_text())["labels"]}
    tdf = pd.read_csv(test_manifest)
    test = [test_manifest.parent / p for p in tdf["image"]]
    refs = [read_volume(test_manifest.parent / p).array for p in tdf["label"]]
    sets = [x for s in args.set for x in ("--set", s)]
    plan_out = _medseg("plan", str(manifest), "--out", str(work / "plan.yaml"), "--budget-minutes", str(args.minutes),
                       *sets, capture=True)  # fmt: skip
    print(plan_out)
    fp = json.loads((work / "plan.fingerprint.json").read_text())
    arms = candidate_configs(work, work / "plan.yaml", fp)
    wanted = set(args.arms.split(",")) if args.arms else {"candidates", "demo", "classic", "monai"}
    if "demo" in wanted:
        arms.append(("demo config (2.5 mm, 96x96x64)", demo_config(work, labels_yaml), None))
    if "classic" in wanted:
        _medseg("plan", str(manifest), "--out", str(work / "classic.yaml"), "--budget-minutes", str(args.minutes),
                "--model", "unet_classic", *sets, capture=True)  # fmt: skip
        arms.append(("plan --model unet_classic", work / "classic.yaml", None))
    if "candidates" not in wanted:
        arms = [a for a in arms if not a[0].startswith("rejected")]
    rows = {}
    for name, config, _cand in arms:
        print(f"[{time.strftime('%H:%M:%S')}] training {name} for {args.minutes:g} min", flush=True)
        rows[name] = train_and_test(name, config, manifest, test, refs, names, work, args.minutes)
    if "monai" in wanted:
        print(f"[{time.strftime('%H:%M:%S')}] training the MONAI recipe for {args.minutes:g} min", flush=True)
        rows["MONAI recipe (2.5 mm)"] = monai_arm(manifest, test, refs, names, args.minutes)
    report(rows, fp, args, t_data, work)


def report(rows: dict, fp: dict, args, t_data: float, work: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(rows).T
    res = fp["resolution"]
    print(
        f"\n{os.cpu_count()} CPU cores; {args.n_train} phantoms ({args.n_val} val) + {args.n_test} test, native "
        f"spacing (median {[round(v, 2) for v in fp['spacing_median']]} mm); data {t_data:.0f}s; budget "
        f"{args.minutes:g} min per arm; probe {res['seconds_per_step']} s/step"
    )
    print("test Dice per structure (mean over test cases), best validation Dice, iterations, training seconds:")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    planner = next(k for k in rows if k.startswith("planner"))
    considered = [k for k in rows if k.startswith(("planner", "rejected"))]
    best = max(considered, key=lambda k: rows[k]["val_best"])
    checks = [
        (
            "planner within 0.01 validation Dice of the best candidate",
            rows[best]["val_best"] - rows[planner]["val_best"] <= 0.01,
            f"{rows[planner]['val_best']:.3f} vs {rows[best]['val_best']:.3f} ({best})",
        )
    ]
    demo = next((k for k in rows if k.startswith("demo")), None)
    if demo:
        checks.append(
            (
                "planner at least the demo config (test mean Dice)",
                rows[planner]["mean"] >= rows[demo]["mean"],
                f"{rows[planner]['mean']:.3f} vs {rows[demo]['mean']:.3f}",
            )
        )
    classic = next((k for k in rows if "classic" in k), None)
    if classic:
        gap = abs(rows[planner]["mean"] - rows[classic]["mean"])
        checks.append(("classic vs residual U-Net within 0.05 (test mean)", gap <= 0.05, f"gap {gap:.3f}"))
    for what, ok, detail in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {what}: {detail}")
    (work / "summary.json").write_text(json.dumps({"budget_min": args.minutes, "rows": rows, "resolution": res}))
