"""The training loop: cached MONAI pipelines, Dice+CE, validation Dice per structure, resume.

A run directory holds ``config.yaml`` (resolved), ``run.json`` (versions,
manifest hash, cases, result), ``metrics.csv`` (one row per epoch),
``training_curve.png``, ``best.pt`` (best validation mean Dice), ``last.pt``
and ``state.pt`` (optimizer, iterations, elapsed time and history, for ``--resume``).

Schedules. An epoch is ``training.iterations_per_epoch`` optimizer steps
(nnU-Net's 250 by default), whatever the number of cases: a 2-case data set
trains as long as a 200-case one. Without a budget, ``training.epochs`` epochs
run, the learning rate follows poly (power 0.9) or cosine on the fraction of
the planned iterations done, and validation runs every ``val_every`` epochs.
With ``training.max_minutes`` the budget rules instead (``epochs`` is not
used): the learning rate follows the fraction of the budget spent, validation
runs at each ``val_interval`` fraction of the budget, or less often when
validating would take more than ~1/5 of the time (an epoch ends early when
one is due, so long epochs on a slow machine keep the cadence) and at the end,
and the last epoch stops early (its row records the
iterations it did) when the next step would leave too little time for the
final validation, checkpoints and curve, whose time is measured at each
validation. ``metrics.csv`` records the cumulative iterations and elapsed
seconds per epoch; ``state.pt`` records them too, so a resumed budget run
continues its schedule from the time it had spent.

Every epoch reseeds all random number generators from ``seed + epoch``, so a
run (without a budget) resumed after a kill repeats exactly the epochs an
uninterrupted run would have done.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import Config
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.labels import LabelTable

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_mean_dice: float
    per_structure_dice: dict
    epochs_run: int
    seconds: float


def split_cases(df, seed: int, fold: int | None = None):
    """Training and validation cases: ``fold`` column, else split=val, else a seeded 20% of train."""
    train = df[df["split"] == "train"]
    if fold is not None:
        if "fold" not in df.columns:
            raise InputError("--fold given but the manifest has no 'fold' column (medseg manifest from-folder --folds K writes one)")
        in_fold = train["fold"].astype(str) == str(fold)
        if not in_fold.any():
            raise InputError(f"no training case has fold {fold}; folds present: {sorted(set(train['fold']))}")
        return train[~in_fold], train[in_fold]
    val = df[df["split"] == "val"]
    if len(val) == 0:
        if len(train) < 2:
            raise InputError("need at least 2 cases with split=train (or a split=val case) to validate")
        rng = np.random.default_rng(seed)
        n_val = max(1, round(0.2 * len(train)))
        pick = set(rng.choice(train["case_id"].to_numpy(), size=n_val, replace=False))
        val = train[train["case_id"].isin(pick)]
        train = train[~train["case_id"].isin(pick)]
        shown = ", ".join(map(str, val["case_id"].tolist()[:10])) + (" ..." if len(val) > 10 else "")
        log.warning("no split=val rows: validating on %d case(s) drawn from the training rows (seed %d): %s; mark rows "
                    "split=val to choose them", len(val), seed, shown)
    if len(train) == 0:
        raise InputError("no training cases (split=train) in the manifest")
    return train, val


def _cache(dataset_class, records: list[dict], transform, progress: bool):
    """A ``CacheDataset`` of ``records``; medseg's input errors raised inside its transforms come out as themselves
    (one line naming the file), not wrapped in MONAI's "applying transform" RuntimeError."""
    try:
        return dataset_class(records, transform, progress=progress, num_workers=0)
    except RuntimeError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, MedsegError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def _records(df, image_cols: list[str]) -> list[dict]:
    return [{**{c: getattr(r, c) for c in image_cols}, "label": r.label, "case_id": r.case_id} for r in df.itertuples()]


def _reseed(seed: int, epoch: int, transform, generator) -> None:
    from monai.utils import set_determinism

    set_determinism(seed=seed + epoch)
    transform.set_random_state(seed=seed + epoch)
    generator.manual_seed(seed + epoch)


def train(
    *,
    config: Config,
    manifest: str | Path,
    out_dir: str | Path,
    label_table: LabelTable | None = None,
    progress: bool = True,
    device=None,
    resume: bool = False,
    fold: int | None = None,
    nproc: int = 1,
    _rank: int = 0,
) -> TrainResult:
    """Train; with ``nproc > 1``, as that many DistributedDataParallel processes (gloo on CPU, NCCL on GPUs)."""
    from medseg.training.losses import check_loss_name

    check_loss_name(config.training.loss)  # before any work, in every process
    if nproc > 1 and _rank == 0 and not _distributed_ready():
        return _spawn(nproc, config=config, manifest=manifest, out_dir=out_dir, label_table=label_table, progress=progress,
                      device=device, resume=resume, fold=fold)
    import pandas as pd
    import torch
    import torch.distributed as dist
    import yaml
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import Compose

    from medseg.data.manifest import image_columns, manifest_sha256, read_manifest
    from medseg.inference.channels_last import channels_last_training
    from medseg.inference.sliding_window import default_device, to_layout
    from medseg.io.atomic import atomic_path, write_csv, write_json, write_text
    from medseg.models import create_volume_model
    from medseg.models.checkpoint import save_checkpoint, versions
    from medseg.precision import autocast_dtype
    from medseg.progress import progress_bar as tqdm
    from medseg.training.curves import plot_training_curve
    from medseg.training.losses import build_loss, full_resolution, segmentation_loss  # deep-supervision lists, weighted per scale
    from medseg.training.validation import validate
    from medseg.transforms.intensity import floor_value
    from medseg.transforms.presets import deterministic_transforms, random_transforms

    t0 = time.monotonic()
    tc = config.training
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    main = rank == 0
    progress = progress and main
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = label_table or config.label_table()
    device = torch.device(device) if device else default_device()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())

    state = _load_state(out, config) if resume else None
    if not resume and (out / "state.pt").exists() and main:
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")

    df = read_manifest(manifest, require_labels=True, label_table=table)
    if main:
        _say_if_the_data_names_otherwise(manifest, df, table)
    image_cols = image_columns(df)
    train_df, val_df = split_cases(df, tc.seed, fold)
    if main:
        write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    run_info = {
        "command": "train", "versions": versions(), "manifest": str(manifest), "manifest_sha256": manifest_sha256(manifest),
        "fold": fold, "train_cases": list(train_df["case_id"]), "val_cases": list(val_df["case_id"]),
        "labels": table.to_dict(), "device": str(device), "image_channels": image_cols, "processes": world,
    }
    if main:
        write_json(out / "run.json", run_info)

    det = deterministic_transforms(config.preprocessing, image_cols)
    pad = floor_value(vars(config.preprocessing)) or 0.0
    train_tf = Compose(list(det.transforms) + list(random_transforms(tc, table.num_classes, pad_value=pad).transforms))
    train_ds = _cache(CacheDataset, _records(train_df, image_cols), train_tf, progress)
    val_ds = _cache(CacheDataset, _records(val_df, image_cols), det, progress)
    generator = torch.Generator()
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed)
    loader = DataLoader(train_ds, batch_size=tc.batch_size, shuffle=sampler is None, sampler=sampler, num_workers=tc.num_workers,
                        collate_fn=list_data_collate, generator=generator)

    from monai.utils import set_determinism

    set_determinism(seed=tc.seed)  # the initial weights
    model = create_volume_model(config.model.name, spatial_dims=config.model.spatial_dims, in_channels=len(image_cols),
                                out_channels=table.num_classes, **config.model.kwargs).to(device)
    amp_dtype = autocast_dtype(tc.amp, device, training=True)
    # CPU, batch 1, bf16: channels-last with layout-keeping instance norms (no copies around every norm)
    cl = channels_last_training(model, device=device, batch_size=tc.batch_size, amp_dtype=amp_dtype, world=world)
    net = model  # the plain module: validated and saved
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = build_loss(tc.loss)  # training.loss: a name in medseg.training.losses.LOSSES
    if tc.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=tc.learning_rate, momentum=0.99, nesterov=True, weight_decay=tc.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    ipe = tc.iterations_per_epoch
    budget_s = tc.max_minutes * 60 if tc.max_minutes and tc.max_minutes > 0 else math.inf
    budgeted = math.isfinite(budget_s)
    total_steps = tc.epochs * ipe
    adversary = None
    if tc.adversarial_weight > 0:
        from medseg.training.adversarial import AdversarialTerm

        adversary = AdversarialTerm(in_channels=len(image_cols), num_classes=table.num_classes, weight=tc.adversarial_weight,
                                    lr=tc.adversarial_lr, device=device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    history, best, start, iteration, elapsed0 = [], (-1.0, 0, {}), 1, 0, 0.0
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = list(state["history"]), int(state["epoch"]) + 1
        iteration, elapsed0 = int(state.get("iteration", 0)), float(state.get("elapsed_s", 0.0))
        best = (float(state["best"][0]), int(state["best"][1]), dict(state["best"][2]))
        log.warning("resuming %s after epoch %d (%d iterations, %.0f s)", out, start - 1, iteration, elapsed0)

    def elapsed() -> float:  # seconds counted against the budget, across resumes
        return elapsed0 + time.monotonic() - t0

    extra = {"manifest_sha256": run_info["manifest_sha256"], "train_cases": run_info["train_cases"], "fold": fold}
    if main:  # what the inputs looked like: predictions on inputs far from it are flagged (medseg.reporting.quality)
        profile = _input_profile(train_df, image_cols, table, str(vars(config.preprocessing).get("intensity", "")))
        if profile:
            extra["input_profile"] = profile
    if budgeted and main:
        log.info("budget %.1f min: epochs of %d iterations until it is spent (training.epochs is not used)", tc.max_minutes, ipe)
    bar = tqdm(total=None if budgeted else max(0, total_steps - iteration), desc="train", unit="step", disable=not progress)
    plotted, step_s, reserve_s, measured = 0, None, 1.0, None  # seconds per step; time kept for the final validation, checkpoints and the curve
    next_val = (math.floor(elapsed() / (tc.val_interval * budget_s)) + 1) * tc.val_interval * budget_s if budgeted else math.inf
    epoch = start - 1
    done = not budgeted and start > tc.epochs or budgeted and elapsed() + reserve_s >= budget_s and start > 1
    while not done:
        epoch += 1
        _reseed(tc.seed + rank * 100003, epoch, train_tf, generator)
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t_epoch, losses, batches, out_of_time = time.monotonic(), [], iter(loader), False
        for _ in range(ipe):
            # the schedule: poly/cosine on the spent fraction of the budget, or of the planned iterations
            spent = elapsed() / budget_s if budgeted else iteration / total_steps
            stop = budgeted and elapsed() + reserve_s + (step_s or 0.0) > budget_s
            spent, stop = _agree_step(spent, stop, world)
            if stop and losses:
                out_of_time = True
                break
            if losses and _agree_step(0.0, budgeted and elapsed() >= next_val, world)[1]:
                break  # a budget run's epoch ends early when a validation is due (long epochs on a slow machine)
            for g in opt.param_groups:
                g["lr"] = tc.learning_rate * _lr_factor(spent, tc.schedule)
            try:
                batch = next(batches)
            except StopIteration:  # a small data set: another pass in the same epoch
                batches = iter(loader)
                batch = next(batches)
            t_step = time.monotonic()
            x, y = to_layout(batch["image"].to(device), cl), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(x)
                outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
                logits = full_resolution(outputs)  # the adversarial term's input
                loss = segmentation_loss(loss_fn, outputs, y)
                if adversary is not None:
                    loss = loss + adversary.generator_loss(x, logits)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if adversary is not None:
                adversary.discriminator_step(x, logits, y)
            losses.append(loss.detach().item())
            iteration += 1
            dt = time.monotonic() - t_step
            step_s = dt if step_s is None else 0.9 * step_s + 0.1 * dt
            bar.update(1)
            budget_left = {"elapsed": f"{elapsed():.0f}s", "left": f"{max(budget_s - elapsed(), 0):.0f}s"} if budgeted else {}
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", best_dice=f"{max(best[0], 0):.3f}", **budget_left)
        if budgeted and not out_of_time:
            out_of_time = _agree_step(0.0, elapsed() + reserve_s + (step_s or 0.0) * 0.5 > budget_s, world)[1]
        last = out_of_time if budgeted else epoch >= tc.epochs
        row = {"epoch": epoch, "iterations": iteration, "elapsed_s": round(elapsed(), 3), "loss": float(np.mean(losses)),
               "lr": opt.param_groups[0]["lr"], "epoch_seconds": time.monotonic() - t_epoch}
        due = elapsed() >= next_val if budgeted else epoch % tc.val_every == 0
        t_val = time.monotonic()
        if (due or last) and main:
            dice = validate(net, val_ds, config.inference, table, device, floor=pad)
            mean = float(np.nanmean(list(dice.values())))
            row.update({"val_mean_dice": mean, **{f"val_dice_{k}": v for k, v in dice.items()}})
            ckpt_extra = {**extra, "epoch": epoch, "val_dice": dice}
            if mean > best[0]:
                best = (mean, epoch, dice)
                save_checkpoint(out / "best.pt", net, config=config, label_table=table, extra=ckpt_extra, in_channels=len(image_cols))
            save_checkpoint(out / "last.pt", net, config=config, label_table=table, extra=ckpt_extra, in_channels=len(image_cols))
        history.append(row)
        if world > 1:
            dist.barrier()  # the others wait while the main process validates
        if main:
            write_csv(out / "metrics.csv", pd.DataFrame(history))
            with atomic_path(out / "state.pt") as tmp:  # everything --resume needs, after every epoch
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "iteration": iteration,
                            "elapsed_s": elapsed(), "history": history, "best": [best[0], best[1], best[2]],
                            "config": config.to_dict()}, tmp)
            if due or last:  # the curve as training goes (and its time counts in the end's reserve)
                plot_training_curve(pd.DataFrame(history), out / "training_curve.png")
                plotted = len(history)
        if due or last:  # validation + checkpoints + state: what the end of the run needs (with a margin)
            took = time.monotonic() - t_val
            reserve_s = 1.25 * took + 0.5 if measured is None else 0.5 * reserve_s + 0.5 * (1.25 * took + 0.5)
            measured = took
            if budgeted:  # the next mark of the cadence, and validation at most ~1/5 of the time (slow or shared machines)
                next_val = max((math.floor(elapsed() / (tc.val_interval * budget_s)) + 1) * tc.val_interval * budget_s, elapsed() + 4 * took)
        if last:
            if out_of_time and main:
                log.info("stopping after epoch %d (%d iterations): the %.1f-minute budget is spent, as planned", epoch, iteration,
                         tc.max_minutes)
            done = True
    bar.close()
    if not main:
        return None  # type: ignore[return-value]
    if history and plotted != len(history):
        plot_training_curve(pd.DataFrame(history), out / "training_curve.png")

    seconds = time.monotonic() - t0
    if best[0] < 0:
        raise InputError(f"{out}: no validation ran (the run was already complete?); nothing to report")
    result = TrainResult(out, out / "best.pt", best[1], best[0], best[2], epoch, seconds)
    run_info.update({"best_epoch": best[1], "best_val_mean_dice": best[0], "best_val_dice": best[2], "epochs_run": epoch,
                     "iterations": iteration, "seconds": round(seconds, 1), "elapsed_s": round(elapsed(), 1),
                     "budget_s": tc.max_minutes * 60 if budgeted else None,
                     "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "channels_last": cl})
    write_json(out / "run.json", run_info)
    return result


#: Training cases read for the checkpoint's input profile (the first ones of the manifest: deterministic).
PROFILE_CASES = 24


def _input_profile(df, image_cols: list[str], table, intensity: str) -> dict | None:
    """``medseg.reporting.quality.training_profile`` of the first training cases; None (logged) when it fails:
    the profile serves the quality verdicts and never stops a training run."""
    from medseg.io.readers import read_volume
    from medseg.reporting.quality import training_profile

    rows = df.head(PROFILE_CASES)

    def cases():
        for _, row in rows.iterrows():
            label = row.get("label")
            yield read_volume(row[image_cols[0]]), read_volume(label) if isinstance(label, str) and label else None

    t = time.monotonic()
    try:
        profile = training_profile(cases(), table, modality="CT" if intensity.startswith("ct") else "MR")
    except Exception as exc:  # noqa: BLE001 (a bad case is the data checks' to report; the profile is optional)
        log.warning("no input profile in the checkpoint (%s: %s); quality verdicts will not compare inputs with the "
                    "training data", type(exc).__name__, exc)
        return None
    log.info("input profile of %d training case(s) in %.1f s", len(rows), time.monotonic() - t)
    return profile


def _say_if_the_data_names_otherwise(manifest, df, table) -> None:
    """A warning when the data set carries a label table (from-folder's, dataset.json, labels.csv...) that names its
    values otherwise than the config: a config planned on another data set would put that set's names on this one's
    structures. (``medseg plan --labels`` chooses another table on purpose; the warning then says what it replaced.)"""
    from medseg.data.label_sources import table_for_manifest

    found = table_for_manifest(manifest, df, fallback=False)
    if found is not None and not found.table.same_structures(table):
        log.warning("the config's label table (%s) is not the data set's (%s, from %s); outputs will use the config's names. "
                    "Run `medseg plan` on this manifest for a config with the data's table", ", ".join(table.names),
                    ", ".join(found.table.names), found.source)


def _lr_factor(spent: float, schedule: str) -> float:
    """The learning rate's multiplier at ``spent`` (0..1) of the run: poly (power 0.9, nnU-Net) or cosine."""
    spent = min(max(float(spent), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * spent))
    return (1.0 - spent) ** 0.9


def _agree_step(spent: float, stop: bool, world: int) -> tuple[float, bool]:
    """The main process's schedule position and stop decision, shared with every process (same LR, same stop)."""
    if world == 1:
        return spent, stop
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(spent), 1.0 if stop else 0.0], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t[0].item()), bool(t[1].item())


def _load_state(out: Path, config: Config) -> dict | None:
    import torch

    path = out / "state.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config") != config.to_dict():
        raise ConfigError(f"{out} was trained with another config; resume with the same config (see {out / 'config.yaml'}) or use a new --out")
    return state


def _distributed_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, kwargs: dict) -> None:
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() and kwargs.get("device") in (None, "cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nproc)
    try:
        train(**kwargs, _rank=rank)
    finally:
        dist.destroy_process_group()


def _spawn(nproc: int, **kwargs) -> TrainResult:
    """Run ``train`` in ``nproc`` processes; the result is read back from the run directory."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(nproc, _free_port(), kwargs), nprocs=nproc, join=True)
    out = Path(kwargs["out_dir"])
    info = json.loads((out / "run.json").read_text())
    return TrainResult(out, out / "best.pt", info["best_epoch"], info["best_val_mean_dice"], info["best_val_dice"],
                       info["epochs_run"], info["seconds"])
