"""Build and train a tiny nnU-Net v2 model on medseg phantoms (test fixture; needs nnunetv2).

Run as a script so that nnU-Net's environment variables (read when nnunetv2 is
imported) never leak into the test process:

    python tests/external/nnunet_fixture.py ROOT

writes ``ROOT/raw``, ``ROOT/preprocessed``, ``ROOT/results`` and a held-out image
``ROOT/test/case_0000.nii.gz``; the trained-model folder is
``ROOT/results/Dataset501_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres``.

The trainer is nnU-Net's own ``nnUNetTrainer`` (same architecture and
checkpoint format) cut to one epoch of two iterations: the weights are barely
trained, which is all a faithfulness comparison needs (both tools run the same
network on the same input). The subclass keeps the name ``nnUNetTrainer``, so
nnU-Net's predictor finds it in its first module (searching further imports
every trainer module, some of which need timm).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATASET = "Dataset501_Phantom"
MODEL_DIR = f"{DATASET}/nnUNetTrainer__nnUNetPlans__3d_fullres"
MODEL_DIR_2D = f"{DATASET}/nnUNetTrainer__nnUNetPlans__2d"
#: Anisotropic CT (slices 12 mm, in-plane 3.5 mm: ratio > 3, so nnU-Net resamples the slice axis separately).
SPACING = (3.5, 3.5, 12.0)
TRAIN_SEEDS = (1, 2, 3, 4, 5)  # five: nnU-Net splits folds 0-4 with a 5-fold KFold
TEST_SEED = 100
#: One window of the planned patch (12 x 80 x 96): on a shared 2-core CPU each run of the network counts.
TEST_FOV_MM = (290.0, 250.0, 140.0)
#: Another grid than the training one, so both resamplings run (to 3.5 x 3.5 x 12 and the scores back);
#: anisotropic (ratio 3.3 > 3): in-plane third order, the slice axis separately with order 0.
TEST_SPACING = (3.0, 3.0, 10.0)


def write_raw(root: Path) -> None:
    import nibabel as nib
    import numpy as np

    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom

    raw = root / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)

    def save(array, affine, path):
        nib.save(nib.Nifti1Image(array, affine), str(path))

    for seed in TRAIN_SEEDS:
        case = make_phantom(seed, spacing=SPACING)
        save(
            np.asarray(case.image.array, dtype=np.float32),
            case.image.affine,
            raw / "imagesTr" / f"case{seed:03d}_0000.nii.gz",
        )
        save(
            np.asarray(case.labels.array, dtype=np.uint8),
            case.labels.affine,
            raw / "labelsTr" / f"case{seed:03d}.nii.gz",
        )
    case = make_phantom(TEST_SEED, spacing=TEST_SPACING, fov_mm=TEST_FOV_MM)
    save(np.asarray(case.image.array, dtype=np.float32), case.image.affine, root / "test" / "case_0000.nii.gz")
    labels = {"background": 0, **{lab.name: lab.index for lab in PHANTOM_LABELS.labels}}
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": labels,
                "numTraining": len(TRAIN_SEEDS),
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )


DATASET_MR = "Dataset502_PhantomMR"
MODEL_DIR_MR = f"{DATASET_MR}/nnUNetTrainer__nnUNetPlans__3d_fullres"
#: Regions as nnU-Net's BraTS-style datasets declare them: nested, painted in this order.
MR_LABELS = {"background": 0, "organs": [1, 2, 3, 4], "kidneys": [3, 4], "kidney_left": 4}
MR_REGIONS_ORDER = [1, 3, 4]
MR_SPACING = (5.0, 5.0, 7.0)
MR_FOV_MM = (420.0, 380.0, 150.0)  # much air: cropping to the body shrinks the image, so nnU-Net normalises in the mask


def mr_channels(case):
    """Two MR-like channels from a CT phantom: zero outside the body, two contrasts inside."""
    import numpy as np

    hu = np.asarray(case.image.array, dtype=np.float32)
    body = hu > -500
    return [np.where(body, hu + 1100.0, 0).astype(np.float32), np.where(body, 2000.0 - hu, 0).astype(np.float32)]


def write_raw_mr(root: Path) -> None:
    import nibabel as nib
    import numpy as np

    from medseg.data.phantoms import make_phantom

    raw = root / "raw" / DATASET_MR
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    (root / "test_mr").mkdir(parents=True, exist_ok=True)
    for seed in TRAIN_SEEDS[:4]:
        case = make_phantom(seed, spacing=MR_SPACING, fov_mm=MR_FOV_MM)
        for c, ch in enumerate(mr_channels(case)):
            nib.save(nib.Nifti1Image(ch, case.image.affine), str(raw / "imagesTr" / f"mr{seed:03d}_{c:04d}.nii.gz"))
        nib.save(
            nib.Nifti1Image(np.asarray(case.labels.array, np.uint8), case.labels.affine),
            str(raw / "labelsTr" / f"mr{seed:03d}.nii.gz"),
        )
    case = make_phantom(TEST_SEED, spacing=(4.5, 4.5, 6.0), fov_mm=MR_FOV_MM)
    for c, ch in enumerate(mr_channels(case)):
        nib.save(nib.Nifti1Image(ch, case.image.affine), str(root / "test_mr" / f"case_{c:04d}.nii.gz"))
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T2"},
                "labels": MR_LABELS,
                "regions_class_order": MR_REGIONS_ORDER,
                "numTraining": 4,
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )


#: nnU-Net's own trainer in a subprocess (``train_code``), shortened and narrowed for a CPU. Also used by
#: benchmarks/bench_nnunet.py.
TRAIN = r"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _Base
from batchgenerators.utilities.file_and_folder_operations import load_json, join
import nnunetv2.paths as P

class nnUNetTrainer(_Base):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = %(epochs)d
        self.num_iterations_per_epoch = %(iters)d
        self.num_val_iterations_per_epoch = 1
        if %(adamw)r:
            self.initial_lr = %(adamw)r

    def configure_optimizers(self):
        if not %(adamw)r:
            return super().configure_optimizers()
        # nnunetv2's nnUNetTrainerAdam: AdamW (amsgrad) with the poly schedule, at initial_lr
        from torch.optim import AdamW
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
        opt = AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay, amsgrad=True)
        return opt, PolyLRScheduler(opt, self.initial_lr, self.num_epochs)

pre = join(P.nnUNet_preprocessed, "%(ds)s")
plans = load_json(join(pre, "nnUNetPlans.json"))
plans["configurations"]["%(conf)s"]["batch_size"] = 2
plans["continue_training"] = False
arch = plans["configurations"]["%(conf)s"]["architecture"]["arch_kwargs"]
arch["features_per_stage"] = [min(%(f0)d * 2 ** i, %(fmax)d) for i in range(arch["n_stages"])]
if %(patch)s:  # a smaller patch than planned (same number of poolings)
    plans["configurations"]["%(conf)s"]["patch_size"] = %(patch)s
t = nnUNetTrainer(plans, "%(conf)s", %(fold)r, load_json(join(pre, "dataset.json")), device=torch.device("cpu"))
t.run_training()
"""


def train_code(
    dataset: str,
    configuration: str,
    fold,
    *,
    epochs: int = 1,
    iters: int = 2,
    f0: int = 8,
    fmax: int = 64,
    patch=None,
    adamw: float = 0.0,
) -> str:
    """The script that trains ``dataset``/``configuration``/``fold`` with nnU-Net's trainer: ``epochs`` of ``iters``
    iterations, the PlainConvUNet's stages ``f0 * 2**i`` features up to ``fmax`` (the tests: 8..64, small enough
    for a CPU), the planned patch unless ``patch``; ``adamw``: nnunetv2's nnUNetTrainerAdam recipe (AdamW, amsgrad,
    poly) at this initial learning rate instead of nnU-Net's SGD (trains a full-width network in hundreds of CPU
    steps)."""
    fold = int(fold) if str(fold).isdigit() else str(fold)
    return TRAIN % {
        "ds": dataset,
        "conf": configuration,
        "fold": fold,
        "epochs": epochs,
        "iters": iters,
        "f0": f0,
        "fmax": fmax,
        "patch": repr(list(patch)) if patch else "None",
        "adamw": float(adamw),
    }


def nnunet_env(root: Path, *, threads: int | None = 2) -> dict:
    """This environment with nnU-Net's folders under ``root`` (nnunetv2 reads them when imported: set them only in
    the subprocesses that run it), its torch.compile off, and ``threads`` OpenMP threads (None: as inherited)."""
    env = {
        **os.environ,
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_compile": "f",
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train(root: Path, configuration: str, fold, dataset: str = DATASET) -> None:
    subprocess.run(
        [sys.executable, "-c", train_code(dataset, configuration, fold)],
        env={**nnunet_env(root), "nnUNet_n_proc_DA": "0"},
        check=True,
        stdout=subprocess.DEVNULL,
    )


def plan_and_preprocess(root: Path, dataset_id: int, configurations: list[str]) -> None:
    """nnU-Net's ``nnUNetv2_plan_and_preprocess`` on dataset ``dataset_id`` under ``root`` (one process each)."""
    command = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    nps = ["1"] * len(configurations)
    subprocess.run(
        [
            str(command),
            "-d",
            str(dataset_id),
            "-c",
            *configurations,
            "-np",
            *nps,
            "-npfp",
            "1",
            "--verify_dataset_integrity",
        ],
        env=nnunet_env(root),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def build(root: Path, folds=("all",), two_d: bool = True) -> Path:
    """Plan and preprocess (3d_fullres, and 2d unless ``two_d=False``), train 3d_fullres on ``folds`` and
    2d on fold 0 (``MODEL_DIR_2D``). Returns the 3d_fullres model folder."""
    root = Path(root)
    write_raw(root)
    plan_and_preprocess(root, 501, ["2d", "3d_fullres"] if two_d else ["3d_fullres"])
    for fold in folds:
        train(root, "3d_fullres", fold)
    if two_d:
        train(root, "2d", 0)
    return root / "results" / MODEL_DIR


def build_mr(root: Path) -> Path:
    """Two-channel MR-like dataset with zero background (z-score in the non-zero mask) and region labels;
    3d_fullres, fold 'all'. Returns the model folder; the test image is ``ROOT/test_mr/case_000{0,1}.nii.gz``."""
    root = Path(root)
    write_raw_mr(root)
    plan_and_preprocess(root, 502, ["3d_fullres"])
    train(root, "3d_fullres", "all", dataset=DATASET_MR)
    return root / "results" / MODEL_DIR_MR


if __name__ == "__main__":
    if sys.argv[2:] == ["mr"]:
        print(build_mr(Path(sys.argv[1])))
    else:
        print(build(Path(sys.argv[1]), folds=tuple(sys.argv[2:]) or ("all",)))
