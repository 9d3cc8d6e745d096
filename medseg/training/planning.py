"""``medseg plan``: derive a training config from the data (nnU-Net's lesson), user overrides on top.

Fingerprint (per case, in RAS axis order): spacing, shape, and intensities
sampled inside the labelled foreground; the modality (from the manifest's
``modality`` column or guessed: CT when air at about -1000 is present).

Plan:
- target spacing: the median spacing per axis; when the coarsest axis is more
  than 3x the finest, that axis takes its 10th percentile instead (nnU-Net);
  never finer than ``min_spacing`` (keeps CPU training tractable);
- patch size: the median image size at that spacing, capped at 128 per axis,
  shrunk (largest axis first) until a rough activation-memory estimate fits
  ``memory_gb``; every axis a multiple of the model's divisor;
- intensity: CT -> clip to the foreground's 0.5/99.5 percentiles, then z-score
  with the foreground's mean and std; MR -> z-score per image;
- on a CPU the patch is also shrunk (largest axis first) to at most 64^3
  voxels (then up to a multiple of the planned network's strides, down where up would break the memory budget),
  one patch per step (``samples_per_image: 1``) and epochs of 50
  iterations (250 on a GPU, as nnU-Net), unless the base config sets them;
- network: when the base config names none (or ``unet`` without options), MONAI's
  residual U-Net as deep as the patch allows (halving until ~4 voxels, 2-5 levels),
  16 features doubling to at most 256, two residual units per level (the plain MONAI
  recipe's network; the earlier default, 16..128 with three down-samplings and one
  unit, lost to that recipe on a real MR split: 0.922 vs 0.929 mean test Dice, this
  one 0.927-0.935 in two runs; benchmarks/results/2026-12-01_training_real_depth.txt);
- batch size 2 on a GPU (nnU-Net's choice); 1 on a CPU, where the same
  compute buys twice the optimizer steps (measured on the phantom demo:
  mean Dice 0.917 vs 0.834 after 50 epochs); inference windows = the patch size.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import yaml

from medseg import safe_yaml
from medseg.config import apply_overrides, config_from_dict
from medseg.data.label_sources import check_table_against_values, label_values, table_for_manifest, values_in
from medseg.data.manifest import image_columns, read_manifest
from medseg.errors import InputError
from medseg.io.atomic import write_json, write_text
from medseg.io.readers import read_volume
from medseg.models import input_divisor
from medseg.models.presets import resolve_model_preset
from medseg.training.resolution import (
    STEP_SHARE,
    Candidate,
    assess,
    cascade_plan,
    choose,
    coarsest_spacing,
    foreground_extent,
    ladder,
    probe_seconds_per_step,
    structure_sizes,
)
from medseg.transforms.intensity import check_preprocessing, get_scheme, scheme_for_modality

#: On a CPU, the largest patch (voxels) planned: 64^3, the plain MONAI recipe's patch. A whole 2 mm head (104x120x96)
#: took 9 s per step with 2 samples per image on 2 cores (6 steps in a 1-minute budget); the earlier cap, 96x96x64
#: (the head planned at 80x80x96), trained 1.5-1.9x fewer steps than 64^3 in 8 minutes and trailed it on real MR:
#: seed 90 0.924-0.926 against 0.940 the same hour (the MONAI recipe 0.939), and 64^3 reached 0.941/0.942/0.927 on
#: seeds 60/80/10 (the MONAI recipe 0.932/0.936/0.929); benchmarks/results/2026-12-02_training_real_patch64.txt.
_CPU_PATCH_VOXELS = 64 * 64 * 64

#: Bytes of activation memory per voxel of a patch, per unit of base width, per sample (rough, U-Net family, fp32, with
#: gradients).
_BYTES_PER_VOXEL_PER_CHANNEL = 4 * 40


def fingerprint(
    df,
    image_cols: list[str],
    *,
    max_cases: int = 200,
    voxels_per_case: int = 20000,
    seed: int = 0,
    values: dict[str, set[int]] | None = None,
) -> dict:
    """Spacing, shape, modality and foreground intensities of the training cases.

    ``values``, when given, receives each label map's label values (``case_id -> values``) as it
    is read, so that the planner's label check does not read these label maps a second time.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    spacings, shapes, samples, air, fg_extents, sizes = [], [], [], [], [], []
    rows = df[df["split"] == "train"] if "split" in df.columns else df
    for row in list(rows.itertuples())[:max_cases]:
        img = read_volume(getattr(row, image_cols[0]))  # NIfTI, NRRD or MHA, as training and inference read them
        ornt = nib.orientations.io_orientation(img.affine)
        perm = ornt[:, 0].astype(int)
        zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
        spacing, shape = np.empty(3), np.empty(3)
        spacing[perm], shape[perm] = zooms, np.array(img.array.shape[:3])
        spacings.append(spacing)
        shapes.append(shape)
        data = np.asarray(img.array, dtype=np.float32)
        if not np.isfinite(data).all():  # percentiles, the CT window and z-score statistics would all be NaN
            raise InputError(
                f"case {row.case_id}: {int((~np.isfinite(data)).sum())} NaN/Inf voxel(s) in the image; "
                "planning and training need finite intensities (fix or mask them in the file)",
                path=getattr(row, image_cols[0]),
            )
        air.append(float(np.percentile(data, 1)) < -500)
        label = getattr(row, "label", "")
        if label:
            try:
                lab = read_volume(label).array
            except InputError as exc:
                raise InputError(f"case {row.case_id}: label map unreadable ({exc})", path=label) from None
            if values is not None:
                values[row.case_id] = values_in(row.case_id, label, lab)
            extent = np.empty(3)
            extent[perm] = foreground_extent(lab, zooms)
            fg_extents.append(extent)
            sizes.append(structure_sizes(lab, zooms))
            fg = lab > 0
            vals = data[fg]
            if vals.size:
                samples.append(rng.choice(vals, size=min(voxels_per_case, vals.size), replace=False))
    if not spacings:
        raise InputError("no training cases to plan from")
    modality = "CT" if np.mean(air) > 0.5 else "MR"
    if "modality" in df.columns and df["modality"].iloc[0]:
        modality = str(df["modality"].iloc[0]).upper()
    fg = np.concatenate(samples) if samples else np.zeros(1, np.float32)
    structures = {
        v: {k: float(np.median([c[v][k] for c in sizes if v in c])) for k in ("volume_ml", "thickness_mm")}
        for v in sorted({v for c in sizes for v in c})
    }
    return {
        "n_cases": len(spacings),
        "n_train": len(rows),
        "spacing_median": np.median(spacings, axis=0).tolist(),
        "spacing_p10": np.percentile(spacings, 10, axis=0).tolist(),
        "shape_median": np.median(shapes, axis=0).tolist(),
        "extent_mm_median": np.median(np.array(shapes) * np.array(spacings), axis=0).tolist(),
        "foreground_extent_mm_median": np.median(fg_extents, axis=0).tolist() if fg_extents else None,
        "structures": {str(v): {k: round(x, 3) for k, x in d.items()} for v, d in structures.items()},
        "thinnest_mm": min((d["thickness_mm"] for d in structures.values()), default=None),
        "modality": modality,
        "foreground": {
            "p00_5": float(np.percentile(fg, 0.5)),
            "p99_5": float(np.percentile(fg, 99.5)),
            "mean": float(fg.mean()),
            "std": float(fg.std()),
        },
    }


def full_resolution(fp: dict, min_spacing: float) -> tuple[np.ndarray, list[str]]:
    """nnU-Net's full-resolution target spacing (the median; the 10th percentile on a 3x coarser axis), floored."""
    spacing = np.array(fp["spacing_median"], dtype=float)
    reasons = []
    if spacing.max() > 3 * spacing.min():
        coarse = int(np.argmax(spacing))
        spacing[coarse] = fp["spacing_p10"][coarse]
        reasons.append(
            f"axis {'xyz'[coarse]} is over 3x coarser than the finest, so its 10th percentile "
            f"({spacing[coarse]:.3g} mm) is used instead of its median (nnU-Net's rule for anisotropic data)"
        )
    if np.any(spacing < min_spacing):
        reasons.append(f"axes finer than --min-spacing {min_spacing:g} mm are raised to it")
    return np.maximum(spacing, min_spacing), reasons


def _patch_and_network(
    fp: dict, spacing: np.ndarray, model: dict, *, divisor: int, gpu: bool, memory_gb: float
) -> tuple[np.ndarray, dict]:
    """The patch at ``spacing`` (the median image, capped by memory and, on a CPU, at 64^3 voxels) and the model
    section (the default network made as deep as that patch allows)."""
    median_vox = np.array(fp["shape_median"]) * np.array(fp["spacing_median"]) / spacing
    patch = np.minimum(np.maximum(np.ceil(median_vox / divisor) * divisor, divisor), 128).astype(int)
    default_net = model.get("name", "unet") == "unet" and not model.get("kwargs")
    width = 16 if default_net else int(((model.get("kwargs") or {}).get("channels") or [16])[0])
    batch = 2 if gpu else 1
    budget = memory_gb * 2**30

    def fits(p) -> bool:
        return batch * np.prod(p) * width * _BYTES_PER_VOXEL_PER_CHANNEL <= budget

    while not fits(patch) and patch.max() > divisor:
        patch[int(np.argmax(patch))] -= divisor
    while not gpu and np.prod(patch) > _CPU_PATCH_VOXELS and patch.max() > divisor:  # CPU: steps are scarce
        patch[int(np.argmax(patch))] -= divisor
    if not default_net:
        return patch, dict(model)
    # no network chosen: MONAI's residual U-Net, as deep as the patch allows (nnU-Net: down-sample until the
    # feature map is ~4 voxels), 16 features doubling per level up to 256, two residual units per level
    depth = int(np.clip(np.floor(np.log2(patch.min() / 4)), 2, 5))
    net = {
        **model,
        "name": "unet",
        "kwargs": {
            "channels": [min(16 * 2**i, 256) for i in range(depth + 1)],
            "strides": [2] * depth,
            "num_res_units": 2,
        },
    }
    step = 2**depth  # the patch was sized in steps of the base divisor: now to multiples of the strides' product,
    up = np.minimum(np.ceil(patch / step) * step, 128 // step * step)  # up (<= 128) unless that breaks the memory
    patch = (up if fits(up) else np.maximum(np.floor(patch / step) * step, step)).astype(int)
    return patch, net


def _iterations_for(cfg: dict, gpu: bool, budget_minutes: float | None, fp: dict):
    """A function (patch, model section) -> (optimizer steps the training will take, seconds per step or None):
    from the budget and a timed probe of that network on this device, else from the schedule."""
    tr = cfg.get("training") or {}
    budget = budget_minutes if budget_minutes is not None else float(tr.get("max_minutes") or 0)
    probes: dict = {}

    def iterations(patch, net) -> tuple[float, float | None]:
        if not budget:
            return float(tr.get("epochs", 60)) * float(tr.get("iterations_per_epoch", 250 if gpu else 50)), None
        key = (tuple(int(p) for p in patch), repr(net))
        if key not in probes:
            probes[key] = probe_seconds_per_step(
                net,
                patch,
                batch=int(tr.get("batch_size", 2 if gpu else 1)),
                in_channels=int(fp.get("n_channels", 1)),
                out_channels=int(fp.get("n_classes", 2)),
            )
        return budget * 60.0 * STEP_SHARE / probes[key], probes[key]

    return iterations, budget


def choose_resolution(
    fp: dict, cfg: dict, *, memory_gb: float, min_spacing: float, divisor: int, gpu: bool, budget_minutes
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The spacing, patch and model section to train with, chosen among the full resolution and coarser spacings
    (``medseg.training.resolution``); the candidates, their figures and the verdicts go into ``fp["resolution"]``."""
    full, reasons = full_resolution(fp, min_spacing)
    model = cfg.get("model") or {}
    size = dict(divisor=divisor, gpu=gpu, memory_gb=memory_gb)
    full_patch, _ = _patch_and_network(fp, full, model, **size)
    tr = cfg.get("training") or {}
    per_step = int(tr.get("batch_size", 2 if gpu else 1)) * int(tr.get("samples_per_image", 2 if gpu else 1))
    iterations, budget = _iterations_for(cfg, gpu, budget_minutes, fp)
    cands: list[Candidate] = []
    nets, patches, probes = [], [], []
    for spacing in ladder(full, coarsest=coarsest_spacing(fp, int(np.prod(full_patch)))):
        patch, net = _patch_and_network(fp, spacing, model, **size)
        iters, sec = iterations(patch, net)
        cands.append(assess(spacing, patch, fp, iterations=iters, per_step=per_step))
        cands[-1].model = net
        nets.append(net)
        patches.append(patch)
        probes.append(sec)
    k = choose(cands)
    cascade, cascade_why = cascade_plan(cands, k)
    fp["resolution"] = {
        "rule": "the finest spacing with enough detail, context and passes; else the coarsest the detail allows "
        "(medseg.training.resolution)",
        "budget_minutes": budget or None,
        "device": "gpu" if gpu else "cpu",
        "seconds_per_step": probes[k],
        "full_resolution": [round(float(v), 3) for v in full],
        "full_resolution_reasons": reasons,
        "candidates": [c.row() for c in cands],
        "chosen": k,
        "cascade": cascade,
        "cascade_reason": cascade_why,
    }
    fp["spacing_planned"] = [float(v) for v in cands[k].spacing]  # what medseg plan prints, with why
    why = reasons + ([] if k == 0 else [f"coarser than the full resolution {[round(float(v), 2) for v in full]} mm"])
    fp["spacing_reason"] = "; ".join(why + cands[k].reasons) or "the median spacing of the training cases"
    if cascade:  # stage 2 trains at the full resolution; the config's cascade section says where stage 1 trains
        cfg["cascade"] = cascade
        return np.array(cands[0].spacing), patches[0], nets[0]
    return np.array(cands[k].spacing), patches[k], nets[k]


def plan_config(
    fp: dict,
    *,
    base: dict | None = None,
    memory_gb: float = 4.0,
    min_spacing: float = 1.0,
    divisor: int = 8,
    gpu: bool | None = None,
    budget_minutes: float | None = None,
) -> dict:
    """A config dict (``medseg.config`` schema) from a fingerprint, on top of ``base``."""
    cfg = copy.deepcopy(base or {})
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    spacing, patch, net = choose_resolution(
        fp, cfg, memory_gb=memory_gb, min_spacing=min_spacing, divisor=divisor, gpu=gpu, budget_minutes=budget_minutes
    )
    cfg["model"] = net
    pre = cfg.setdefault("preprocessing", {})
    pre["spacing"] = [round(float(s), 3) for s in spacing]
    scheme = scheme_for_modality(fp["modality"])  # the first registered scheme planned for this modality
    pre["intensity"] = scheme
    pre.update(get_scheme(scheme).plan(fp))
    tr = cfg.setdefault("training", {})
    tr.update(patch_size=[int(p) for p in patch], batch_size=2 if gpu else 1)
    tr.setdefault(
        "iterations_per_epoch", 250 if gpu else 50
    )  # nnU-Net's 250; on a CPU ~15-30 s, so epochs keep a validation cadence
    if not gpu:
        tr.setdefault("samples_per_image", 1)  # one patch per step: twice the steps of the default 2 in the same time
    cfg.setdefault("inference", {})["roi_size"] = [int(p) for p in patch]
    return cfg


def plan(
    manifest: str | Path,
    out: str | Path,
    *,
    base_config: str | Path | None = None,
    memory_gb: float = 4.0,
    min_spacing: float = 1.0,
    overrides: list[str] | None = None,
    labels: str | Path | None = None,
    model: str | None = None,
    budget_minutes: float | None = None,
) -> tuple[Path, dict]:
    """Fingerprint the manifest's training cases and write a config YAML (validated) to ``out``.

    ``budget_minutes`` is the training time the plan is for (default: the base config's
    ``training.max_minutes``, else its schedule): with the device it decides how coarse to train
    (``medseg.training.resolution``; the candidates and the reasons are in the fingerprint file).

    The config carries the data set's label table inline (``medseg.data.label_sources``
    says where it is looked for; ``labels`` names one explicitly), checked against
    every label map first. ``model`` names a preset under ``configs/models`` whose
    ``model`` section and per-family ``training`` recipe the plan starts from, or a
    registered model (``medseg models``): its family's preset, else its default width.
    The fingerprint is written beside the config as ``<config stem>.fingerprint.json``.
    """
    df = read_manifest(manifest, require_labels=True)
    base = (safe_yaml.load_file(base_config) or {}) if base_config else {}
    if model:
        base = _with_model_preset(base or {}, model)
    values: dict[str, set[int]] = {}
    fp = fingerprint(df, image_columns(df), values=values)  # reads the training label maps once, for both
    values = label_values(df, known=values)
    found = table_for_manifest(manifest, df, explicit=labels, values=values)
    problems = check_table_against_values(found.table, values)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise InputError(f"label table from {found.source} does not fit the label maps: {shown}", path=manifest)
    # plan for the network the config will build: the user's model.* overrides are applied before planning
    # (patch sizes follow its depth and width), all overrides again after (so an explicit patch size wins)
    base = apply_overrides(copy.deepcopy(base or {}), [o for o in overrides or [] if o.strip().startswith("model.")])
    net = base.get("model") or {}
    divisor = input_divisor(
        net.get("name", "unet"), spatial_dims=int(net.get("spatial_dims", 3)), **(net.get("kwargs") or {})
    )
    fp["label_table_source"] = found.source
    fp["n_channels"], fp["n_classes"] = len(image_columns(df)), len(found.table.labels) + 1
    cfg = plan_config(
        fp, base=base, memory_gb=memory_gb, min_spacing=min_spacing, divisor=divisor, budget_minutes=budget_minutes
    )
    aug = cfg.setdefault("training", {}).setdefault("augmentation", {})
    if "flip_axes" not in aug:  # mirroring as nnU-Net and the MONAI recipes do, except across a left/right distinction
        aug["flip_axes"] = [] if has_sides(found.table) else [0, 1, 2]
    inf = cfg.setdefault("inference", {})
    if (
        "tta_flips" not in inf
    ):  # test-time mirroring over the axes the network was trained to be mirror-invariant on, as
        # nnU-Net predicts. Measured on bench_training --real (2026-11-30): +0.006/+0.007 mean test Dice on two
        # trained models (0.893 -> 0.900, 0.901 -> 0.907) for 4 passes instead of 1; `--set inference.tta_flips=[]`
        # turns it off.
        inf["tta_flips"] = list(aug["flip_axes"])
    cfg = {"labels": found.table.to_dict(), **{k: v for k, v in cfg.items() if k != "labels"}}
    cfg = apply_overrides(cfg, overrides)
    check_preprocessing(
        config_from_dict(cfg, source=str(out)).preprocessing, str(out)
    )  # refuse a plan the trainer would refuse
    out = Path(out)
    fp_path = out.with_name(out.name.split(".")[0] + ".fingerprint.json")
    write_json(fp_path, fp)
    head = (
        f"# written by medseg plan from {Path(manifest).name}; label table from {found.source}\n"
        f"# data set fingerprint: {fp_path.name}\n"
    )
    write_text(out, head + yaml.safe_dump(cfg, sort_keys=False))
    return out, fp


_SIDE = re.compile(r"(^|_)(left|right|lt|rt|l|r|sin|dx)(_|$)")


def has_sides(table) -> bool:
    """True when a structure name says left or right (``kidney_left``, ``Lt_Lung``, ``lung_l``...): no L-R mirroring
    then."""
    return any(_SIDE.search(lab.name.lower()) for lab in table.labels)


def _with_model_preset(base: dict, name: str) -> dict:
    """``base`` with the preset's model section and its per-family training recipe (``base`` keys win)."""
    preset = resolve_model_preset(name)  # a preset, or a model name (its family's preset or default recipe)
    model = (
        preset.get("model", preset)
        if isinstance(preset.get("model"), dict)
        else {k: preset[k] for k in ("name", "spatial_dims", "kwargs") if k in preset}
    )
    cfg = copy.deepcopy(base)
    cfg["model"] = {**model, **(cfg.get("model") or {})} if cfg.get("model") else dict(model)
    recipe = dict(preset.get("training") or {})
    own = cfg.get("training") or {}
    # a mapping such as augmentation merges key by key (the base's affine_prob does not drop the preset's rotate_deg)
    cfg["training"] = {
        **recipe,
        **{
            k: {**recipe[k], **v} if isinstance(v, dict) and isinstance(recipe.get(k), dict) else v
            for k, v in own.items()
        },
    }
    return cfg
