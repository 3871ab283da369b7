"""Lightning callbacks of mmldm's training runs."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class TimeBudget(L.Callback):
    """Fit ``max_steps`` to a time budget from the measured seconds per step.

    Args:
        seconds (`float`): the training budget (from the start of training).
        skip (`int`): first steps left out of the rate (start-up costs).
        calibrate (`int`): step at which ``max_steps`` is first set.
        checkpoints (`tuple[float, ...]`): shares of the budget at which the
            estimate is refreshed (it then includes periodic evaluations).
        margin (`float`): share of the remaining time planned for, so the
            schedule ends before ``max_time`` cuts the run.
        limit (`int`, *optional*): ``max_steps`` is never set above this.
    """

    def __init__(self, seconds: float, skip: int = 5, calibrate: int = 25,
                 checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75), margin: float = 0.97,
                 limit: int | None = None) -> None:
        if calibrate <= skip:
            raise ValueError(f"TimeBudget: calibrate={calibrate} must exceed skip={skip}")
        self.seconds, self.skip, self.calibrate, self.margin, self.limit = seconds, skip, calibrate, margin, limit
        self.pending = sorted(checkpoints)
        self.start = self.t_skip = 0.0
        self.seconds_per_step: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if step == self.skip:
            self.t_skip = now
        elapsed = now - self.start
        due = step == self.calibrate or (self.pending and step > self.calibrate and elapsed >= self.pending[0] * self.seconds)
        if not due:
            return
        while self.pending and elapsed >= self.pending[0] * self.seconds:
            self.pending.pop(0)
        self.seconds_per_step = (now - self.t_skip) / (step - self.skip)
        remaining = max(0.0, self.seconds - elapsed) * self.margin
        planned = step + max(1, int(remaining / self.seconds_per_step))
        trainer.fit_loop.epoch_loop.max_steps = min(planned, self.limit) if self.limit else planned
