"""The training run: a ``Trainer`` with named hooks, ``train`` (one or several processes) and ``train_from_files``.

A run directory holds ``config.yaml`` (resolved), ``run.json`` (versions,
manifest hash, cases, result), ``metrics.csv`` (one row per epoch),
``training_curve.png``, ``best.pt`` (best validation mean Dice), ``last.pt``
and ``state.pt`` (optimizer, iterations, elapsed time and history, for ``--resume``).

``Trainer.run`` is a short sequence of named hooks (as nnU-Net's ``nnUNetTrainer.run_training``)::

    on_train_start()      the run folder, the cases, data loaders, network, optimizer, the resumed state
    while not done:
        on_epoch_start()  reseed, the sampler's epoch
        train_epoch()     train_step() per optimizer step, until the epoch, the budget or a due validation ends it
        on_epoch_end()    validate() + save_checkpoint() when due, save_state() (metrics.csv, state.pt, the curve)
    on_train_end()        the curve, run.json's result -> TrainResult

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
validation (``medseg.training.schedule.Clock``). ``metrics.csv`` records the cumulative iterations and elapsed
seconds per epoch; ``state.pt`` records them too, so a resumed budget run
continues its schedule from the time it had spent.

Every epoch reseeds all random number generators from ``seed + epoch``, so a
run (without a budget) resumed after a kill repeats exactly the epochs an
uninterrupted run would have done.

``train_from_files`` is the front door from files (a config YAML with overrides, a manifest, a run folder):
``medseg.api.train`` and the pipeline runner call it.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.transforms import Compose
from monai.utils import set_determinism
from torch.utils.data.distributed import DistributedSampler

from medseg.command_log import command_log
from medseg.config import Config, load_config
from medseg.data.manifest import image_columns, manifest_sha256, read_manifest
from medseg.errors import ConfigError, InputError
from medseg.inference.channels_last import channels_last_training
from medseg.inference.sliding_window import default_device, to_layout
from medseg.io.atomic import atomic_path, ensure_dir, write_csv, write_json, write_text
from medseg.labels import LabelTable
from medseg.models import checkpoint, create_volume_model
from medseg.precision import autocast_dtype
from medseg.progress import progress_bar
from medseg.training.adversarial import AdversarialTerm
from medseg.training.cascade import train_cascade
from medseg.training.cases import cached_dataset, input_profile, records, say_if_the_data_names_otherwise, split_cases
from medseg.training.curves import plot_training_curve
from medseg.training.losses import build_loss, check_loss_name, full_resolution, segmentation_loss
from medseg.training.schedule import Clock, agree_step, lr_factor
from medseg.training.validation import validate as validation_dice
from medseg.transforms.intensity import check_preprocessing, floor_value
from medseg.transforms.presets import deterministic_transforms, random_transforms

log = logging.getLogger("medseg.training.loop")  # the name train.log has always shown for these lines


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_mean_dice: float
    per_structure_dice: dict
    epochs_run: int
    seconds: float


@dataclass
class Best:
    """The best validation so far: its mean Dice over the structures (-1: none yet), epoch and Dice per structure."""

    mean_dice: float = -1.0
    epoch: int = 0
    dice: dict = field(default_factory=dict)

    @classmethod
    def from_state(cls, saved) -> Best:
        """``state.pt`` keeps it as ``[mean_dice, epoch, dice]``."""
        return cls(float(saved[0]), int(saved[1]), dict(saved[2]))

    def to_state(self) -> list:
        return [self.mean_dice, self.epoch, self.dice]


def _reseed(seed: int, epoch: int, transform, generator) -> None:
    set_determinism(seed=seed + epoch)
    transform.set_random_state(seed=seed + epoch)
    generator.manual_seed(seed + epoch)


def _load_state(out: Path, config: Config) -> dict | None:
    path = out / "state.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config") != config.to_dict():
        raise ConfigError(
            f"{out} was trained with another config; resume with the same config (see {out / 'config.yaml'}) or use a "
            "new --out"
        )
    return state


class Trainer:
    """One training run in ``out_dir`` (one process of it under DistributedDataParallel): ``Trainer(...).run()``.

    The hooks run in the order ``run`` shows; each reads and sets the attributes the earlier ones set
    (``net`` is the plain module, validated and saved; ``model`` the one trained, DDP-wrapped in several processes).
    """

    def __init__(
        self,
        *,
        config: Config,
        manifest: str | Path,
        out_dir: str | Path,
        label_table: LabelTable | None = None,
        progress: bool = True,
        device=None,
        resume: bool = False,
        fold: int | None = None,
        inputs=None,
    ):
        self.config, self.tc = config, config.training
        self.inputs = inputs  # per-case inputs beyond the images (a cascade's prior: training.cascade.PriorInputs)
        self.manifest, self.out = manifest, Path(out_dir)
        self.label_table, self.device_arg, self.resume, self.fold = label_table, device, resume, fold
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.history: list[dict] = []
        self.best = Best()
        self.start, self.iteration, self.plotted, self.done = 1, 0, 0, False

    @property
    def total_steps(self) -> int:
        return self.tc.epochs * self.tc.iterations_per_epoch

    def run(self) -> TrainResult | None:
        """Train; the result in the main process, None in the others."""
        self.on_train_start()
        while not self.done:
            self.on_epoch_start()
            self.train_epoch()
            self.on_epoch_end()
        return self.on_train_end()

    # --- on_train_start ---------------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self.t0 = time.monotonic()
        self._open_run_dir()
        self._read_cases()
        self._build_data()
        self._build_network()
        self._restore()
        self._prepare_epochs()

    def _open_run_dir(self) -> None:
        """The run folder, the label table, the device, and ``state.pt`` when resuming (refused when not asked to)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.table = self.label_table or self.config.label_table()
        device = torch.device(self.device_arg) if self.device_arg else default_device()
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.rank % torch.cuda.device_count())
        self.device = device
        self.state = _load_state(self.out, self.config) if self.resume else None
        if not self.resume and (self.out / "state.pt").exists() and self.main:
            raise ConfigError(
                f"{self.out} already holds a training run; pass --resume to continue it or choose another --out"
            )

    def _read_cases(self) -> None:
        """The manifest's training and validation cases; ``config.yaml`` and the first ``run.json``."""
        manifest, out = self.manifest, self.out
        df = read_manifest(manifest, require_labels=True, label_table=self.table)
        if self.main:
            say_if_the_data_names_otherwise(manifest, df, self.table)
        self.image_cols = image_columns(df)
        self.train_df, self.val_df = split_cases(df, self.tc.seed, self.fold)
        if self.main:
            write_text(out / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        self.run_info = {
            "command": "train",
            "versions": checkpoint.versions(),
            "manifest": str(manifest),
            "manifest_sha256": manifest_sha256(manifest),
            "fold": self.fold,
            "train_cases": list(self.train_df["case_id"]),
            "val_cases": list(self.val_df["case_id"]),
            "labels": self.table.to_dict(),
            "device": str(self.device),
            "image_channels": self.image_cols,
            "processes": self.world,
        }
        if self.main:
            write_json(out / "run.json", self.run_info)

    @property
    def in_channels(self) -> int:
        """The network's input channels: the manifest's image channels (+ ``inputs.channels``: a cascade's prior)."""
        return len(self.image_cols) + (self.inputs.channels if self.inputs is not None else 0)

    def case_records(self, df) -> list[dict]:
        """The data records of the manifest rows ``df`` (``inputs`` adds its own keys)."""
        recs = records(df, self.image_cols)
        return self.inputs.records(recs) if self.inputs is not None else recs

    def data_transforms(self) -> tuple[Compose, Compose]:
        """(training transform, validation transform): deterministic (+ random for training) steps; ``inputs``'
        own when given."""
        if self.inputs is not None:
            return self.inputs.transforms(self.config, self.image_cols, self.table, self.pad)
        det = deterministic_transforms(self.config.preprocessing, self.image_cols)
        rand = random_transforms(self.tc, self.table.num_classes, pad_value=self.pad)
        return Compose(list(det.transforms) + list(rand.transforms)), det

    def _build_data(self) -> None:
        """Cached training (deterministic + random transforms) and validation data sets, the training loader."""
        tc = self.tc
        self.pad = floor_value(vars(self.config.preprocessing)) or 0.0
        self.train_tf, det = self.data_transforms()
        self.train_ds = cached_dataset(CacheDataset, self.case_records(self.train_df), self.train_tf, self.progress)
        self.val_ds = cached_dataset(CacheDataset, self.case_records(self.val_df), det, self.progress)
        self.generator = torch.Generator()
        self.sampler = None
        if self.world > 1:
            self.sampler = DistributedSampler(
                self.train_ds, num_replicas=self.world, rank=self.rank, shuffle=True, seed=tc.seed
            )
        self.loader = DataLoader(
            self.train_ds,
            batch_size=tc.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=tc.num_workers,
            collate_fn=list_data_collate,
            generator=self.generator,
        )

    def _build_network(self) -> None:
        """The seeded network, mixed precision, channels-last, DDP, the loss, optimizer and adversarial term."""
        tc, device = self.tc, self.device
        set_determinism(seed=tc.seed)  # the initial weights
        model = create_volume_model(
            self.config.model.name,
            spatial_dims=self.config.model.spatial_dims,
            in_channels=self.in_channels,
            out_channels=self.table.num_classes,
            **self.config.model.kwargs,
        ).to(device)
        self.amp_dtype = autocast_dtype(tc.amp, device, training=True)
        # CPU, batch 1, bf16: channels-last with layout-keeping instance norms (no copies around every norm)
        self.cl = channels_last_training(
            model, device=device, batch_size=tc.batch_size, amp_dtype=self.amp_dtype, world=self.world
        )
        self.net = model  # the plain module: validated and saved
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.model = model
        self.loss_fn = build_loss(tc.loss)  # training.loss: a name in medseg.training.losses.LOSSES
        if tc.optimizer == "sgd":
            self.opt = torch.optim.SGD(
                model.parameters(), lr=tc.learning_rate, momentum=0.99, nesterov=True, weight_decay=tc.weight_decay
            )
        else:
            self.opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
        self.adversary = None
        if tc.adversarial_weight > 0:
            self.adversary = AdversarialTerm(
                in_channels=self.in_channels,
                num_classes=self.table.num_classes,
                weight=tc.adversarial_weight,
                lr=tc.adversarial_lr,
                device=device,
            )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _restore(self) -> None:
        """The budget's clock; with ``--resume``, the weights, optimizer, history, best and time of ``state.pt``."""
        tc, state = self.tc, self.state
        budget_s = tc.max_minutes * 60 if tc.max_minutes and tc.max_minutes > 0 else math.inf
        self.clock = Clock(budget_s=budget_s, val_interval=tc.val_interval, t0=self.t0)
        if state is None:
            return
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.history, self.start = list(state["history"]), int(state["epoch"]) + 1
        self.iteration, self.clock.elapsed0 = int(state.get("iteration", 0)), float(state.get("elapsed_s", 0.0))
        self.best = Best.from_state(state["best"])
        log.warning(
            "resuming %s after epoch %d (%d iterations, %.0f s)",
            self.out,
            self.start - 1,
            self.iteration,
            self.clock.elapsed0,
        )

    def _prepare_epochs(self) -> None:
        """What every checkpoint carries (+ the input profile), the progress bar, the first epoch and whether any is
        left."""
        tc, clock = self.tc, self.clock
        self.extra = {
            "manifest_sha256": self.run_info["manifest_sha256"],
            "train_cases": self.run_info["train_cases"],
            "fold": self.fold,
        }
        if (
            self.main
        ):  # what the inputs looked like: predictions on inputs far from it are flagged (medseg.reporting.quality)
            profile = input_profile(
                self.train_df, self.image_cols, self.table, str(vars(self.config.preprocessing).get("intensity", ""))
            )
            if profile:
                self.extra["input_profile"] = profile
        if clock.budgeted and self.main:
            log.info(
                "budget %.1f min: epochs of %d iterations until it is spent (training.epochs is not used)",
                tc.max_minutes,
                tc.iterations_per_epoch,
            )
        total = None if clock.budgeted else max(0, self.total_steps - self.iteration)
        self.bar = progress_bar(total=total, desc="train", unit="step", disable=not self.progress)
        clock.start()
        self.epoch = self.start - 1
        self.done = (
            not clock.budgeted
            and self.start > tc.epochs
            or clock.budgeted
            and clock.elapsed() + clock.reserve_s >= clock.budget_s
            and self.start > 1
        )

    # --- one epoch ------------------------------------------------------------------------------------------------

    def on_epoch_start(self) -> None:
        self.epoch += 1
        _reseed(self.tc.seed + self.rank * 100003, self.epoch, self.train_tf, self.generator)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.model.train()
        self.t_epoch, self.losses, self.out_of_time = time.monotonic(), [], False

    def train_epoch(self) -> None:
        """``iterations_per_epoch`` steps, fewer when the budget is spent or a budget run's validation is due."""
        batches = iter(self.loader)
        for _ in range(self.tc.iterations_per_epoch):
            spent = self._schedule_position()
            if spent is None:
                break
            for g in self.opt.param_groups:
                g["lr"] = self.tc.learning_rate * lr_factor(spent, self.tc.schedule)
            try:
                batch = next(batches)
            except StopIteration:  # a small data set: another pass in the same epoch
                batches = iter(self.loader)
                batch = next(batches)
            self.train_step(batch)

    def _schedule_position(self) -> float | None:
        """The spent fraction of the budget, or of the planned iterations (what the learning rate follows); None when
        the epoch ends before this step. Every process takes the main one's decision."""
        clock = self.clock
        spent = clock.elapsed() / clock.budget_s if clock.budgeted else self.iteration / self.total_steps
        spent, stop = agree_step(spent, clock.out_of_time(), self.world)
        if stop and self.losses:
            self.out_of_time = True
            return None
        if self.losses and agree_step(0.0, clock.validation_due(), self.world)[1]:
            return None  # a budget run's epoch ends early when a validation is due (long epochs on a slow machine)
        return spent

    def train_step(self, batch) -> None:
        """One optimizer step on ``batch`` (+ the adversarial term's discriminator step)."""
        t_step = time.monotonic()
        x, y = to_layout(batch["image"].to(self.device), self.cl), batch["label"].to(self.device)
        self.opt.zero_grad(set_to_none=True)
        amp_dtype = self.amp_dtype
        with torch.autocast(
            device_type=self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            outputs = self.model(x)
            outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
            logits = full_resolution(outputs)  # the adversarial term's input
            loss = segmentation_loss(self.loss_fn, outputs, y)  # deep-supervision lists, weighted per scale
            if self.adversary is not None:
                loss = loss + self.adversary.generator_loss(x, logits)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.adversary is not None:
            self.adversary.discriminator_step(x, logits, y)
        self.losses.append(loss.detach().item())
        self.iteration += 1
        self.clock.note_step(time.monotonic() - t_step)
        self.bar.update(1)
        clock = self.clock
        budget_left = (
            {"elapsed": f"{clock.elapsed():.0f}s", "left": f"{max(clock.budget_s - clock.elapsed(), 0):.0f}s"}
            if clock.budgeted
            else {}
        )
        self.bar.set_postfix(
            epoch=self.epoch,
            loss=f"{self.losses[-1]:.3f}",
            best_dice=f"{max(self.best.mean_dice, 0):.3f}",
            **budget_left,
        )

    def on_epoch_end(self) -> None:
        """The epoch's row; validation and checkpoints when due or last; metrics.csv and state.pt; the end's reserve."""
        tc, clock = self.tc, self.clock
        if clock.budgeted and not self.out_of_time:
            self.out_of_time = agree_step(0.0, clock.out_of_time(0.5), self.world)[1]
        last = self.out_of_time if clock.budgeted else self.epoch >= tc.epochs
        row = {
            "epoch": self.epoch,
            "iterations": self.iteration,
            "elapsed_s": round(clock.elapsed(), 3),
            "loss": float(np.mean(self.losses)),
            "lr": self.opt.param_groups[0]["lr"],
            "epoch_seconds": time.monotonic() - self.t_epoch,
        }
        due = clock.elapsed() >= clock.next_val if clock.budgeted else self.epoch % tc.val_every == 0
        t_val = time.monotonic()
        if (due or last) and self.main:
            row.update(self.validate())
        self.history.append(row)
        if self.world > 1:
            dist.barrier()  # the others wait while the main process validates
        if self.main:
            self.save_state(plot=due or last)  # the curve as training goes (and its time counts in the end's reserve)
        if due or last:  # validation + checkpoints + state: what the end of the run needs (with a margin)
            clock.note_validation(time.monotonic() - t_val)
        if last:
            if self.out_of_time and self.main:
                log.info(
                    "stopping after epoch %d (%d iterations): the %.1f-minute budget is spent, as planned",
                    self.epoch,
                    self.iteration,
                    tc.max_minutes,
                )
            self.done = True

    def validate(self) -> dict:
        """Dice per structure on the validation cases; ``best.pt`` when it is the best so far, ``last.pt`` always.
        Returns the metrics row's validation columns."""
        dice = validation_dice(self.net, self.val_ds, self.config.inference, self.table, self.device, floor=self.pad)
        mean = float(np.nanmean(list(dice.values())))
        extra = {**self.extra, "epoch": self.epoch, "val_dice": dice}
        if mean > self.best.mean_dice:
            self.best = Best(mean, self.epoch, dice)
            self.save_checkpoint("best.pt", extra)
        self.save_checkpoint("last.pt", extra)
        return {"val_mean_dice": mean, **{f"val_dice_{k}": v for k, v in dice.items()}}

    def save_checkpoint(self, name: str, extra: dict) -> Path:
        return checkpoint.save_checkpoint(
            self.out / name,
            self.net,
            config=self.config,
            label_table=self.table,
            extra=extra,
            in_channels=self.in_channels,
        )

    def save_state(self, *, plot: bool) -> None:
        """``metrics.csv`` and ``state.pt`` (everything --resume needs, after every epoch); the curve when ``plot``."""
        write_csv(self.out / "metrics.csv", pd.DataFrame(self.history))
        with atomic_path(self.out / "state.pt") as tmp:
            torch.save(
                {
                    "model": self.net.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "epoch": self.epoch,
                    "iteration": self.iteration,
                    "elapsed_s": self.clock.elapsed(),
                    "history": self.history,
                    "best": self.best.to_state(),
                    "config": self.config.to_dict(),
                },
                tmp,
            )
        if plot:
            plot_training_curve(pd.DataFrame(self.history), self.out / "training_curve.png")
            self.plotted = len(self.history)

    # --- on_train_end -----------------------------------------------------------------------------------------------

    def on_train_end(self) -> TrainResult | None:
        """The final curve and ``run.json`` with the result (main process)."""
        self.bar.close()
        if not self.main:
            return None
        if self.history and self.plotted != len(self.history):
            plot_training_curve(pd.DataFrame(self.history), self.out / "training_curve.png")
        seconds = time.monotonic() - self.t0
        best, clock = self.best, self.clock
        if best.mean_dice < 0:
            raise InputError(f"{self.out}: no validation ran (the run was already complete?); nothing to report")
        result = TrainResult(self.out, self.out / "best.pt", best.epoch, best.mean_dice, best.dice, self.epoch, seconds)
        self.run_info.update(
            {
                "best_epoch": best.epoch,
                "best_val_mean_dice": best.mean_dice,
                "best_val_dice": best.dice,
                "epochs_run": self.epoch,
                "iterations": self.iteration,
                "seconds": round(seconds, 1),
                "elapsed_s": round(clock.elapsed(), 1),
                "budget_s": self.tc.max_minutes * 60 if clock.budgeted else None,
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "channels_last": self.cl,
            }
        )
        write_json(self.out / "run.json", self.run_info)
        return result


# --- one or several processes -----------------------------------------------------------------------------------------


def train(*, nproc: int = 1, _rank: int = 0, **trainer_args) -> TrainResult:
    """Train a ``Trainer`` made of ``trainer_args`` (its keywords: ``config``, ``manifest``, ``out_dir``,
    ``label_table``, ``progress``, ``device``, ``resume``, ``fold``, ``inputs``); with ``nproc > 1``, as that many
    DistributedDataParallel processes (gloo on CPU, NCCL on GPUs)."""
    check_loss_name(trainer_args["config"].training.loss)  # before any work, in every process
    if nproc > 1 and _rank == 0 and not _distributed_ready():
        return _spawn(nproc, **trainer_args)
    return Trainer(**trainer_args).run()  # type: ignore[return-value]  (None in the other processes)


def _distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, kwargs: dict) -> None:
    backend = "nccl" if torch.cuda.is_available() and kwargs.get("device") in (None, "cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nproc)
    try:
        train(**kwargs, _rank=rank)
    finally:
        dist.destroy_process_group()


def _spawn(nproc: int, **kwargs) -> TrainResult:
    """Run ``train`` in ``nproc`` processes; the result is read back from the run directory."""
    mp.spawn(_worker, args=(nproc, _free_port(), kwargs), nprocs=nproc, join=True)
    out = Path(kwargs["out_dir"])
    info = json.loads((out / "run.json").read_text())
    return TrainResult(
        out,
        out / "best.pt",
        info["best_epoch"],
        info["best_val_mean_dice"],
        info["best_val_dice"],
        info["epochs_run"],
        info["seconds"],
    )


# --- the front door from files ----------------------------------------------------------------------------------------


def train_from_files(
    *,
    config: str | Path,
    manifest: str | Path,
    out: str | Path,
    overrides: Sequence[str] | None = None,
    progress: bool = True,
    device=None,
    resume: bool = False,
    fold: int | None = None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    nproc: int = 1,
    labels: LabelTable | str | Path | None = None,
) -> TrainResult:
    """Train a model from a YAML config and a data manifest into the run folder ``out``; returns a ``TrainResult``.
    ``medseg.api.train`` is this function.

    ``overrides`` are ``section.key=value`` strings over the config. ``labels`` (a ``LabelTable`` or a table file)
    replaces the config's label table: the ``train_and_evaluate`` pipeline passes the data set's own.
    ``resume`` continues the run in ``out`` (same config) after its last finished epoch; ``fold`` validates on the
    manifest's cases of that fold; ``epochs`` and ``max_minutes`` are shortcuts for ``training.epochs`` /
    ``training.max_minutes`` (with a budget the learning rate follows the fraction of it spent and the run uses all
    of it; epochs are then not used); ``nproc > 1`` trains with that many DistributedDataParallel processes.
    The loss name is checked before the run folder is made; the run's log lines go to ``out/train.log``.
    A config with a ``cascade`` section trains its two stages in ``out`` (``medseg.training.cascade``; the result's
    checkpoint ``out/best.pt`` holds both).
    """
    overrides = list(overrides or [])
    if epochs is not None:
        overrides.append(f"training.epochs={int(epochs)}")
    if max_minutes is not None:
        overrides.append(f"training.max_minutes={float(max_minutes)}")
    cfg = load_config(config, overrides=overrides)
    check_preprocessing(cfg.preprocessing, str(Path(config)))  # before the run folder is made (as load_config did)
    check_loss_name(cfg.training.loss, str(config))  # before the run folder is made
    if labels is None:
        table = cfg.label_table(base=Path(config).parent)
    else:
        table = labels if isinstance(labels, LabelTable) else LabelTable.from_yaml(labels)
        cfg.labels = table.to_dict()  # the run's config.yaml and checkpoint name the table trained with
    ensure_dir(Path(out))
    with command_log(Path(out) / "train.log"):  # what the console does not show: per-epoch lines, the budget
        if cfg.cascade is not None:  # two stages in one budget, one model (medseg.training.cascade)
            return train_cascade(
                train,
                config=cfg,
                manifest=manifest,
                out_dir=out,
                label_table=table,
                progress=progress,
                device=device,
                resume=resume,
                fold=fold,
                nproc=nproc,
            )
        return train(
            config=cfg,
            manifest=manifest,
            out_dir=out,
            label_table=table,
            progress=progress,
            device=device,
            resume=resume,
            fold=fold,
            nproc=nproc,
        )
