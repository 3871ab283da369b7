"""Discrete noise schedules and the sigma-space view samplers work in.

A variance-preserving (VP) forward process ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps``
with ``a_t = prod_{s<=t} (1 - beta_s)`` (``alphas_cumprod``) is, after dividing
by ``sqrt(a_t)``, the variance-exploding (VE) process ``x = z_0 + sigma_t eps``
with ``sigma_t = sqrt((1 - a_t) / a_t)`` (Karras et al. 2022, arXiv 2206.00364).
Samplers only see descending ``sigmas``; :class:`DiscreteSchedule` converts
between timesteps and sigmas by interpolating ``log sigma`` as k-diffusion does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .config import BETA_SCHEDULES  # names accepted by make_betas; the torch-free config lists them
#: Names accepted by :meth:`DiscreteSchedule.sigmas_for`.
SPACINGS = ("leading", "trailing", "linspace", "karras")
#: ``alphas_cumprod`` floor used for sigmas, so a zero-terminal-SNR step has a
#: finite sigma (4096), as diffusers does.
MIN_ALPHA_CUMPROD = 2.0**-24


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021 (arXiv 2102.09672), eq. 17: ``a(t) = cos^2((t/T + s)/(1 + s) * pi/2)``."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(
    kind: str, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Betas ``[T]`` (float64) of a named schedule.

    Args:
        kind (`str`): ``"linear"`` (Ho et al. 2020: betas linear in ``[beta_start, beta_end]``,
            use 1e-4 and 0.02 for DDPM's values), ``"scaled_linear"`` (Rombach et al. 2022:
            linear in ``sqrt(beta)``) or ``"cosine"`` (Nichol & Dhariwal 2021; ignores
            ``beta_start``/``beta_end``).
        num_timesteps (`int`, defaults to 1000): ``T``.
    """
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        return _cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule '{kind}'; expected one of {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so the last step has zero SNR (Lin et al. 2023, arXiv 2305.08891, Algorithm 1).

    ``sqrt(a_t)`` is shifted so its last value is 0 and scaled so its first is
    unchanged. Train such schedules with v-prediction; sample with trailing spacing.
    """
    sqrt_ab = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


class DiscreteSchedule:
    """A discrete-time VP schedule and its sigmas.

    Attributes:
        betas (`Tensor [T]`), alphas_cumprod (`Tensor [T]`): float64.
        sigmas (`Tensor [T]`): ``sqrt((1 - a_t) / a_t)``, increasing with ``t``.
        log_sigmas (`Tensor [T]`): ``log(sigmas)``, for interpolating timesteps between sigmas.
    """

    def __init__(self, betas: Tensor):
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        ab = self.alphas_cumprod.clamp(min=MIN_ALPHA_CUMPROD)
        self.sigmas = ((1 - ab) / ab).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_name(
        cls, kind: str, num_timesteps: int = 1000, beta_start: float = 0.00085,
        beta_end: float = 0.012, zero_terminal_snr: bool = False,
    ) -> "DiscreteSchedule":
        """Build from :func:`make_betas` arguments, optionally :func:`rescale_zero_terminal_snr`."""
        betas = make_betas(kind, num_timesteps, beta_start, beta_end)
        return cls(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)

    @classmethod
    def from_config(cls, cfg: Any) -> "DiscreteSchedule":
        """From a config with ``schedule``, ``num_timesteps``, ``beta_start``, ``beta_end``,
        ``zero_terminal_snr`` (:class:`mmldm.schema.DiffusionConfig`, or its dict in an export)."""
        return cls.from_name(
            cfg["schedule"], cfg["num_timesteps"], cfg["beta_start"], cfg["beta_end"], cfg["zero_terminal_snr"]
        )

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Fractional timesteps ``t`` (any shape, in ``[0, T-1]``) -> sigmas, log-linear between steps."""
        t = t.to(self.log_sigmas).clamp(0, self.num_timesteps - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Sigmas (any shape) -> fractional timesteps, inverse of :meth:`t_to_sigma`.

        Sigmas outside ``[sigma_min, sigma_max]`` map to ``0`` or ``T - 1``.
        The result has ``sigma``'s device and dtype.
        """
        log_sigma = sigma.to(self.log_sigmas).log()
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1)
        low = high - 1
        w = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])
        return (low + w.clamp(0, 1)).to(device=sigma.device, dtype=sigma.dtype if sigma.is_floating_point() else torch.float32)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """VP coefficients ``(sqrt(a_t), sqrt(1 - a_t))`` at integer timesteps ``t`` (on ``t``'s device, float64)."""
        ab = self.alphas_cumprod.to(t.device)[t.long()]
        return ab.sqrt(), (1 - ab).sqrt()

    def timesteps_for(self, steps: int, spacing: str = "trailing") -> Tensor:
        """``steps`` descending timesteps (float64; fractional only for ``"linspace"``).

        Args:
            spacing (`str`): ``"leading"`` ``(0, r, 2r, ...)`` with ``r = T // steps`` (DDIM, Stable
                Diffusion), ``"trailing"`` ``(T-1, T-1-T/steps, ...)`` rounded (Lin et al. 2023: always
                starts at the last step) or ``"linspace"`` ``linspace(0, T-1, steps)``.
        """
        T = self.num_timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in [1, {T}] (the number of training timesteps), got {steps}")
        if spacing == "leading":
            t = torch.arange(steps, dtype=torch.float64) * (T // steps)
        elif spacing == "trailing":
            t = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1).flip(0)
        elif spacing == "linspace":
            t = torch.linspace(0, T - 1, steps, dtype=torch.float64)
        else:
            raise ValueError(f"unknown timestep spacing '{spacing}'; expected leading, trailing or linspace")
        return t.flip(0)

    def sigmas_for(self, steps: int, spacing: str = "trailing", rho: float = 7.0) -> Tensor:
        """Descending sigmas ``[steps + 1]`` (float64) ending with 0, for a sampler.

        Args:
            steps (`int`): number of model evaluations of a first-order sampler.
            spacing (`str`): one of :data:`SPACINGS`. ``"karras"`` spaces ``sigma^(1/rho)``
                uniformly between ``sigma_max`` and ``sigma_min`` (Karras et al. 2022, eq. 5);
                the others pick timesteps with :meth:`timesteps_for`.
            rho (`float`, defaults to 7): only for ``"karras"``.
        """
        if spacing not in SPACINGS:
            raise ValueError(f"unknown sigma spacing '{spacing}'; expected one of {', '.join(SPACINGS)}")
        if spacing == "karras":
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
            lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            sigmas = (hi + ramp * (lo - hi)) ** rho
        else:
            sigmas = self.t_to_sigma(self.timesteps_for(steps, spacing))
        return torch.cat([sigmas, sigmas.new_zeros(1)])
