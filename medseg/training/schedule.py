"""The training schedule: the learning rate's factor, the time budget's clock and the validation cadence.

``lr_factor(spent, schedule)`` is poly (power 0.9, nnU-Net) or cosine on the fraction of the run done.
``Clock`` counts the seconds a run has spent against ``training.max_minutes`` (across resumes), keeps the
reserve of time the end of the run needs (the last validation, checkpoints and curve, measured at each
validation) and the time of the next validation of a budget run. ``agree_step`` shares the main
process's schedule position and stop decision with every DistributedDataParallel process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


def lr_factor(spent: float, schedule: str) -> float:
    """The learning rate's multiplier at ``spent`` (0..1) of the run: poly (power 0.9, nnU-Net) or cosine."""
    spent = min(max(float(spent), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * spent))
    return (1.0 - spent) ** 0.9


def agree_step(spent: float, stop: bool, world: int) -> tuple[float, bool]:
    """The main process's schedule position and stop decision, shared with every process (same LR, same stop)."""
    if world == 1:
        return spent, stop
    t = torch.tensor([float(spent), 1.0 if stop else 0.0], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t[0].item()), bool(t[1].item())


@dataclass
class Clock:
    """Seconds counted against the budget (``budget_s``: ``inf`` without one), across resumes.

    ``step_s`` is a running mean of the seconds per optimizer step; ``reserve_s`` the time kept for the final
    validation, checkpoints and the curve; ``next_val`` when a budget run validates next.
    """

    budget_s: float
    val_interval: float
    t0: float
    elapsed0: float = 0.0
    step_s: float | None = None
    reserve_s: float = 1.0
    measured: float | None = None
    next_val: float = math.inf

    @property
    def budgeted(self) -> bool:
        return math.isfinite(self.budget_s)

    def elapsed(self) -> float:
        """Seconds counted against the budget, across resumes."""
        return self.elapsed0 + time.monotonic() - self.t0

    def next_mark(self) -> float:
        """The next mark of the cadence: the next multiple of ``val_interval`` of the budget."""
        span = self.val_interval * self.budget_s
        return (math.floor(self.elapsed() / span) + 1) * span

    def start(self) -> None:
        """The first validation of a budget run (after a resume too: the next mark of the time already spent)."""
        self.next_val = self.next_mark() if self.budgeted else math.inf

    def out_of_time(self, step_share: float = 1.0) -> bool:
        """Would ``step_share`` of one more step leave too little time for the end of the run?"""
        return self.budgeted and self.elapsed() + self.reserve_s + (self.step_s or 0.0) * step_share > self.budget_s

    def validation_due(self) -> bool:
        return self.budgeted and self.elapsed() >= self.next_val

    def note_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.9 * self.step_s + 0.1 * seconds

    def note_validation(self, took: float) -> None:
        """Validation + checkpoints + state took ``took`` seconds: what the end of the run needs (with a margin);
        a budget run validates next at the next mark, and validation takes at most ~1/5 of the time."""
        self.reserve_s = (
            1.25 * took + 0.5 if self.measured is None else 0.5 * self.reserve_s + 0.5 * (1.25 * took + 0.5)
        )
        self.measured = took
        if self.budgeted:
            self.next_val = max(self.next_mark(), self.elapsed() + 4 * took)
