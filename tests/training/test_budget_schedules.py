"""Budget-aware schedules: fixed-length epochs, the learning rate on the spent fraction of the budget, resume."""

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import fingerprint, kill_training_after

from medseg import api
from medseg.training.schedule import lr_factor


def _train(cfg, manifest, out, **kw):
    return api.train(config=cfg, manifest=manifest, out=out, progress=False, **kw)


def test_lr_factor_poly_and_cosine():
    assert lr_factor(0.0, "poly") == 1.0 and lr_factor(1.0, "poly") == 0.0
    assert lr_factor(0.5, "poly") == pytest.approx(0.5**0.9)
    assert lr_factor(0.5, "cosine") == pytest.approx(0.5) and lr_factor(1.0, "cosine") == pytest.approx(0.0)
    assert lr_factor(1.7, "poly") == 0.0 and lr_factor(-0.2, "cosine") == 1.0  # clipped to the run


def test_an_epoch_is_a_fixed_number_of_iterations_whatever_the_number_of_cases(tiny_cohort, write_config, tmp_path):
    # 3 training cases, batch 2: one pass is 2 steps; 5 iterations per epoch draw from more than one pass
    _train(write_config(epochs=2, iterations_per_epoch=5, learning_rate=0.01), tiny_cohort, tmp_path / "run")
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(m["iterations"]) == [5, 10]
    assert (np.diff(m["elapsed_s"]) > 0).all() and (m["elapsed_s"] > 0).all()
    # poly on the planned iterations: the last step of epoch 1 is step 5 of 10 (4 done before it)
    assert m["lr"][0] == pytest.approx(0.01 * (1 - 4 / 10) ** 0.9, rel=1e-6)
    assert m["lr"][1] == pytest.approx(0.01 * (1 - 9 / 10) ** 0.9, rel=1e-6)


@pytest.mark.slow
def test_a_budget_run_uses_its_budget_and_the_lr_follows_the_spent_fraction(tiny_cohort, write_config, tmp_path):
    budget_min = 0.5
    cfg = write_config(epochs=1, iterations_per_epoch=10, max_minutes=budget_min, learning_rate=0.004)
    t = time.monotonic()
    res = _train(cfg, tiny_cohort, tmp_path / "run")
    wall = time.monotonic() - t
    info = __import__("json").loads((tmp_path / "run" / "run.json").read_text())
    budget = budget_min * 60
    assert 0.9 * budget <= info["elapsed_s"] <= 1.05 * budget, info["elapsed_s"]
    assert wall <= budget * 1.05 + 5  # + loading the config and building the run before the clock starts
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {"iterations", "elapsed_s"} <= set(m.columns)
    assert len(m) > 1, "epochs=1 is not a limit when there is a budget"
    # train.log beside the run: the budget's normal end is an INFO line, not a WARNING
    (end,) = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "budget is spent" in line]
    assert " INFO " in end
    assert res.epochs_run == len(m) and info["iterations"] == m["iterations"].iloc[-1]
    assert (np.diff(m["iterations"]) > 0).all() and (np.diff(m["elapsed_s"]) > 0).all()
    # the lr of an epoch's last step is poly on the budget spent when that step began: after the previous epoch ended,
    # before this one did
    # metrics.csv rounds elapsed_s to the millisecond: widen each bound by that rounding
    elapsed_s = m["elapsed_s"].to_numpy()
    spent_hi, spent_lo = np.clip((elapsed_s + 5e-4) / budget, 0, 1), np.clip((elapsed_s - 5e-4) / budget, 0, 1)
    factor = m["lr"].to_numpy() / 0.004
    upper = np.concatenate([[1.0], (1 - spent_lo[:-1]) ** 0.9])
    assert ((1 - spent_hi) ** 0.9 - 1e-9 <= factor).all() and (factor <= upper + 1e-9).all(), (factor, elapsed_s)
    assert factor[-1] < 0.2 and (np.diff(factor) < 0).all()
    # validation at a cadence of about 10% of the budget, and at the end
    val = m.dropna(subset=["val_mean_dice"])
    assert not np.isnan(m["val_mean_dice"].iloc[-1]) and len(val) >= 4
    assert np.diff(val["elapsed_s"]).max() < 0.35 * budget


@pytest.mark.slow
def test_a_killed_budget_run_resumes_its_schedule_from_the_recorded_time(tiny_cohort, write_config, tmp_path):
    budget_min = 0.5
    cfg = write_config(epochs=1, iterations_per_epoch=10, max_minutes=budget_min, learning_rate=0.004)
    run = tmp_path / "killed"
    kill_training_after(cfg, tiny_cohort, run, rows=3)
    state = torch.load(run / "state.pt", weights_only=True)
    budget = budget_min * 60
    assert state["elapsed_s"] < 0.8 * budget, "the run got too far before it could be killed"
    killed_epoch, killed_iter, killed_lr = state["epoch"], state["iteration"], state["history"][-1]["lr"]

    _train(cfg, tiny_cohort, run, resume=True)
    m = pd.read_csv(run / "metrics.csv")
    assert list(m["epoch"]) == list(range(1, len(m) + 1)) and len(m) > killed_epoch
    after = m[m["epoch"] > killed_epoch]
    assert killed_iter < after["iterations"].iloc[0] <= killed_iter + 10  # iterations go on from the recorded count
    assert after["elapsed_s"].iloc[0] > state["elapsed_s"]  # the clock goes on from the recorded time ...
    assert after["lr"].iloc[0] < killed_lr  # ... and so does the schedule: no restart at the base learning rate
    # its last step began after the recorded time and before the epoch ended: poly on the budget spent then
    factor = after["lr"].iloc[0] / 0.004
    # (metrics.csv rounds elapsed_s to the millisecond; state.pt keeps it unrounded)
    assert (
        (1 - (after["elapsed_s"].iloc[0] + 5e-4) / budget) ** 0.9 <= factor <= (1 - state["elapsed_s"] / budget) ** 0.9
    )
    assert 0.9 * budget <= m["elapsed_s"].iloc[-1] <= 1.05 * budget
    assert not math.isnan(m["val_mean_dice"].iloc[-1])


def test_the_planner_sizes_cpu_runs_by_steps_and_keeps_nnunet_epochs_on_a_gpu():
    from medseg.training.planning import plan_config

    head = fingerprint([2.0, 2.0, 2.0], [99, 117, 95], foreground={"p00_5": 0.0, "p99_5": 1.0, "mean": 0.5, "std": 0.2})
    planned = plan_config(head, gpu=False)
    cpu = planned["training"]
    # shrunk in steps of 8 to within 64^3 voxels, then to the planned network's strides: 4 levels of 2 (the MONAI
    # recipe's)
    assert planned["model"]["kwargs"]["strides"] == [2, 2, 2, 2] and planned["model"]["kwargs"]["channels"][-1] == 256
    assert cpu["patch_size"] == [64, 64, 64] and planned["inference"]["roi_size"] == cpu["patch_size"]
    assert cpu["iterations_per_epoch"] == 50 and cpu["samples_per_image"] == 1 and cpu["batch_size"] == 1
    gpu = plan_config(head, gpu=True)["training"]
    assert (
        gpu["iterations_per_epoch"] == 250
        and math.prod(gpu["patch_size"]) > 96 * 96 * 64
        and "samples_per_image" not in gpu
    )  # not capped
    base = {"training": {"iterations_per_epoch": 13, "samples_per_image": 2}}  # a base config's choice is kept
    kept = plan_config(head, base=base, gpu=False)["training"]
    assert kept["iterations_per_epoch"] == 13 and kept["samples_per_image"] == 2


@pytest.mark.parametrize("memory_gb", [0.2, 0.5, 1.0, 4.0])
@pytest.mark.parametrize("gpu", [False, True])
def test_the_planned_default_network_keeps_the_memory_budget_and_a_4_voxel_bottleneck(memory_gb, gpu):
    # a 256^3 CT at 1 mm: the patch shrinks for the budget first, and the default network is chosen for the patch that
    # is left
    # (it used to be chosen for the unshrunk 128^3 patch: 5 levels, and rounding up to 32 broke the budget by up to 3x)
    from medseg.training.planning import _BYTES_PER_VOXEL_PER_CHANNEL, plan_config

    ct_range = {"p00_5": -1000.0, "p99_5": 1000.0, "mean": 0.0, "std": 300.0}
    ct = fingerprint([1.0] * 3, [256, 256, 256], modality="CT", foreground=ct_range)
    planned = plan_config(ct, memory_gb=memory_gb, gpu=gpu)
    patch, batch = planned["training"]["patch_size"], planned["training"]["batch_size"]
    kw = planned["model"]["kwargs"]
    assert batch * math.prod(patch) * kw["channels"][0] * _BYTES_PER_VOXEL_PER_CHANNEL <= memory_gb * 2**30
    step = math.prod(kw["strides"])  # the strides' product: what patch sizes must be multiples of
    assert all(p % step == 0 for p in patch) and min(patch) / step >= 4
