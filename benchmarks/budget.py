"""Lightning callbacks for wall-clock-bounded benchmark runs.

:class:`TimeBudget` sizes ``max_steps`` (and with it the cosine learning-rate
schedule of :class:`mmldm.training.phase1.AutoencoderModule`, which decays to
0 at ``trainer.estimated_stepping_batches``) from the measured seconds per
step, so a run ends its schedule when its time is up. Lightning's own
``max_time`` stays on as the hard limit.

:class:`HeldOutCurve` records the modality's reconstruction metrics on a
fixed held-out subset at regular times during training.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mmldm.interfaces import Modality


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
    """

    def __init__(self, seconds: float, skip: int = 5, calibrate: int = 25,
                 checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75), margin: float = 0.97) -> None:
        if calibrate <= skip:
            raise ValueError(f"TimeBudget: calibrate={calibrate} must exceed skip={skip}")
        self.seconds, self.skip, self.calibrate, self.margin = seconds, skip, calibrate, margin
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
        trainer.fit_loop.epoch_loop.max_steps = step + max(1, int(remaining / self.seconds_per_step))


class HeldOutCurve(L.Callback):
    """Reconstruction metrics of ``x`` (held-out items ``[N, C, *s]``) every ``every`` seconds.

    Reconstructions go through the inference path ``decode(encode(x).mode())``
    and the modality's ``postprocess``; :attr:`rows` holds
    ``{"step", "seconds", **metrics}`` (also at the end of training).
    """

    def __init__(self, modality: Modality, x: Tensor, every: float, batch_size: int = 100) -> None:
        self.modality, self.x, self.every, self.batch_size = modality, x, every, batch_size
        self.rows: list[dict[str, float]] = []
        self.start = self.next = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        self.next = self.start + self.every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if time.perf_counter() >= self.next:
            self._measure(trainer, pl_module)
            self.next = time.perf_counter() + self.every

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:
            self._measure(trainer, pl_module)

    @torch.no_grad()
    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        autoencoder = pl_module.autoencoder
        was_training = autoencoder.training
        autoencoder.eval()
        rows = []
        for x in self.x.split(self.batch_size):
            x = x.to(pl_module.device)
            rec = self.modality.postprocess(autoencoder.decode(autoencoder.encode(x).mode()))
            rows.append((len(x), self.modality.reconstruction_metrics(x, rec)))
        autoencoder.train(was_training)
        n = sum(k for k, _ in rows)
        metrics = {key: sum(k * m[key] for k, m in rows) / n for key in rows[0][1]}
        seconds = time.perf_counter() - self.start
        self.rows.append({"step": int(trainer.global_step), "seconds": round(seconds, 1), **metrics})
