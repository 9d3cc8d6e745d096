"""The training loop: cached MONAI pipelines, Dice+CE, validation Dice per structure.

A run directory holds ``config.yaml`` (resolved), ``run.json`` (versions,
manifest hash, inputs, result), ``metrics.csv`` (one row per epoch),
``best.pt`` (best validation mean Dice) and ``last.pt``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import Config
from medseg.errors import InputError
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


def _split(df, seed: int):
    train = df[df["split"] == "train"]
    val = df[df["split"] == "val"]
    if len(val) == 0:  # hold out 20% of the training cases, reproducibly
        if len(train) < 2:
            raise InputError("need at least 2 cases with split=train (or a split=val case) to validate")
        rng = np.random.default_rng(seed)
        n_val = max(1, int(round(0.2 * len(train))))
        pick = set(rng.choice(train["case_id"].to_numpy(), size=n_val, replace=False))
        val = train[train["case_id"].isin(pick)]
        train = train[~train["case_id"].isin(pick)]
    if len(train) == 0:
        raise InputError("no training cases (split=train) in the manifest")
    return train, val


def _records(df) -> list[dict]:
    return [{"image": r.image, "label": r.label, "case_id": r.case_id} for r in df.itertuples()]


def _check_label_range(dataset, table: LabelTable, split: str) -> None:
    """Every label value must be in the table; report all offending cases at once."""
    bad = []
    allowed = {0} | {lab.index for lab in table.labels}
    for item in dataset:
        item = item[0] if isinstance(item, list) else item
        values = set(np.unique(np.asarray(item["label"])).astype(int).tolist())
        extra = values - allowed
        if extra:
            bad.append(f"{item.get('case_id', '?')}: {sorted(extra)}")
    if bad:
        raise InputError(f"{split} label maps hold values not in label table {table.name!r}: " + "; ".join(bad[:5]))


def train(
    *,
    config: Config,
    manifest: str | Path,
    out_dir: str | Path,
    label_table: LabelTable | None = None,
    progress: bool = True,
    device=None,
) -> TrainResult:
    import pandas as pd
    import torch
    import yaml
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from monai.transforms import Compose
    from monai.utils import set_determinism
    from tqdm.auto import tqdm

    from medseg.checkpoint import save_checkpoint, versions
    from medseg.inference.sliding_window import default_device, window_scores
    from medseg.io.atomic import write_csv, write_json, write_text
    from medseg.manifest import manifest_sha256, read_manifest
    from medseg.models import create_model
    from medseg.transforms.presets import deterministic_transforms, random_transforms

    t0 = time.monotonic()
    tc, ic = config.training, config.inference
    if config.model.spatial_dims != 3:
        from medseg.errors import ConfigError

        raise ConfigError("training 2D models is not available yet; use model.spatial_dims: 3")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = label_table or config.label_table()
    device = torch.device(device) if device else default_device()
    set_determinism(seed=tc.seed)

    df = read_manifest(manifest, require_labels=True)
    train_df, val_df = _split(df, tc.seed)
    write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    run_info = {
        "command": "train",
        "versions": versions(),
        "manifest": str(manifest),
        "manifest_sha256": manifest_sha256(manifest),
        "train_cases": list(train_df["case_id"]),
        "val_cases": list(val_df["case_id"]),
        "labels": table.to_dict(),
        "device": str(device),
    }
    write_json(out / "run.json", run_info)

    det = deterministic_transforms(config.preprocessing)
    train_ds = CacheDataset(_records(train_df), Compose(list(det.transforms) + list(random_transforms(tc, table.num_classes).transforms)), progress=progress, num_workers=0)
    val_ds = CacheDataset(_records(val_df), det, progress=progress, num_workers=0)
    _check_label_range(val_ds, table, "validation")
    _check_label_range([{"label": d["label"], "case_id": d["case_id"]} for d in train_ds._cache], table, "training")

    loader = DataLoader(train_ds, batch_size=tc.batch_size, shuffle=True, num_workers=tc.num_workers, collate_fn=list_data_collate)
    model = create_model(
        config.model.name, spatial_dims=3, in_channels=1, out_channels=table.num_classes, **config.model.kwargs
    ).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_ds) * tc.samples_per_image / tc.batch_size))
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=tc.epochs * steps_per_epoch, power=0.9)
    dice_metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)

    def validate() -> np.ndarray:
        model.eval()
        rows = []
        for item in val_ds:
            img = item["image"][None]
            logits = window_scores(model, img, roi_size=ic.roi_size, overlap=ic.overlap, sw_batch_size=ic.sw_batch_size, blend=ic.blend, device=device)
            pred = one_hot(logits.argmax(1, keepdim=True).cpu(), table.num_classes)
            ref = one_hot(item["label"][None].long(), table.num_classes)
            rows.append(dice_metric(pred, ref)[0].numpy())
        model.train()
        return np.nanmean(np.stack(rows), axis=0)  # per foreground class (index 1..max)

    names = {lab.index: lab.name for lab in table.labels}
    history, best = [], (-1.0, 0, {})
    budget_s = tc.max_minutes * 60 if tc.max_minutes and tc.max_minutes > 0 else math.inf
    extra = {"manifest_sha256": run_info["manifest_sha256"], "train_cases": run_info["train_cases"]}
    bar = tqdm(range(1, tc.epochs + 1), desc="train", unit="epoch", disable=not progress)
    epoch = 0
    for epoch in bar:
        model.train()
        t_epoch, losses = time.monotonic(), []
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach().item())
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0], "epoch_seconds": time.monotonic() - t_epoch}
        out_of_time = time.monotonic() - t0 > budget_s
        last = epoch == tc.epochs or out_of_time
        if epoch % tc.val_every == 0 or last:
            per_class = validate()
            dice = {names[i + 1]: float(d) for i, d in enumerate(per_class) if (i + 1) in names}
            mean = float(np.nanmean(list(dice.values())))
            row.update({"val_mean_dice": mean, **{f"val_dice_{k}": v for k, v in dice.items()}})
            if mean > best[0]:
                best = (mean, epoch, dice)
                save_checkpoint(out / "best.pt", model, config=config, label_table=table, extra={**extra, "epoch": epoch, "val_dice": dice})
            save_checkpoint(out / "last.pt", model, config=config, label_table=table, extra={**extra, "epoch": epoch, "val_dice": dice})
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_dice=f"{mean:.3f}")
        else:
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        history.append(row)
        write_csv(out / "metrics.csv", pd.DataFrame(history))
        if out_of_time:
            log.warning("stopping after epoch %d: the %.1f-minute budget is spent", epoch, tc.max_minutes)
            break
    bar.close()

    seconds = time.monotonic() - t0
    result = TrainResult(out, out / "best.pt", best[1], best[0], best[2], epoch, seconds)
    run_info.update({"best_epoch": best[1], "best_val_mean_dice": best[0], "best_val_dice": best[2], "epochs_run": epoch, "seconds": round(seconds, 1)})
    write_json(out / "run.json", run_info)
    return result
