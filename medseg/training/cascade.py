"""A two-stage cascade (nnU-Net's ``3d_cascade_fullres``), trained by ``medseg train`` when the config has a
``cascade`` section (``medseg.config.CascadeConfig``), within the run's one budget.

``train_cascade`` runs, in ``OUT``:

1. ``OUT/stage1/``: a plain training run at ``cascade.lowres_spacing`` (a patch covers more of the body) for
   ``cascade.lowres_share`` of ``training.max_minutes``;
2. ``OUT/priors/``: stage 1's best checkpoint segments every training and validation case (labels on the input's
   grid, as ``medseg predict`` writes them); the time counts in the budget;
3. ``OUT/stage2/``: a training run at ``preprocessing.spacing`` whose network takes, after the image channels, one
   channel per structure of the case's prior (``PriorInputs``), for the rest of the budget;
4. ``OUT/best.pt``: ONE checkpoint file holding both stages (``medseg.inference.cascade``), which ``medseg
   predict --model OUT/best.pt`` and ``medseg run`` use like any model; ``OUT/run.json`` and ``OUT/cascade.json``
   record both stages (directories, best validation Dice, minutes).

Why stage 2 trains on stage 1's predictions of the cases stage 1 trained on. nnU-Net trains stage 1 in 5 folds
and gives stage 2, for each training case, the prediction of the fold that did not see it, so the prior is as
imperfect in training as on new images. Under a CPU time budget that costs 5 stage-1 trainings in the time of one
(each fold would get a fifth of the minutes and be worse for it), so medseg predicts the training cases with the
one stage-1 model. That prior is optimistic (stage 1 has seen these cases), and stage 2 might learn to copy it; two
things counter this: the prior is perturbed during training as in nnU-Net's cascade augmentation
(``cascade.prior_corruption``: each structure's channel dilated or eroded by 1-2 voxels, or dropped, in that share
of the patches), and the validation cases' priors are honest (stage 1 never trained on them), so stage 2's
validation Dice, which picks its best checkpoint, measures the cascade as it will run.

The prior reaches stage 2 on the same path in training and inference: stage 1's labels on the input grid, oriented
to RAS and sampled to stage 2's grid by nearest neighbour, then one channel per structure
(``medseg.inference.cascade.prior_channels``: the intensity floor, or 1 above it inside the structure) AFTER the
intensity normalisation, which therefore never touches it. In training the prior rides along as a second channel
of the label map through the patch sampling and the spatial augmentation (so it stays aligned with the image; it
takes no intensity augmentation) and becomes input channels at the end (``PriorFromLabeld``): patches
are centred on voxels where the label or the prior has a structure.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Hashable, Mapping

import torch
import yaml
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandomizableTransform,
)

from medseg.config import Config, PreprocessingConfig
from medseg.data.manifest import image_columns, read_manifest
from medseg.errors import ConfigError, InputError
from medseg.inference.cascade import FORMAT_VERSION, MARKER, prior_channels
from medseg.inference.predictor import CheckpointPredictor
from medseg.io.atomic import atomic_path, write_json, write_text
from medseg.io.readers import write_label_map
from medseg.labels import LabelTable
from medseg.training.cases import split_cases
from medseg.transforms.intensity import NormalizeIntensityByPresetd, RefuseNonFinited, get_scheme
from medseg.transforms.presets import random_transforms
from medseg.transforms.reader import VolumeReader
from medseg.transforms.spatial import ResampleToSpacingd

log = logging.getLogger("medseg.training.loop")

#: Stage 2 gets at least this share of the budget, even when stage 1 and its predictions ran over theirs (logged).
MIN_STAGE2_SHARE = 0.1


# --- stage 2's input: the prior ----------------------------------------------------------------------------------


def _dilate(x: torch.Tensor, r: int) -> torch.Tensor:
    return torch.nn.functional.max_pool3d(x[None], 2 * r + 1, stride=1, padding=r)[0]


def corrupt_prior(prior: torch.Tensor, rng) -> torch.Tensor:
    """``prior`` ``(K-1, x, y, z)`` 0/1 with each structure's channel dilated or eroded by 1-2 voxels (40% each) or
    dropped (20%: stage 1 missed it), as nnU-Net's cascade augmentation (binary operators, removed components)."""
    out = prior.clone()
    for c in range(out.shape[0]):
        r, draw = int(rng.randint(1, 3)), float(rng.rand())
        ch = out[c : c + 1].float()
        if draw < 0.4:
            out[c] = _dilate(ch, r)[0]
        elif draw < 0.8:
            out[c] = 1.0 - _dilate(1.0 - ch, r)[0]
        else:
            out[c] = 0.0
    return out


class PriorFromLabeld(RandomizableTransform, MapTransform):
    """Training, after the random transforms: the label's second channel (the prior, carried along through
    cropping and spatial augmentation) becomes one-hot input channels after the image's; with probability
    ``corruption`` they are perturbed (``corrupt_prior``)."""

    def __init__(self, num_classes: int, corruption: float, absent: float = 0.0):
        MapTransform.__init__(self, keys=["label"])
        RandomizableTransform.__init__(self, prob=corruption)
        self.num_classes, self.absent = num_classes, absent

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        label = d["label"]
        prior = prior_channels(torch.as_tensor(label[1:2]).round(), self.num_classes)
        if self._do_transform:
            prior = corrupt_prior(prior, self.R)
        d["label"] = label[:1]
        d["image"] = torch.cat([d["image"], (prior + self.absent).to(d["image"].dtype)], dim=0)
        return d


class PriorToImaged(MapTransform):
    """Validation: the ``prior`` key (on the image's grid) becomes one-hot input channels after the image's."""

    def __init__(self, num_classes: int, absent: float = 0.0):
        super().__init__(keys=["prior"])
        self.num_classes, self.absent = num_classes, absent

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        prior = prior_channels(torch.as_tensor(d.pop("prior")), self.num_classes, self.absent)
        d["image"] = torch.cat([d["image"], prior.to(d["image"].dtype)], dim=0)
        return d


def prior_deterministic(cfg: PreprocessingConfig, image_keys: list[str]) -> Compose:
    """``medseg.transforms.presets.deterministic_transforms`` with a ``prior`` key (a label map on the image's
    grid) taken along as labels are: oriented, resampled by nearest neighbour, cropped with the image; the intensity
    normalisation is the image's alone."""
    keys = ["image", "label", "prior"]
    steps = [
        LoadImaged(keys=[*image_keys, "label", "prior"], reader=VolumeReader(), image_only=True),
        EnsureChannelFirstd(keys=[*image_keys, "label", "prior"]),
        RefuseNonFinited(keys=image_keys),
    ]
    if len(image_keys) > 1:
        steps += [
            ConcatItemsd(keys=image_keys, name="image"),
            DeleteItemsd(keys=[k for k in image_keys if k != "image"]),
        ]
    steps += [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ResampleToSpacingd(keys=keys, spacing=cfg.spacing, modes=["trilinear", "nearest", "nearest"]),
        CropForegroundd(
            keys=keys,
            source_key="image",
            select_fn=get_scheme(cfg.intensity).foreground(dataclasses.asdict(cfg)),
            margin=cfg.crop_margin,
            allow_smaller=True,
        ),
        NormalizeIntensityByPresetd(keys="image", preprocessing=vars(cfg)),
        EnsureTyped(keys=keys, track_meta=False),
    ]
    return Compose(steps)


class PriorInputs:
    """Stage 2's extra inputs for ``medseg.training.trainer.Trainer(inputs=...)``: each case's prior (a label map
    file on the case's grid, by case id), one input channel per structure."""

    def __init__(self, priors: Mapping[str, str], num_classes: int, corruption: float):
        self.priors, self.num_classes, self.corruption = dict(priors), int(num_classes), float(corruption)

    @property
    def channels(self) -> int:
        return self.num_classes - 1

    def records(self, recs: list[dict]) -> list[dict]:
        missing = [str(r["case_id"]) for r in recs if str(r["case_id"]) not in self.priors]
        if missing:
            raise InputError(f"no stage-1 prediction for {len(missing)} case(s); rerun the cascade without --resume")
        return [{**r, "prior": self.priors[str(r["case_id"])]} for r in recs]

    def transforms(self, config: Config, image_cols: list[str], table: LabelTable, pad: float):
        """(training, validation) transforms: see the module's docstring. ``pad``, the intensity floor (what patches
        and windows are padded with), is the prior's "absent" value (``prior_channels``)."""
        det = list(prior_deterministic(config.preprocessing, image_cols).transforms)
        carry = [ConcatItemsd(keys=["label", "prior"], name="label"), DeleteItemsd(keys=["prior"])]
        rand = list(random_transforms(config.training, table.num_classes, pad_value=pad).transforms)
        train = Compose(det + carry + rand + [PriorFromLabeld(self.num_classes, self.corruption, absent=pad)])
        return train, Compose(det + [PriorToImaged(self.num_classes, absent=pad)])


# --- the two stages ------------------------------------------------------------------------------------------------


def stage_configs(config: Config, stage2_minutes: float | None = None) -> tuple[Config, Config]:
    """(stage 1's config, stage 2's): plain configs (no ``cascade``) with each stage's spacing, patch and minutes
    (stage 2's ``stage2_minutes``, what is left of the budget once stage 1 and its predictions ran)."""
    c = config.cascade
    if c is None:
        raise ConfigError("not a cascade config (no 'cascade' section)")
    s1, s2 = copy.deepcopy(config), copy.deepcopy(config)
    s1.cascade = s2.cascade = None
    s1.preprocessing.spacing = c.stage1_spacing(config.preprocessing.spacing)
    if c.lowres_patch_size:
        s1.training.patch_size = [int(v) for v in c.lowres_patch_size]
        s1.inference.roi_size = [int(v) for v in c.lowres_patch_size]
    if config.training.max_minutes > 0:
        s1.training.max_minutes = config.training.max_minutes * c.lowres_share
        s2.training.max_minutes = float(stage2_minutes if stage2_minutes is not None else 0.0)
    return s1, s2


def predict_priors(checkpoint: Path, manifest, out: Path, *, seed: int, fold, device, resume: bool) -> dict:
    """Stage 1's labels for every training and validation case, on its grid, as ``OUT/prior_NNNNN.nii.gz`` (numbered:
    no case id in a file name); returns ``{case_id: path}`` (also in ``OUT/priors.json``)."""
    index_path = out / "priors.json"
    if resume and index_path.is_file():
        done = json.loads(index_path.read_text())
        if all(Path(p).is_file() for p in done.values()):
            return done
    df = read_manifest(manifest, require_labels=True)
    cols = image_columns(df)
    train_df, val_df = split_cases(df, seed, fold)
    predictor = CheckpointPredictor.from_checkpoint(checkpoint, device=device)
    priors = {}
    for i, row in enumerate(list(train_df.itertuples()) + list(val_df.itertuples())):
        channels = [getattr(row, c) for c in cols]
        labels = predictor.predict(channels if len(channels) > 1 else channels[0])
        priors[str(row.case_id)] = str(write_label_map(labels, out / f"prior_{i:05d}.nii.gz"))
    write_json(index_path, priors)
    return priors


def _stage_record(out: Path, stage: str) -> dict:
    info = json.loads((out / stage / "run.json").read_text())
    keys = ("best_epoch", "best_val_mean_dice", "best_val_dice", "epochs_run", "iterations", "elapsed_s", "budget_s")
    return {"dir": stage, **{k: info.get(k) for k in keys}}


def write_cascade_checkpoint(out: Path, config: Config, image_channels: int, stages: dict) -> Path:
    """``OUT/best.pt``: stage 2's best checkpoint with the marker first, the cascade config, and stage 1 whole."""
    s1 = torch.load(out / "stage1" / "best.pt", map_location="cpu", weights_only=True)
    s2 = torch.load(out / "stage2" / "best.pt", map_location="cpu", weights_only=True)
    payload = {MARKER: FORMAT_VERSION, **s2, "config": config.to_dict()}
    payload["cascade"] = {
        "stage1": s1,
        "image_channels": int(image_channels),
        "prior_channels": int(s2["model"]["in_channels"]) - int(image_channels),
        "stages": stages,
    }
    with atomic_path(out / "best.pt") as tmp:
        torch.save(payload, tmp)
    return out / "best.pt"


def _stage2_minutes(config: Config, spent_s: float) -> float:
    """What is left of ``training.max_minutes`` after ``spent_s`` (at least ``MIN_STAGE2_SHARE`` of it, logged)."""
    budget = config.training.max_minutes
    left = budget - spent_s / 60.0
    if left < MIN_STAGE2_SHARE * budget:
        log.warning(
            "cascade: stage 1 and its predictions took %.0f s of the %.0f s budget; stage 2 gets %.0f s (%d%% of it: "
            "the budget will be exceeded by %.0f s)",
            spent_s,
            budget * 60,
            MIN_STAGE2_SHARE * budget * 60,
            round(100 * MIN_STAGE2_SHARE),
            (MIN_STAGE2_SHARE * budget - left) * 60,
        )
        return MIN_STAGE2_SHARE * budget
    return left


def _cascade_state(out: Path, config: Config, resume: bool) -> dict:
    """``OUT/cascade.json`` of a resumed run (refused for another config), or a new one (refused over a run)."""
    path = out / "cascade.json"
    if not resume:
        if path.is_file() or (out / "stage1" / "state.pt").exists():
            raise ConfigError(
                f"{out} already holds a cascade training run; pass --resume to continue it or choose another --out"
            )
        return {"config": config.to_dict()}
    state = json.loads(path.read_text()) if path.is_file() else {"config": config.to_dict()}
    if state.get("config") != config.to_dict():
        raise ConfigError(f"{out} was trained with another config; resume with the same config or use a new --out")
    return state


def train_cascade(train: Callable, *, config: Config, manifest, out_dir, label_table: LabelTable, **train_args):
    """Train both stages in ``out_dir`` within ``config.training.max_minutes`` (see the module's docstring).

    ``train`` is ``medseg.training.trainer.train`` (passed in: the trainer imports this module); ``train_args`` are
    its other keywords (``progress``, ``device``, ``resume``, ``fold``, ``nproc``). Returns stage 2's
    ``TrainResult`` with ``run_dir`` ``out_dir`` and ``best_checkpoint`` ``out_dir/best.pt`` (both stages)."""
    t0 = time.monotonic()
    out, resume = Path(out_dir), bool(train_args.get("resume"))
    out.mkdir(parents=True, exist_ok=True)
    state = _cascade_state(out, config, resume)
    budgeted = config.training.max_minutes > 0
    s1_cfg, _ = stage_configs(config)
    args = dict(manifest=manifest, label_table=label_table, **train_args)
    if "stage1" not in state:
        log.info("cascade stage 1 at %s mm", s1_cfg.preprocessing.spacing)
        train(config=s1_cfg, out_dir=out / "stage1", **{**args, "resume": (out / "stage1" / "state.pt").exists()})
        state["stage1"] = {**_stage_record(out, "stage1"), "spacing": s1_cfg.preprocessing.spacing}
        state["stage1_wall_s"] = round(max(time.monotonic() - t0, state["stage1"]["elapsed_s"] or 0.0), 1)
        write_json(out / "cascade.json", state)
    t1 = time.monotonic()
    priors = predict_priors(
        out / "stage1" / "best.pt",
        manifest,
        out / "priors",
        seed=config.training.seed,
        fold=train_args.get("fold"),
        device=train_args.get("device"),
        resume=resume,
    )
    if "stage2_minutes" not in state:
        state["priors_s"] = round(time.monotonic() - t1, 1)
        spent = state["stage1_wall_s"] + state["priors_s"]
        state["stage2_minutes"] = round(_stage2_minutes(config, spent), 3) if budgeted else None
        write_json(out / "cascade.json", state)
    _, s2_cfg = stage_configs(config, state["stage2_minutes"])
    log.info("cascade stage 2 at %s mm, stage 1's prediction as input", s2_cfg.preprocessing.spacing)
    inputs = PriorInputs(priors, label_table.num_classes, config.cascade.prior_corruption if config.cascade else 0.0)
    result = train(
        config=s2_cfg,
        out_dir=out / "stage2",
        inputs=inputs,
        **{**args, "resume": resume and (out / "stage2" / "state.pt").exists()},
    )
    return _finish(out, config, state, result, manifest, t0)


def _finish(out: Path, config: Config, state: dict, result, manifest, t0: float):
    """The cascade checkpoint, ``cascade.json`` and ``run.json`` with both stages; the run's ``TrainResult``."""
    state["stage2"] = {**_stage_record(out, "stage2"), "spacing": list(config.preprocessing.spacing)}
    stages = {"stage1": state["stage1"], "stage2": state["stage2"]}
    n_image = len(json.loads((out / "stage2" / "run.json").read_text())["image_channels"])
    ckpt = write_cascade_checkpoint(out, config, n_image, stages)
    seconds = time.monotonic() - t0
    state["wall_s_this_process"] = round(seconds, 1)
    write_json(out / "cascade.json", state)
    write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    budget = config.training.max_minutes * 60 if config.training.max_minutes > 0 else math.nan
    write_json(
        out / "run.json",
        {
            "command": "train",
            "cascade": True,
            "manifest": str(manifest),
            "checkpoint": ckpt.name,
            "stages": stages,
            "stage2_minutes": state.get("stage2_minutes"),
            "priors_s": state.get("priors_s"),
            "best_epoch": result.best_epoch,
            "best_val_mean_dice": result.best_mean_dice,
            "best_val_dice": result.per_structure_dice,
            "budget_s": None if math.isnan(budget) else budget,
        },
    )
    return dataclasses.replace(result, run_dir=out, best_checkpoint=ckpt, seconds=seconds)
