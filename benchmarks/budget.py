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

import lightning as L
import torch
from torch import Tensor

from mmldm.interfaces import Modality
from mmldm.training.callbacks import Periodic, TimeBudget

__all__ = ["HeldOutCurve", "TimeBudget"]


class HeldOutCurve(Periodic):
    """Reconstruction metrics of ``x`` (held-out items ``[N, C, *s]``) every ``every`` seconds.

    Reconstructions go through the inference path ``decode(encode(x).mode())``
    and the modality's ``postprocess``; :attr:`rows` holds
    ``{"step", "seconds", **metrics}`` (also at the end of training).
    """

    def __init__(self, modality: Modality, x: Tensor, every: float, batch_size: int = 100) -> None:
        super().__init__(every)
        self.modality, self.x, self.batch_size = modality, x, batch_size

    @torch.no_grad()
    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> None:
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
