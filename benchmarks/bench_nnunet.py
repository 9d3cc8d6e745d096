"""nnU-Net v2's own predictor vs medseg (faithful and fast) on one nnU-Net-trained model and a CT-sized volume.

1. Trains (once; cached under ``--work``) an nnU-Net v2 model with nnU-Net's own planner and trainer on CT-like
   phantoms (medseg.data.phantoms): 3d_fullres, fold ``all``, the planner's patch and spacing, the PlainConvUNet
   narrowed (``--features``; nnU-Net's default 32..320 is too slow for this script on a 2-core CPU) and trained
   for a few short epochs. The folder is a real nnU-Net result folder: nnUNetPredictor loads it.
2. Makes a CT-like test volume of 512 x 512 x 200 voxels (0.8 x 0.8 x 1.0 mm, int16 HU, NIfTI).
3. Runs, each in its own process (``nice -n 5``; own peak RSS):
   - nnU-Net: ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
     perform_everything_on_device=False, device=cpu)`` + ``predict_single_npy_array`` on the image read by
     its ``SimpleITKIO`` (nnU-Net's environment variables set in that process only);
   - medseg faithful: ``load_predictor(folder).predict(path)`` (the default);
   - medseg fast: the same with ``preset="fast"``;
   - one switch at a time (same process as one another, on the same preprocessed array): windows and export
     seconds and label agreement with medseg faithful.
4. Prints seconds, peak RSS, ratio vs nnUNetPredictor and label agreement (fraction of voxels equal, Dice per
   structure, mean Dice) with nnU-Net's labels.

    .venv/bin/python benchmarks/bench_nnunet.py [--work /tmp/medseg_bench_nnunet] [--out results.txt]
    .venv/bin/python benchmarks/bench_nnunet.py --smoke    # seconds: an untrained small model, that the script runs
    .venv/bin/python benchmarks/bench_nnunet.py --batch --cases 20 --repeat 1   # medseg run vs nnUNetv2_predict
    .venv/bin/python benchmarks/bench_nnunet.py --batch --smoke                 # the batch mode on two small cases
    .venv/bin/python benchmarks/bench_nnunet.py --memory 1920 [--memory-faithful]   # peak RSS, 513x513x1920 int16

``--batch``: one folder of ``--cases`` CT-sized phantoms (``caseNNN_0000.nii.gz``); ``nnUNetv2_predict`` (its defaults:
background preprocessing and export processes) and ``medseg run`` (packaged volumetry pipeline, ``preset: fast``,
QC montages and HTML off; ``--workers`` reader threads that read and preprocess the next case while the network runs)
each run over it as one command; the table gives cases per minute, the ratio, each command's peak RSS and the label
agreement with nnUNetv2_predict per case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# nnU-Net's trainer script and environment, shared with the tests' nnU-Net fixture
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "external"))
from nnunet_fixture import nnunet_env, train_code  # noqa: E402

DATASET = "Dataset601_BenchCT"
CONF = "3d_fullres"
MODEL_DIR = f"{DATASET}/nnUNetTrainer__nnUNetPlans__{CONF}"
TRAIN_SEEDS = (1, 2, 3, 4, 5, 6)
TRAIN_SPACING = (2.0, 2.0, 3.0)
TEST_SEED = 200
TEST_SPACING = (0.8, 0.8, 1.0)
TEST_FOV_MM = (410.0, 410.0, 200.0)  # 513 x 513 x 200 voxels


def _env(work: Path, huge_pages: bool = False) -> dict:
    """nnUNetPredictor's process: the thread count this script was given, and PyTorch's allocator as nnU-Net runs it
    (importing medseg here set ``THP_MEM_ALLOC_ENABLE=1``, which a child would inherit) unless ``huge_pages``."""
    env = nnunet_env(work, threads=None)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if huge_pages:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


def build_model(work: Path, f0: int, fmax: int, epochs: int, iters: int, patch=None, adamw: float = 0.0) -> Path:
    import nibabel as nib

    from medseg.data.phantoms import PHANTOM_LABELS, make_phantom

    folder = work / "results" / MODEL_DIR
    if (folder / "fold_all" / "checkpoint_final.pth").is_file():
        return folder
    raw = work / "raw" / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for seed in TRAIN_SEEDS:
        case = make_phantom(seed, spacing=TRAIN_SPACING)
        nib.save(
            nib.Nifti1Image(np.asarray(case.image.array, np.float32), case.image.affine),
            str(raw / "imagesTr" / f"ct{seed:03d}_0000.nii.gz"),
        )
        nib.save(
            nib.Nifti1Image(np.asarray(case.labels.array, np.uint8), case.labels.affine),
            str(raw / "labelsTr" / f"ct{seed:03d}.nii.gz"),
        )
    labels = {"background": 0, **{lab.name: lab.index for lab in PHANTOM_LABELS.labels}}
    (raw / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(TRAIN_SEEDS), "file_ending": ".nii.gz"},
            indent=2,
        )
    )
    bindir = Path(sys.executable).parent
    subprocess.run(
        [str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", DATASET[7:10], "-c", CONF, "-np", "1", "-npfp", "1"],
        env=_env(work),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    code = train_code(DATASET, CONF, "all", epochs=epochs, iters=iters, f0=f0, fmax=fmax, patch=patch, adamw=adamw)
    subprocess.run(
        [sys.executable, "-c", code], env={**_env(work), "nnUNet_n_proc_DA": "0"}, check=True, stdout=subprocess.DEVNULL
    )
    return folder


def make_test_image(work: Path, spacing=TEST_SPACING, fov_mm=TEST_FOV_MM) -> Path:
    import nibabel as nib

    from medseg.data.phantoms import make_phantom

    path = work / "test" / "ct_0000.nii.gz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        case = make_phantom(TEST_SEED, spacing=spacing, fov_mm=fov_mm)
        hu = np.clip(np.round(np.asarray(case.image.array)), -1024, 3071).astype(np.int16)
        nib.save(nib.Nifti1Image(hu, case.image.affine), str(path))
        nib.save(
            nib.Nifti1Image(np.asarray(case.labels.array, np.uint8), case.labels.affine),
            str(work / "test" / "truth.nii.gz"),
        )
    return path


#: --smoke: nnU-Net's 3D PlainConvUNet, three stages of 4..16 features, on a 4 mm grid (random weights, seed 0)
SMOKE_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def smoke_model(work: Path) -> Path:
    """--smoke: stage 1 without training: a result folder in nnU-Net's layout (plans.json, dataset.json,
    fold_all/checkpoint_final.pth) holding a small randomly initialised network, which nnUNetPredictor and medseg
    load."""
    import torch

    from medseg.adapters.nnunet.folder import architecture, build_network
    from medseg.data.phantoms import PHANTOM_LABELS

    folder = work / "results" / MODEL_DIR
    (folder / "fold_all").mkdir(parents=True, exist_ok=True)
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [16, 32, 32],
        "median_image_size_in_voxels": [30, 70, 70],
        "spacing": [5.0, 4.0, 4.0],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": SMOKE_ARCH,
        "batch_dice": False,
    }
    plans = {
        "dataset_name": DATASET,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [5.0, 4.0, 4.0],
        "original_median_shape_after_transp": [30, 70, 70],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONF: conf},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 400.0,
                "mean": 60.0,
                "median": 55.0,
                "min": -100.0,
                "percentile_00_5": -50.0,
                "percentile_99_5": 300.0,
                "std": 40.0,
            }
        },
    }
    labels = {"background": 0, **{lab.name: lab.index for lab in PHANTOM_LABELS.labels}}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 6, "file_ending": ".nii.gz"})
    )
    cls, kw = architecture(conf)
    torch.manual_seed(0)
    net = build_network(cls, kw, 1, len(labels))
    torch.save(
        {
            "network_weights": net.state_dict(),
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": 0.0,
            "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": CONF, "fold": "all", "dataset_json": {}},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        folder / "fold_all" / "checkpoint_final.pth",
    )
    return folder


# ---------------------------------------------------------------- workers (one process each)
def _peak_mb() -> float:
    from medseg.provenance import peak_rss_mb

    return peak_rss_mb()


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (less sensitive to other processes on the cores than wall time)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_nnunet(folder: str, image: str, out: str) -> dict:
    huge_pages = os.environ.get(
        "THP_MEM_ALLOC_ENABLE", "unset"
    )  # as torch's allocator reads it (medseg is imported later)
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    t0 = time.monotonic()
    p = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    p.initialize_from_trained_model_folder(folder, use_folds=("all",), checkpoint_name="checkpoint_final.pth")
    t1, c1 = time.monotonic(), _cpu_s()
    img, props = SimpleITKIO().read_images([image])
    seg = p.predict_single_npy_array(img, props, None, None, False)
    seconds, cpu = time.monotonic() - t1, _cpu_s() - c1
    np.save(
        out, np.ascontiguousarray(np.asarray(seg).transpose(2, 1, 0)).astype(np.uint8)
    )  # (z, y, x) -> the file's (x, y, z)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "seconds_load": t1 - t0,
        "peak_rss_mb": _peak_mb(),
        "threads": torch.get_num_threads(),
        "huge_pages": huge_pages,
    }


def worker_medseg(folder: str, image: str, out: str, options: str, cases: str = "1") -> dict:
    import torch

    import medseg.adapters  # noqa: F401  (registers the model-folder formats with medseg.inference.load)
    from medseg.inference.load import load_predictor

    t0 = time.monotonic()
    pred = load_predictor(folder, device="cpu", **json.loads(options))
    t1, c1 = time.monotonic(), _cpu_s()
    result = pred.predict(image)
    seconds, cpu = time.monotonic() - t1, _cpu_s() - c1
    later = []  # the same predictor on further cases (a batch run): what a compile or a cast costs only once
    for _ in range(int(cases) - 1):
        t2 = time.monotonic()
        pred.predict(image)
        later.append(time.monotonic() - t2)
    np.save(out, result.array.astype(np.uint8))
    keep = (
        "seconds_preprocess",
        "seconds_windows",
        "seconds_export",
        "windows_run",
        "windows_reused",
        "windows_skipped",
        "network_grid",
        "compiled",
        "compile_failed",
    )
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "seconds_load": t1 - t0,
        "peak_rss_mb": _peak_mb(),
        "threads": torch.get_num_threads(),
        "seconds_later_cases": later,
        **{k: result.meta.get(k) for k in keep},
    }


#: One switch at a time. ``base`` "faithful": on top of nnU-Net's steps; "bf16": on top of bf16 autocast (so
#: that the slow full-precision windows run only once in this process).
SWITCHES = [
    ("amp bf16", "faithful", {"amp": "bf16"}),
    ("export labels (on bf16 logits)", "bf16", {"export": "labels"}),
    ("sw_batch_size 2 (+bf16)", "bf16", {"sw_batch_size": 2}),
    ("skip_background (+bf16)", "bf16", {"skip_background": True}),
    ("logits float32 (+bf16)", "bf16", {"logits_dtype": "float32"}),
    ("mirror single (+bf16)", "bf16", {"mirror": "single"}),
    ("mirror off (+bf16)", "bf16", {"mirror": False}),
    ("tile step 0.8 (+bf16)", "bf16", {"overlap": 0.2}),  # TotalSegmentator's step
    ("cast weights (+bf16)", "bf16", {"cast": "weights"}),
    ("cast weights + step 0.8 (+bf16)", "bf16", {"cast": "weights", "overlap": 0.2}),
    ("cast weights + mirror single (+bf16)", "bf16", {"cast": "weights", "mirror": "single"}),
    ("channels_last (+bf16)", "bf16", {"channels_last": True}),  # last: it converts the loaded network in place
]


def worker_switches(folder: str, image: str, out: str, faithful_labels: str) -> dict:
    """Each switch's windows and export seconds and its labels vs medseg faithful (the same preprocessed array)."""
    import torch

    from medseg.adapters.nnunet import inference as nn
    from medseg.adapters.nnunet.predictor import nnunet_inference_options
    from medseg.inference.load import load_predictor

    ref = np.load(faithful_labels)
    pred = load_predictor(folder, device="cpu")
    model = pred.nnunet
    volume, channels = pred.read(image, [])
    spacing_xyz = [float(s) for s in np.linalg.norm(volume.affine[:3, :3], axis=0)]
    data = np.asarray(channels, dtype=np.float32).transpose(0, 3, 2, 1)
    x, props = nn.preprocess(data, spacing_xyz[::-1], model)
    del data, channels
    rows = []
    bf16_logits = None
    padded, _ = nn.pad_to(torch.from_numpy(x), list(model.conf["patch_size"]))
    lo_hi = [
        (float(padded[sl].min()), float(padded[sl].max()))
        for sl in nn._slicers(padded.shape[1:], list(model.conf["patch_size"]))
    ]
    del padded
    air = nn.air_threshold(model, -500.0)
    qualify = sum(1 for lo, hi in lo_hi if hi - lo <= 1e-5 or (air is not None and hi < air))
    for name, base, opts in SWITCHES:
        if name.startswith("skip_background") and not qualify:
            rows.append(
                {
                    "name": name,
                    "note": f"not run: none of the {len(lo_hi)} windows is constant or air on this image "
                    "(the body reaches every window), so it cannot change time or labels",
                }
            )
            continue
        over = {"amp": "bf16"} if base == "bf16" else {}
        pred.inference = nnunet_inference_options({**over, **opts})
        stats: dict = {}
        t0 = time.monotonic()
        if name.startswith("export") and bf16_logits is not None:
            logits = bf16_logits
        else:
            logits = nn.predict_logits(
                pred.models,
                x,
                model,
                step=1 - float(pred.inference["overlap"]),
                device=pred.device,
                **pred.window_options(),
                stats=stats,
            )
        t1 = time.monotonic()
        if pred.inference["export"] == "labels":
            seg = nn.labels_only(logits, props, model)
        else:
            seg, _ = nn.export(logits, props, model)
        t2 = time.monotonic()
        if name == "amp bf16":
            bf16_logits = logits
        seg = seg.transpose(2, 1, 0)
        row = {
            "name": name,
            "seconds_windows": None if name.startswith("export") else t1 - t0,
            "seconds_export": t2 - t1,
            **agreement(seg, ref),
            **stats,
        }
        if name.startswith("export"):  # isolated: against the faithful export of the same bf16 logits
            row["vs_bf16"] = agreement(seg, np.load(out + ".bf16.npy"))
        if name == "amp bf16":
            np.save(out + ".bf16.npy", seg)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows, "peak_rss_mb": _peak_mb()}


def window_flops(folder: Path) -> tuple[float, int]:
    """Floating-point operations of one network pass on one window (convolutions, as ``torch.utils.flop_counter``
    counts them: 2 per multiply-add) and the passes per window (mirrorings), for the achieved GFLOP/s lines."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medseg.adapters.nnunet.inference import mirror_combinations
    from medseg.inference.load import load_predictor

    pred = load_predictor(str(folder), device="cpu")
    net = pred.networks({**pred.window_options(), "compile": False})[0].eval()
    patch = pred.nnunet.conf["patch_size"]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros((1, pred.nnunet.in_channels, *patch)))
    return counter.get_total_flops(), 1 + len(mirror_combinations(pred.nnunet.mirror_axes))


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Fraction of voxels equal and Dice per structure present in either (``b``: the reference)."""
    dice = {}
    for c in sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist())):
        if c == 0:
            continue
        x, y = a == c, b == c
        dice[int(c)] = round(float(2 * np.logical_and(x, y).sum() / max(1, x.sum() + y.sum())), 5)
    return {
        "agree": float((a == b).mean()),
        "dice": dice,
        "mean_dice": float(np.mean(list(dice.values()))) if dice else 1.0,
    }


def _truth_array(work: Path, shape) -> np.ndarray | None:
    """The test phantom's true label map, in the (x, y, z) array order the predictors' labels are saved in."""
    import nibabel as nib

    path = work / "test" / "truth.nii.gz"
    if not path.is_file():
        return None
    arr = np.asanyarray(nib.load(str(path)).dataobj)
    if arr.shape != tuple(shape):
        print(
            f"# the truth {arr.shape} does not match the labels {tuple(shape)}: no model-vs-truth line", file=sys.stderr
        )
        return None
    return arr


#: --smoke: the workers run in this process (a fresh interpreter with torch and nnunetv2 costs seconds each)
IN_PROCESS = False


def _spawn(kind: str, *args: str, env=None) -> dict:
    if IN_PROCESS:
        fn = WORKERS[kind]
        return json.loads(json.dumps(fn(*args)))
    cmd = [sys.executable, __file__, "--worker", kind, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- --batch: medseg run vs nnUNetv2_predict
def make_batch_cases(work: Path, n: int, spacing=TEST_SPACING, fov_mm=TEST_FOV_MM) -> Path:
    """``n`` CT-like int16 phantoms (seeds TEST_SEED + 1...) as ``images/caseNNN_0000.nii.gz``: nnU-Net's input
    naming, one file per case for ``medseg run``."""
    import nibabel as nib

    from medseg.data.phantoms import make_phantom

    folder = work / "batch" / f"images_{n}_{spacing[0]:g}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"case{i:03d}_0000.nii.gz"
        if not path.is_file():
            case = make_phantom(TEST_SEED + 1 + i, spacing=spacing, fov_mm=fov_mm)
            hu = np.clip(np.round(np.asarray(case.image.array)), -1024, 3071).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, case.image.affine), str(path))
    return folder


def _timed(cmd: list, env: dict, what: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB; the largest process of the tree that ``wait4`` reports) of one command."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    err = proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{what} exited {code}:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024.0


def run_batch_nnunet(work: Path, folder: Path, images: Path, out: Path) -> tuple[float, float]:
    """``nnUNetv2_predict`` with its defaults (3 preprocessing and 3 export processes, mirroring, step 0.5), CPU:
    its ``_from_modelfolder`` entry point (the same ``predict_from_files``, given the folder instead of a data set
    id)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"), "-i", str(images), "-o", str(out)]
    cmd += ["-m", str(folder), "-f", "all", "-device", "cpu", "--disable_progress_bar"]
    return _timed(cmd, _env(work), "nnUNetv2_predict")


def run_batch_medseg(folder: Path, images: Path, out: Path, workers: int, inference: str) -> tuple[float, float]:
    """``medseg run`` (the packaged volumetry pipeline, QC montages and HTML report off, as nnU-Net writes none)."""
    shutil.rmtree(out, ignore_errors=True)
    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "dicom_volumetry.yaml"
    cmd = [sys.executable, "-m", "medseg", "run", str(pipeline), "--input", str(images), "--out", str(out)]
    for setting in (
        f"predict.model={folder}",
        "predict.device=cpu",
        f"predict.inference={inference}",
        "report.qc=false",
        "report.html=false",
    ):
        cmd += ["--set", setting]
    cmd += ["--workers", str(workers), "--no-progress"]
    return _timed(cmd, {**os.environ, "PYTHONWARNINGS": "ignore"}, "medseg run")


def batch_agreement(images: Path, nnunet_out: Path, medseg_out: Path) -> dict:
    """Per case, the fraction of voxels with nnUNetv2_predict's label and the mean Dice; their means and minimum."""
    import nibabel as nib

    agree, dice = [], []
    for img in sorted(images.glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        ref = np.asanyarray(nib.load(str(nnunet_out / f"{case}.nii.gz")).dataobj)
        got = np.asanyarray(nib.load(str(medseg_out / "cases" / f"{case}_0000" / "labels.nii.gz")).dataobj)
        ag = agreement(got, ref)
        agree.append(ag["agree"])
        dice.append(ag["mean_dice"])
    return {"agree": float(np.mean(agree)), "agree_min": float(np.min(agree)), "mean_dice": float(np.mean(dice))}


def main_batch(a, work: Path, folder: Path, say) -> None:
    """``--batch``: cases per minute of ``medseg run`` (fast preset) and ``nnUNetv2_predict`` over one folder."""
    n = max(1, a.cases)
    spacing, fov = ((4.0, 4.0, 5.0), (130.0, 130.0, 80.0)) if a.smoke else (TEST_SPACING, TEST_FOV_MM)
    images = make_batch_cases(work, n, spacing, fov)
    say(f"# batch: {n} cases in {images.relative_to(work)}, each {spacing} mm over {fov} mm (int16 NIfTI)")
    contenders = [("medseg run --preset fast", "medseg", '{"preset": "fast"}')]
    if a.batch_faithful:
        contenders.append(("medseg run (faithful)", "medseg_faithful", "{}"))
    runs: dict = {"nnunet": [], **{key: [] for _, key, _ in contenders}}
    for rep in range(a.repeat):  # interleaved, as the one-case table
        runs["nnunet"].append(run_batch_nnunet(work, folder, images, work / "batch" / "out_nnunet"))
        for _, key, opts in contenders:
            runs[key].append(run_batch_medseg(folder, images, work / "batch" / f"out_{key}", a.workers, opts))
        print(f"batch round {rep + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items()), file=sys.stderr)
    base = min(s for s, _ in runs["nnunet"])
    say(
        f"{'run':<30}{'cases':>6}{'seconds':>9}{'cases/min':>10}{'x nnU-Net':>10}{'peak RSS MB':>12}{'agree':>9}"
        f"{'min agree':>10}{'mean Dice':>10}"
    )
    rows = [("nnUNetv2_predict (CPU)", "nnunet")] + [(t, k) for t, k, _ in contenders]
    for title, key in rows:
        seconds = min(s for s, _ in runs[key])
        rss = max(m for _, m in runs[key])
        if key == "nnunet":
            ag = {"agree": 1.0, "agree_min": 1.0, "mean_dice": 1.0}
        else:
            ag = batch_agreement(images, work / "batch" / "out_nnunet", work / "batch" / f"out_{key}")
        say(
            f"{title:<30}{n:>6}{seconds:>9.1f}{60 * n / seconds:>10.2f}{base / seconds:>10.2f}{rss:>12.0f}"
            f"{ag['agree']:>9.5f}{ag['agree_min']:>10.5f}{ag['mean_dice']:>10.4f}"
        )
    say(
        f"# seconds: the whole command (start-up, model load, every case, writing), the fastest of {a.repeat}; all: "
        + "; ".join(f"{k} " + "/".join(f"{s:.0f}" for s, _ in v) for k, v in runs.items())
    )
    say(
        f"# medseg run --workers {a.workers}: reader threads read and preprocess the next cases while the network "
        "runs (NnunetPredictor.prepare); nnUNetv2_predict: its defaults (-npp 3 -nps 3, background processes)."
    )
    say("# peak RSS: the largest single process of the command (wait4's ru_maxrss), not the sum of nnU-Net's workers;")
    say(
        "# agree: mean over cases of the fraction of voxels with nnUNetv2_predict's label (min agree: the lowest case)."
    )


# ---------------------------------------------------------------- --memory: peak RSS on a long CT
def make_long_image(work: Path, slices: int, smoke: bool) -> Path:
    """A CT-like int16 volume ``slices`` long: the one-case test phantom repeated along z (uncompressed NIfTI, so
    that reading costs no gzip buffers)."""
    import nibabel as nib

    path = work / "memory" / f"ct_{slices}_0000.nii"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        src = (
            make_test_image(work, spacing=(4.0, 4.0, 5.0), fov_mm=(130.0, 130.0, 80.0))
            if smoke
            else make_test_image(work)
        )
        img = nib.load(str(src))
        one = np.asanyarray(img.dataobj)
        reps = -(-slices // one.shape[2])
        nib.save(nib.Nifti1Image(np.tile(one, (1, 1, reps))[:, :, :slices], img.affine), str(path))
    return path


def worker_memory(folder: str, image: str, options: str) -> dict:
    """One ``predict`` in a fresh process: its peak RSS (VmHWM, the whole process from its start) and the resident
    memory after imports and the model load (what any run of this process holds)."""
    import medseg.adapters  # noqa: F401  (registers the model-folder formats with medseg.inference.load)
    from medseg.inference.load import load_predictor

    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    pred = load_predictor(folder, device="cpu", **json.loads(options))
    loaded = rss_mb()
    t0 = time.monotonic()
    result = pred.predict(image)
    keep = ("seconds_read", "seconds_preprocess", "seconds_windows", "seconds_export", "network_grid")
    return {
        "seconds": time.monotonic() - t0,
        "peak_rss_mb": _peak_mb(),
        "rss_loaded_mb": loaded,
        **{k: result.meta.get(k) for k in keep},
    }


def main_memory(a, work: Path, folder: Path, say) -> None:
    """``--memory SLICES``: peak RSS of one predict (each preset its own process) against the input's own size."""
    import nibabel as nib

    image = make_long_image(work, a.memory, a.smoke)
    img = nib.load(str(image))
    in_mb = np.prod(img.shape) * img.get_data_dtype().itemsize / 2**20
    say(f"# input: {image.name} {'x'.join(map(str, img.shape))} {img.get_data_dtype()} = {in_mb:.0f} MB of voxels")
    extra = json.loads(a.variant) if a.variant else {}  # e.g. {"mirror": false}: same memory, fewer passes
    presets = [("fast", json.dumps({"preset": "fast", **extra}))]
    presets += [("faithful", json.dumps(extra))] if a.memory_faithful else []
    if extra:
        say(f"# both presets with {a.variant}")
    say(
        f"{'preset':<10}{'seconds':>9}{'peak RSS MB':>12}{'x input':>9}{'after load MB':>14}{'peak - load':>12}"
        f"{'x input':>9}  read/preprocess/windows/export s, network grid"
    )
    for name, opts in presets:
        r = _spawn("memory", str(folder), str(image), opts)
        extra = r["peak_rss_mb"] - r["rss_loaded_mb"]
        say(
            f"{name:<10}{r['seconds']:>9.1f}{r['peak_rss_mb']:>12.0f}{r['peak_rss_mb'] / in_mb:>9.2f}"
            f"{r['rss_loaded_mb']:>14.0f}{extra:>12.0f}{extra / in_mb:>9.2f}  "
            f"{r['seconds_read']:.1f}/{r['seconds_preprocess']:.1f}/{r['seconds_windows']:.1f}/"
            f"{r['seconds_export']:.1f}, {r['network_grid']}"
        )
    say("# peak RSS: the predicting process's VmHWM from its start (imports, model, read, predict); after load: its")
    say("# resident memory once imports and the model are loaded, before the case (peak - load: what the case adds).")


WORKERS = {"nnunet": worker_nnunet, "medseg": worker_medseg, "switches": worker_switches, "memory": worker_memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/medseg_bench_nnunet")
    ap.add_argument("--out", help="also write the table here")
    ap.add_argument("--features", default="8,128", help="PlainConvUNet width: first stage, cap (nnU-Net: 32,320)")
    ap.add_argument("--patch", help="train with this patch instead of the planned one, e.g. 48,128,128")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument(
        "--adamw",
        type=float,
        default=0.0,
        help="train with nnunetv2's nnUNetTrainerAdam recipe (AdamW, poly) at this learning rate instead of its SGD",
    )
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of each contender (the fastest counts)")
    ap.add_argument("--no-switches", action="store_true", help="skip the one-switch-at-a-time table")
    ap.add_argument("--variant", help='also run preset fast with these options (JSON), e.g. \'{"cast": "weights"}\'')
    ap.add_argument(
        "--reference-thp",
        action="store_true",
        help="also run nnUNetPredictor with THP_MEM_ALLOC_ENABLE=1 (the allocator setting medseg uses)",
    )
    ap.add_argument(
        "--model",
        help="an existing nnU-Net v2 result folder (fold 'all') instead of training one, e.g. for --batch/--memory",
    )
    ap.add_argument("--train-only", action="store_true", help="build (train) the model under --work and stop")
    ap.add_argument(
        "--cases",
        type=int,
        default=1,
        help="the fast contenders predict the volume this many times in one process (a batch: the first case "
        "pays the compile); their later cases' seconds are printed too",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting: a small untrained PlainConvUNet written in nnU-Net's folder layout instead of "
        "training one, a 4 mm test phantom, one round, every worker in this process, no one-switch table, in a "
        "temporary --work: a test that the script runs",
    )
    ap.add_argument(
        "--batch",
        action="store_true",
        help="instead of the one-case table: cases per minute of `medseg run` (preset fast) against nnUNetv2_predict "
        "over one folder of --cases CT-sized phantoms (each command its own process), labels agreement per case",
    )
    ap.add_argument("--workers", type=int, default=1, help="--batch: medseg run's reader threads (its default: 1)")
    ap.add_argument("--batch-faithful", action="store_true", help="--batch: also medseg run with the faithful preset")
    ap.add_argument(
        "--memory",
        type=int,
        metavar="SLICES",
        help="instead of the one-case table: peak RSS of one predict on the test phantom repeated to SLICES slices "
        "(e.g. 1920: 513x513x1920 int16, 1 GB), preset fast, each in its own process",
    )
    ap.add_argument("--memory-faithful", action="store_true", help="--memory: the faithful preset too")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.smoke:
        global IN_PROCESS
        IN_PROCESS, a.repeat, a.cases, a.no_switches = True, 1, 2 if a.batch else 1, True
        if a.work == ap.get_default("work"):
            a.work = tempfile.mkdtemp(prefix="bench_nnunet_smoke_")
        os.environ.update(_env(Path(a.work)))  # nnunetv2 reads its folders when imported, here in this process
    if a.worker:
        fn = WORKERS[a.worker]
        print(json.dumps(fn(*a.args)))
        return

    import torch

    if not a.smoke:  # a smoke run in a test suite is not niced behind the tests around it
        os.nice(max(0, 5 - os.nice(0)))  # nice 5 for this script and every process it starts
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    f0, fmax = (int(v) for v in a.features.split(","))
    lines: list[str] = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    t_start = time.monotonic()
    load = os.getloadavg()
    say(f"# bench_nnunet.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(
        f"# CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average at start {load[0]:.2f}; every run under nice -n 5."
    )
    say("# The 2 cores are shared with other sessions' tests while this runs: absolute seconds are noisy,")
    say("# the ratios within this one script are what counts.")
    t0 = time.monotonic()
    if a.model:
        folder = Path(a.model).resolve()
    elif a.smoke:
        folder = smoke_model(work)
    else:
        folder = build_model(
            work, f0, fmax, a.epochs, a.iters, [int(v) for v in a.patch.split(",")] if a.patch else None, a.adamw
        )
    trained = time.monotonic() - t0
    if a.train_only:
        say(f"# model trained in {trained:.0f} s: {folder}")
        return
    if a.model and (a.batch or a.memory):
        say(f"# model: {folder.parent.name}/{folder.name} (given with --model), fold all")
    if a.batch or a.memory:
        (main_batch if a.batch else main_memory)(a, work, folder, say)
        say(f"# total {time.monotonic() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
        if a.out:
            Path(a.out).write_text("\n".join(lines) + "\n")
        return
    image = (
        make_test_image(work, spacing=(4.0, 4.0, 5.0), fov_mm=(130.0, 130.0, 80.0))
        if a.smoke
        else make_test_image(work)
    )
    plans = json.loads((folder / "plans.json").read_text())
    conf = plans["configurations"][CONF]
    arch = conf["architecture"]["arch_kwargs"]
    import nibabel as nib

    shape = nib.load(str(image)).shape
    recipe = f", AdamW {a.adamw:g} (nnUNetTrainerAdam's recipe)" if a.adamw else ""
    if a.model:
        say(f"# model: {folder.parent.name}/{folder.name} (given with --model), fold all")
    else:
        say(
            f"# model: {folder.relative_to(work)} (nnU-Net v2 planner + nnUNetTrainer, fold all, {a.epochs} epochs x "
            f"{a.iters} iterations{recipe}{'' if trained < 5 else f', trained here in {trained:.0f} s'})"
        )
    narrowed = "" if arch["features_per_stage"][0] >= 32 else " (narrowed from nnU-Net's 32..320 for this CPU)"
    say(
        f"#   PlainConvUNet features_per_stage {arch['features_per_stage']}{narrowed}, patch {conf['patch_size']}, "
        f"spacing {conf['spacing']} mm, mirror axes from the checkpoint"
    )
    say(
        f"# input: {image.name} {shape[0]}x{shape[1]}x{shape[2]} int16 at {TEST_SPACING} mm (CT-like phantom, seed "
        f"{TEST_SEED})"
    )
    say("")

    contenders = {"faithful": {}, "fast": {"preset": "fast"}}
    if a.variant:
        contenders["variant"] = {"preset": "fast", **json.loads(a.variant)}
    references = ["nnunet"] + (["nnunet_thp"] if a.reference_thp else [])
    labels = {k: str(work / f"labels_{k}.npy") for k in (*references, *contenders)}
    runs: dict = {k: [] for k in labels}
    for rep in range(a.repeat):  # interleaved, so that a busy minute on the shared cores hits every contender
        for key in references:
            runs[key].append(
                _spawn("nnunet", str(folder), str(image), labels[key], env=_env(work, key == "nnunet_thp"))
            )
        for key, opts in contenders.items():
            # an empty inductor cache for every run: compile="auto" pays its whole compile in the figure (a later
            # process with the same network and window reuses the compiled code from the user's cache and is faster)
            cache = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix=f"inductor_{key}_", dir=work)}
            n_cases = "1" if key == "faithful" else str(max(1, a.cases))
            runs[key].append(
                _spawn("medseg", str(folder), str(image), labels[key], json.dumps(opts), n_cases, env=cache)
            )
            shutil.rmtree(
                cache["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True
            )  # this script's own folder: tens of MB each
        print(
            f"round {rep + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.1f} s" for k, v in runs.items()),
            file=sys.stderr,
            flush=True,
        )
    res = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    ref = np.load(labels["nnunet"])
    names = {int(k): n for n, k in json.loads((folder / "dataset.json").read_text())["labels"].items() if k}
    base, base_cpu = res["nnunet"]["seconds"], min(r["cpu_seconds"] for r in runs["nnunet"])
    say(
        f"{'run':<30}{'seconds':>8}{'x nnU-Net':>10}{'CPU s':>7}{'x nnU-Net':>10}{'peak RSS MB':>12}{'agree':>9}"
        f"{'mean Dice':>10}  Dice per structure"
    )
    for key, title in (
        ("nnunet", "nnUNetPredictor (CPU, fp32)"),
        ("nnunet_thp", "nnUNetPredictor + huge pages"),
        ("faithful", "medseg faithful (default)"),
        ("fast", "medseg preset=fast"),
        ("variant", f"fast + {a.variant}"),
    ):
        if key not in runs:
            continue
        r = res[key]
        cpu = min(x["cpu_seconds"] for x in runs[key])
        ag = agreement(np.load(labels[key]), ref)
        r["agreement"] = ag
        per = " ".join(f"{names.get(c, c)}={d:.4f}" for c, d in ag["dice"].items())
        say(
            f"{title:<30}{r['seconds']:>8.1f}{base / r['seconds']:>10.2f}{cpu:>7.0f}{base_cpu / cpu:>10.2f}"
            f"{max(x['peak_rss_mb'] for x in runs[key]):>12.0f}{ag['agree']:>9.5f}{ag['mean_dice']:>10.4f}  {per}"
        )
    say(
        f"# seconds: the fastest of {a.repeat} interleaved runs (read + predict, model loading excluded), all: "
        + "; ".join(f"{k} " + "/".join(f"{x['seconds']:.0f}" for x in v) for k, v in runs.items())
    )
    say("# CPU s: user+sys seconds of that process (all threads), the smallest of the runs.")
    say(
        "# THP_MEM_ALLOC_ENABLE (PyTorch's allocator on transparent huge pages; medseg sets 1 when imported): "
        + ", ".join(f"{k} {runs[k][0]['huge_pages']}" for k in references)
        + ", medseg 1"
    )
    say(
        "# agreement = fraction of voxels with the same label as nnUNetPredictor; Dice per structure vs "
        "nnUNetPredictor."
    )
    for key in contenders:
        r = res[key]
        say(
            f"# medseg {key}: windows run {r['windows_run']}, reused (constant) {r['windows_reused']}, skipped (air) "
            f"{r['windows_skipped']}; seconds: preprocessing {r['seconds_preprocess']:.1f}, windows "
            f"{r['seconds_windows']:.1f}, export {r['seconds_export']:.1f}; network grid {r['network_grid']}"
            + (
                ""
                if r.get("compiled") is None
                else f"; compiled {r['compiled']}"
                + (f" (failed: {r['compile_failed']})" if r.get("compile_failed") else "")
            )
        )
    flops, per_window = window_flops(folder)
    say(
        f"# one window pass: {flops / 1e9:.1f} GFLOP (convolutions; {per_window} passes a window with mirroring). "
        "Windows' throughput: "
        + "; ".join(
            f"{k} {r['seconds_windows'] / (r['windows_run'] * per_window):.3f} s a pass, "
            f"{flops * r['windows_run'] * per_window / r['seconds_windows'] / 1e9:.0f} GFLOP/s"
            for k, r in ((k, res[k]) for k in contenders)
            if r["windows_run"]
        )
    )
    for key in contenders:
        later = res[key].get("seconds_later_cases") or []
        if later:
            mean = sum(later) / len(later)
            say(
                f"# medseg {key}, later cases in the same process: "
                + ", ".join(f"{x:.1f}" for x in later)
                + f" s (mean {mean:.1f} s, {base / mean:.2f}x nnUNetPredictor's one case)"
            )
    truth = _truth_array(work, ref.shape)
    if (
        truth is not None
    ):  # how well trained the model is: bf16 flips near-ties, which an undertrained model has many of
        tr = agreement(ref, truth)
        say(
            "# nnUNetPredictor vs the phantom's true labels (how trained the model is): mean Dice "
            f"{tr['mean_dice']:.4f} " + " ".join(f"{names.get(c, c)}={d:.3f}" for c, d in tr["dice"].items())
        )
    fast_vs_faithful = agreement(np.load(labels["fast"]), np.load(labels["faithful"]))
    say(
        f"# fast vs medseg faithful: agree {fast_vs_faithful['agree']:.5f}, mean Dice "
        f"{fast_vs_faithful['mean_dice']:.4f} {fast_vs_faithful['dice']}"
    )

    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    sw = None
    if not a.no_switches:
        try:
            sw = _spawn("switches", str(folder), str(image), str(work / "switch"), labels["faithful"])
        except SystemExit as exc:
            say(f"# the one-switch table failed: {str(exc)[-500:]}")
    if sw:
        say("")
        say(
            "# one switch at a time, same preprocessed array, vs medseg faithful labels (faithful windows: "
            f"{res['faithful']['seconds_windows']:.1f} s)"
        )
        say(f"{'switch':<34}{'windows s':>10}{'export s':>10}{'agree':>9}{'mean Dice':>10}  windows run/reused/skipped")
        for row in sw["rows"]:
            if "note" in row:
                say(f"{row['name']:<34}  {row['note']}")
                continue
            w = "" if row["seconds_windows"] is None else f"{row['seconds_windows']:.1f}"
            extra = f"{row.get('windows_run', '-')}/{row.get('windows_reused', '-')}/{row.get('windows_skipped', '-')}"
            say(
                f"{row['name']:<34}{w:>10}{row['seconds_export']:>10.1f}{row['agree']:>9.5f}{row['mean_dice']:>10.4f}  "
                f"{extra}"
            )
            if "vs_bf16" in row:
                v = row["vs_bf16"]
                say(
                    f"{'  (vs faithful export, same logits)':<34}{'':>10}{'':>10}"
                    f"{v['agree']:>9.5f}{v['mean_dice']:>10.4f}"
                )
    say("")
    say(f"# total {time.monotonic() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
