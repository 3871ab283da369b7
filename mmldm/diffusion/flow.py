"""``flow``: rectified flow / flow matching (Liu et al. 2022, arXiv 2209.03003; Lipman et al. 2022,
arXiv 2210.02747) with SD3's logit-normal times and time shift (Esser et al. 2024, arXiv 2403.03206).

Training: ``z_t = (1 - t) z_0 + t eps``; the network predicts the velocity ``eps - z_0``.

Sampling in the samplers' VE space: ``z_t / (1 - t) = z_0 + sigma eps`` with ``sigma = t / (1 - t)``
(``t = sigma / (1 + sigma)``), so ``c_in = 1 / (1 + sigma)`` gives back ``z_t``, and
``D = z_t - t v = c_skip x + c_out v`` with ``c_skip = 1 / (1 + sigma)``, ``c_out = -sigma / (1 + sigma)``.
Euler steps in this space are exactly the flow's Euler steps ``z' = z + (t' - t) v``: both move along
the line through the current ``D`` (DDIM), which is why every VE sampler works for this process.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import TIME_SAMPLINGS, FlowConfig
from .process import Noised, Preconditioning, Process
from .utils import append_dims, rand, randn

#: ``c_noise = TIME_SCALE * t``: the denoisers' sinusoidal time embeddings (DDPM's, frequencies from 1 to
#: 1/10000 per unit) are built for timesteps spread over [0, 1000); ``t`` itself in [0, 1] would leave
#: all but the fastest features constant. diffusers' flow schedulers feed ``1000 t`` too.
TIME_SCALE = 1000.0


class FlowProcess(Process):
    """Rectified flow.

    Args:
        time_sampling (`str`, defaults to ``"logit_normal"``): training times: ``logit_normal``,
            ``t = sigmoid(logit_mean + logit_std n)`` with ``n ~ N(0, 1)`` (SD3's rf/lognorm(0.00, 1.00)),
            or ``uniform`` on [0, 1).
        shift (`float`, defaults to 1): ``t -> shift t / (1 + (shift - 1) t)`` on training times and the
            sampling grid alike (as diffusers' SD3 training script and scheduler do); > 1 spends more of
            both at high noise.
        t_max (`float`, defaults to 0.999): the start of the sampling grid ``linspace(t_max, 0, steps + 1)``
            (then shifted). ``t = 1`` is ``sigma = inf`` in the VE space, where ``x = noise * sigmas[0]``
            cannot be formed, so the grid starts just below: ``x = noise * sigma_0`` is
            ``z = t_max * noise``, the VE prior (the ``(1 - t_max) z_0`` part left out, as every
            VE sampler leaves out ``z_0`` at ``sigma_max``). The model sees a 0.1% smaller noise at
            ``c_noise = 999`` than diffusers' first step (pure noise at 1000); on the same grid the
            steps are the same (``tests/test_process.py`` runs diffusers' ``FlowMatchEulerDiscreteScheduler``
            on it). Closer to 1 makes ``sigma_0`` larger (999 here; float16 overflows past ~1e4).

    The grid is uniform in ``t`` down to 0 (diffusers' default stops at ``t = 1/1000`` before its last
    step, a step that does almost nothing).
    """

    spacings = FlowConfig.spacings

    def __init__(self, time_sampling: str = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0,
                 shift: float = 1.0, t_max: float = 0.999):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling '{time_sampling}'; expected one of {', '.join(TIME_SAMPLINGS)}")
        if not 0 < t_max < 1:
            raise ValueError(f"t_max must lie in (0, 1), got {t_max}")
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std
        self.shift_factor, self.t_max = shift, t_max

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> "FlowProcess":
        return cls(cfg.time_sampling, cfg.logit_mean, cfg.logit_std, cfg.shift, cfg.t_max)

    def shift(self, t: Tensor) -> Tensor:
        """SD3's time shift ``shift t / (1 + (shift - 1) t)`` (identity for shift 1; keeps 0 and 1)."""
        s = self.shift_factor
        return t if s == 1 else s * t / (1 + (s - 1) * t)

    def times(self, n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``n`` training times ``[n]`` in [0, 1) with ``like``'s dtype and device, shifted."""
        if self.time_sampling == "uniform":
            t = rand(n, like, generator)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * randn((n,), like, generator))
        return self.shift(t)

    def noise(self, z0: Tensor, generator: torch.Generator | None = None) -> Noised:
        t = self.times(z0.shape[0], z0, generator)
        eps = randn(z0.shape, z0, generator)
        t_ = append_dims(t, z0.ndim)
        return Noised((1 - t_) * z0 + t_ * eps, TIME_SCALE * t, eps - z0, torch.ones_like(t), t / (1 - t))

    def precondition(self, sigma: Tensor) -> Preconditioning:
        c_in = 1 / (1 + sigma)
        t = sigma * c_in
        return Preconditioning(c_in, -t, c_in, TIME_SCALE * t)

    def _sigmas(self, steps: int, spacing: str) -> Tensor:
        t = self.shift(torch.linspace(self.t_max, 0, steps + 1, dtype=torch.float64))
        return t / (1 - t)

    def __repr__(self) -> str:
        return f"FlowProcess(time_sampling={self.time_sampling!r}, shift={self.shift_factor}, t_max={self.t_max})"
