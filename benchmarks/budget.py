"""Lightning callbacks for wall-clock-bounded benchmark runs.

:class:`~mmldm.training.callbacks.TimeBudget` (re-exported here) sizes
``max_steps`` from the measured seconds per step, so a run ends its learning-rate
schedule when its time is up; training runs use it through ``phase1.max_minutes``
and ``diffusion.max_minutes``.

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
from mmldm.training.callbacks import TimeBudget

__all__ = ["HeldOutCurve", "TimeBudget"]


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
