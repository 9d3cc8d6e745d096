"""Training on the phantom cohort with the *planned* config, under a CPU budget.

1. writes a phantom cohort (training cases + held-out test cases, NIfTI),
2. ``medseg plan`` derives spacing, patch size and intensity scheme from the
   training cases (on top of configs/training/phantom_demo.yaml for model and schedule),
3. ``medseg train`` with a wall-clock budget (``--max-minutes``),
4. predicts the held-out cases and prints Dice per structure, seconds per
   epoch, epochs done and the budget.

    .venv/bin/python benchmarks/bench_training.py [--minutes 6] [--n-train 16] [--n-test 4] [--smoke]
    .venv/bin/python benchmarks/bench_training.py --minutes 0 --set training.adversarial_weight=0.05   # GAN term,
                                                                                                       # all epochs

``--ct``: the planner's resolution choice on CT phantoms at their native spacing (with a ~12 mL gallbladder), each
spacing it considered trained for the same budget, against the demo's hand-written config, ``plan --model
unet_classic`` and the plain MONAI recipe (``benchmarks/_training_ct.py`` says more):

    .venv/bin/python benchmarks/bench_training.py --ct --minutes 4 [--n-train 10 --n-val 2 --n-test 4]
                                                  [--arms candidates,demo,classic,monai]

``--real``: a real labelled MR data set instead of the phantoms, against the plain MONAI recipe with the same budget:

    .venv/bin/python benchmarks/bench_training.py --real --minutes 8 [--n-train 2 --n-val 1 --n-test 2 --seed 0]

The real data are the MNI ICBM152 2009a symmetric T1 template (an average of 152 adults' T1-weighted MR at 1 mm)
and its grey- and white-matter probability maps, as shipped inside the nilearn wheel
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``; installed with
``pip install --no-deps nilearn`` when missing, nothing is downloaded from a data hub, nothing is kept in git).
There is one real head in that package, so each *case* is a documented derivation of it, drawn with its own seed:
a random affine (rotation up to 10 degrees about each axis, scaling 0.9-1.1 per axis, shift up to 6 mm), a smooth
random deformation (displacements drawn every ~40 mm, s.d. 3 mm, cubic interpolation), a smooth multiplicative bias
field (about +-20 %), Rician noise (s.d. 3 % of the 99th intensity percentile) and a random gain, on a 2 mm grid
(after a Gaussian blur that models the 2 mm voxels). Its label map is the tissue with the highest probability in
each voxel under the same transform: 1 grey matter, 2 white matter, 0 everything else (CSF, non-brain, air). So the
cases differ in shape, pose, bias and noise, not in anatomy between people: Dice here measures grey/white
segmentation of a real MR contrast, not generalisation across subjects.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
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
    ap.add_argument(
        "--reference-monai", action="store_true", help="also train the plain MONAI recipe with the same budget and data"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the planned config, e.g. training.adversarial_weight=0.05 (to measure the adversarial term)",
    )
    ap.add_argument(
        "--real", action="store_true", help="the real MR brain data set (see above) against the plain MONAI recipe"
    )
    ap.add_argument("--n-val", type=int, default=1, help="--real: validation cases")
    ap.add_argument("--seed", type=int, default=0, help="--real: seed of the first case (cases are seed, seed+1, ...)")
    ap.add_argument("--skip-monai", action="store_true", help="--real: only medseg (to measure planner choices)")
    ap.add_argument("--ct", action="store_true", help="the planner's resolution choice on CT phantoms (see above)")
    ap.add_argument("--arms", help="--ct: which arms, of candidates,demo,classic,monai (default all)")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting (3 + 1 phantoms at 4 mm, one training step, "
        "planned at 4 mm; not with --real): a test that the script runs",
    )
    args = ap.parse_args()
    if args.ct:
        sys.path.insert(0, str(Path(__file__).parent))
        from _training_ct import ct_benchmark

        if args.n_train == 16:  # the phantom default; the CT mode is a newcomer's `medseg phantoms -n 10`
            args.n_train = 10
        args.n_val = max(args.n_val, 2)
        if args.smoke:
            args.n_train, args.n_val, args.n_test, args.minutes = 4, 1, 1, 0.05
        return ct_benchmark(args)
    if args.smoke:
        if args.real:
            ap.error("--smoke runs the phantom benchmark only (--real needs the MNI template and minutes)")
        args.n_train, args.n_test, args.minutes, args.min_spacing = 3, 1, 0.0, 4.0
        args.set = ["training.epochs=1", "training.iterations_per_epoch=1", "training.val_every=1", *args.set]
    if args.real:
        return real_benchmark(args)

    import os

    import pandas as pd

    from medseg import api
    from medseg.config import CONFIG_ROOT, load_config
    from medseg.data.phantoms import write_cohort
    from medseg.training.planning import plan

    sys.path.insert(0, str(Path(__file__).parent))
    from _smoke import coarse_cohort

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training_"))
    t0 = time.monotonic()
    if args.smoke:
        train_manifest = coarse_cohort(work / "train", args.n_train, seed=3000)
        test_manifest = coarse_cohort(work / "test", args.n_test, seed=8000, split="test")
    else:
        train_manifest = write_cohort(work / "train", args.n_train, seed=3000)
        test_manifest = write_cohort(work / "test", args.n_test, seed=8000, split="test")
    t_data = time.monotonic() - t0
    planned, fp = plan(
        train_manifest,
        work / "planned.yaml",
        base_config=CONFIG_ROOT / "training" / "phantom_demo.yaml",
        min_spacing=args.min_spacing,
        overrides=args.set,
    )
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

    print(
        f"\n{os.cpu_count()} CPU cores; data {t_data:.0f}s; planned from {fp['n_cases']} {fp['modality']} cases: "
        f"spacing {cfg.preprocessing.spacing} mm, patch {cfg.training.patch_size}, batch {cfg.training.batch_size}, "
        f"intensity {cfg.preprocessing.intensity} clip {cfg.preprocessing.clip}"
    )
    print(
        f"budget {args.minutes:.1f} min: trained {len(hist)} epochs, {int(hist['iterations'].iloc[-1])} iterations in "
        f"{t_train:.0f}s ({hist['epoch_seconds'].mean():.2f} s/epoch); best validation Dice {res.best_mean_dice:.3f} "
        f"at epoch {res.best_epoch}"
    )
    table = metrics.pivot(index="case_id", columns="structure", values="dice")
    table.loc["mean"] = table.mean()
    print("\nDice on held-out phantoms:")
    print(table.round(3).to_string())
    print(f"\nmean Dice {metrics['dice'].mean():.3f}  (target >= 0.90); changes to the plan: {args.set or 'none'}")
    if args.reference_monai:
        from monai_reference_training import train_and_predict

        from medseg.io.readers import read_volume
        from medseg.reporting.metrics import dice

        minutes = args.minutes or t_train / 60
        t2 = time.monotonic()
        outs, epochs = train_and_predict(train_manifest, images, minutes=minutes)
        names = ["liver", "spleen", "kidney_right", "kidney_left"]
        scores = [
            [dice(o == k, read_volume(r).array == k) for k in range(1, 5)] for o, r in zip(outs, refs, strict=False)
        ]
        print(
            f"\nplain MONAI recipe, same data and {minutes:.1f}-minute budget: {epochs} epochs in "
            f"{time.monotonic() - t2:.0f}s; Dice "
            + ", ".join(f"{n} {np.mean([s[i] for s in scores]):.3f}" for i, n in enumerate(names))
            + f"; mean {np.mean(scores):.3f}"
        )
    (work / "summary.json").write_text(
        json.dumps(
            {
                "mean_dice": float(metrics["dice"].mean()),
                "epochs": int(len(hist)),
                "iterations": int(hist["iterations"].iloc[-1]),
                "seconds_train": t_train,
                "s_per_epoch": float(hist["epoch_seconds"].mean()),
            }
        )
    )


# --- the real MR data set -------------------------------------------------------------------------------------------

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
TISSUES = {1: "grey_matter", 2: "white_matter"}


def template_files() -> dict[str, Path]:
    """The template's T1, GM and WM files inside the installed nilearn package (installed, without its dependencies, if
    missing)."""
    if importlib.util.find_spec("nilearn") is None:
        print("installing nilearn (for the MNI ICBM152 template files it ships) with pip ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "nilearn"], check=True)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec("nilearn")  # located, not imported: only its data files are read
    root = Path(spec.origin).parent / "datasets" / "data"
    files = {k: root / TEMPLATE.format(k) for k in ("t1", "gm", "wm")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise SystemExit(
            f"nilearn is installed but lacks {missing}; this benchmark needs a nilearn wheel that ships the ICBM152 "
            "2009a template"
        )
    return files


def derive_case(files: dict[str, Path], seed: int, *, spacing: float = 2.0):
    """One case (T1 image, GM/WM label map, affine) derived from the template with ``seed`` (see the module
    docstring)."""
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    imgs = {k: nib.load(f) for k, f in files.items()}
    src_affine = imgs["t1"].affine
    sigma = 0.85 * spacing / 2  # voxels of 1 mm: the 2 mm voxel's partial volume
    vols = {k: ndimage.gaussian_filter(np.asanyarray(v.dataobj, dtype=np.float32), sigma) for k, v in imgs.items()}
    src_shape = np.array(vols["t1"].shape)
    shape = np.ceil(src_shape / spacing).astype(int)
    out_affine = np.diag([spacing, spacing, spacing, 1.0])
    out_affine[:3, 3] = src_affine[:3, 3]
    # output voxel -> world (the scanner's grid) -> the template's world through the case's own pose and shape
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = idx @ out_affine[:3, :3].T + out_affine[:3, 3]
    centre = src_affine[:3, :3] @ (src_shape / 2) + src_affine[:3, 3]
    ang = np.deg2rad(rng.uniform(-10, 10, 3))
    cx, cy, cz, sx, sy, sz = *np.cos(ang), *np.sin(ang)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    lin = rot @ np.diag(rng.uniform(0.9, 1.1, 3))
    moved = (world - centre) @ lin.T + centre + rng.uniform(-6, 6, 3)
    coarse = np.maximum(2, np.round(shape * spacing / 40).astype(int))
    disp = np.stack(
        [ndimage.zoom(rng.normal(0, 3.0, coarse), shape / coarse, order=3) for _ in range(3)], axis=-1
    ).reshape(-1, 3)
    src_vox = (moved + disp - src_affine[:3, 3]) @ np.linalg.inv(src_affine[:3, :3]).T
    sample = {
        k: ndimage.map_coordinates(v, src_vox.T, order=1, mode="constant", cval=0.0).reshape(*shape)
        for k, v in vols.items()
    }
    gm, wm = sample["gm"] / 255.0, sample["wm"] / 255.0
    label = np.argmax(np.stack([1.0 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
    # MR acquisition: smooth bias field, random gain, Rician noise
    grid = [np.linspace(-1, 1, n) for n in shape]
    xx, yy, zz = np.meshgrid(*grid, indexing="ij")
    c = rng.normal(0, 0.08, 9)
    log_bias = (
        c[0] * xx
        + c[1] * yy
        + c[2] * zz
        + c[3] * xx * yy
        + c[4] * yy * zz
        + c[5] * xx * zz
        + c[6] * xx**2
        + c[7] * yy**2
        + c[8] * zz**2
    )
    image = sample["t1"] * np.exp(log_bias) * rng.uniform(2.0, 6.0)
    noise_sd = 0.03 * np.percentile(image, 99)
    image = np.sqrt((image + rng.normal(0, noise_sd, shape)) ** 2 + rng.normal(0, noise_sd, shape) ** 2)
    return image.astype(np.float32), label, out_affine


def write_real_dataset(out: Path, *, n_train: int, n_val: int, n_test: int, seed: int) -> Path:
    """The derived cases as NIfTI, a manifest (``case_id, image, label, split``) and the label table beside it."""
    import nibabel as nib
    import pandas as pd
    import yaml

    files = template_files()
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    rows = []
    for i, split in enumerate(splits):
        case_id = f"mni_{seed + i:03d}"
        image, label, affine = derive_case(files, seed + i)
        for kind, arr in (("images", image), ("labels", label)):
            (out / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, affine), out / kind / f"{case_id}.nii.gz")
        rows.append(
            {
                "case_id": case_id,
                "image": f"images/{case_id}.nii.gz",
                "label": f"labels/{case_id}.nii.gz",
                "split": split,
                "modality": "MR",
            }
        )
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    table = {"name": "brain_tissue_mni152", "labels": [{"index": k, "name": v} for k, v in TISSUES.items()]}
    (out / "manifest_labels.yaml").write_text(
        "# grey and white matter of the MNI ICBM152 2009a template (bench_training.py --real)\n"
        + yaml.safe_dump(table, sort_keys=False)
    )
    return manifest


def _medseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "medseg", *args], check=True)


def real_benchmark(args) -> None:
    import os

    import nibabel as nib
    import pandas as pd

    from medseg.config import load_config
    from medseg.io.readers import read_volume
    from medseg.reporting.metrics import dice

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training_real_"))
    t0 = time.monotonic()
    n_train = args.n_train if args.n_train != 16 else 2  # the phantom default is 16; the real set is small by design
    n_test = args.n_test if args.n_test != 4 else 2
    manifest = write_real_dataset(work / "data", n_train=n_train, n_val=args.n_val, n_test=n_test, seed=args.seed)
    t_data = time.monotonic() - t0
    df = pd.read_csv(manifest)
    test = df[df["split"] == "test"]
    images = [manifest.parent / p for p in test["image"]]
    refs = [np.asanyarray(nib.load(manifest.parent / p).dataobj) for p in test["label"]]

    sets = [x for s in args.set for x in ("--set", s)]
    _medseg(
        "plan",
        str(manifest),
        "--out",
        str(work / "plan.yaml"),
        "--labels",
        str(manifest.parent / "manifest_labels.yaml"),
        *sets,
    )
    cfg = load_config(work / "plan.yaml")
    t1 = time.monotonic()
    _medseg(
        "train",
        "--no-progress",
        "--config",
        str(work / "plan.yaml"),
        "--manifest",
        str(manifest),
        "--out",
        str(work / "run"),
        "--max-minutes",
        str(args.minutes),
    )
    t_train = time.monotonic() - t1
    _medseg(
        "predict",
        "--no-progress",
        "--model",
        str(work / "run" / "best.pt"),
        *map(str, images),
        "--out",
        str(work / "pred"),
    )
    info = json.loads((work / "run" / "run.json").read_text())
    hist = pd.read_csv(work / "run" / "metrics.csv")
    preds = [read_volume(work / "pred" / f"{Path(p).name.replace('.nii.gz', '')}.nii.gz").array for p in images]
    ours = {
        name: float(np.mean([dice(p == k, r == k) for p, r in zip(preds, refs, strict=False)]))
        for k, name in TISSUES.items()
    }
    rows = {
        "medseg": {
            **ours,
            "mean": float(np.mean(list(ours.values()))),
            "iterations": int(info["iterations"]),
            "train_s": float(info["seconds"]),
            "val_best": float(info["best_val_mean_dice"]),
        }
    }
    if not args.skip_monai:
        sys.path.insert(0, str(Path(__file__).parent))
        from monai_reference_training import train_validate_predict

        def files(split):
            return [
                {"image": str(manifest.parent / r.image), "label": str(manifest.parent / r.label)}
                for r in df[df["split"] == split].itertuples()
            ]

        outs, ref_info = train_validate_predict(
            files("train"),
            files("val"),
            images,
            minutes=args.minutes,
            num_classes=len(TISSUES) + 1,
            spacing=tuple(cfg.preprocessing.spacing),
            seed=args.seed,
        )
        theirs = {
            name: float(np.mean([dice(o == k, r == k) for o, r in zip(outs, refs, strict=False)]))
            for k, name in TISSUES.items()
        }
        rows["MONAI recipe"] = {
            **theirs,
            "mean": float(np.mean(list(theirs.values()))),
            "iterations": ref_info["iterations"],
            "train_s": ref_info["seconds"],
            "val_best": ref_info["best_val_dice"],
        }
    table = pd.DataFrame(rows).T
    if "MONAI recipe" in rows:
        table.loc["ratio medseg/MONAI"] = table.loc["medseg"] / table.loc["MONAI recipe"]
    tc = cfg.training
    print(
        f"\n{os.cpu_count()} CPU cores; {len(df)} cases derived from the MNI ICBM152 2009a template (seeds "
        f"{args.seed}..{args.seed + len(df) - 1}): {(df['split'] == 'train').sum()} train, "
        f"{(df['split'] == 'val').sum()} val, {len(test)} test; data {t_data:.0f}s"
    )
    print(
        f"medseg plan: spacing {cfg.preprocessing.spacing} mm, patch {tc.patch_size}, batch {tc.batch_size}, "
        f"{tc.iterations_per_epoch} iterations/epoch, lr {tc.learning_rate} ({tc.optimizer}, {tc.schedule}), model "
        f"{cfg.model.name} {cfg.model.kwargs}; changes: {args.set or 'none'}"
    )
    print(
        f"budget {args.minutes:g} min each: medseg {len(hist)} epochs, {info['iterations']} iterations, "
        f"{info['seconds']:.0f}s in train() ({t_train:.0f}s for the command); validations "
        f"{int(hist['val_mean_dice'].notna().sum())}"
    )
    print("\ntest Dice per structure (mean over the test cases), iterations and training seconds:")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    (work / "summary.json").write_text(json.dumps({"budget_min": args.minutes, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
