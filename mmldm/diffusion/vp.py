"""``vp``: the discrete variance-preserving process (DDPM, Stable Diffusion) with eps, v or x0 prediction.

Notation: ``z_t = alpha_t z_0 + sigma_t eps`` with ``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)``
(``a_t`` = ``alphas_cumprod`` of a :class:`~mmldm.diffusion.schedules.DiscreteSchedule`). The network
predicts

- ``eps`` (Ho et al. 2020, arXiv 2006.11239),
- ``v = alpha_t eps - sigma_t z_0`` (Salimans & Ho 2022, arXiv 2202.00512),
- ``x0``, the clean latent itself.

Samplers see the VE space ``x = z_0 + s eps`` with ``s = sigma_t / alpha_t``; the preconditioning's
eps and v rows are k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``
(Karras et al. 2022, Table 1), ``c_noise`` the fractional training timestep of ``s``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import PREDICTIONS, WEIGHTINGS, VPConfig
from .process import Noised, Preconditioning, Process
from .schedules import DiscreteSchedule
from .utils import append_dims, randint, randn


class Prediction:
    """What a VP network predicts: its target, its inverse and its preconditioning (``c_skip``, ``c_out``)."""

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def to_x0_eps(self, pred: Tensor, z_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(x0, eps)`` of a prediction ``pred`` at ``z_t`` (uses ``alpha^2 + sigma^2 = 1``)."""
        raise NotImplementedError

    def skip_out(self, sigma: Tensor, c_in: Tensor) -> tuple[Tensor, Tensor]:
        """``(c_skip, c_out)`` at VE noise level ``sigma`` (``c_in = 1 / sqrt(sigma^2 + 1)``)."""
        raise NotImplementedError

    def min_snr(self, snr: Tensor, gamma: float) -> Tensor:
        """Min-SNR-gamma in this target's space: the x0-space weight ``min(SNR, gamma)`` divided by the
        x0-space weight of this target's error (``SNR`` for eps, ``SNR + 1`` for v)."""
        raise NotImplementedError


class Eps(Prediction):
    def target(self, x0, eps, alpha, sigma):  # noqa: ANN001, ANN201 - see Prediction
        return eps

    def to_x0_eps(self, pred, z_t, alpha, sigma):  # noqa: ANN001, ANN201
        return (z_t - sigma * pred) / alpha, pred

    def skip_out(self, sigma, c_in):  # noqa: ANN001, ANN201
        return torch.ones_like(sigma), -sigma

    def min_snr(self, snr, gamma):  # noqa: ANN001, ANN201
        return (gamma / snr).clamp(max=1.0)  # min(snr, gamma) / snr, finite at snr = 0


class V(Prediction):
    def target(self, x0, eps, alpha, sigma):  # noqa: ANN001, ANN201
        return alpha * eps - sigma * x0

    def to_x0_eps(self, pred, z_t, alpha, sigma):  # noqa: ANN001, ANN201
        return alpha * z_t - sigma * pred, sigma * z_t + alpha * pred

    def skip_out(self, sigma, c_in):  # noqa: ANN001, ANN201
        return c_in**2, -sigma * c_in

    def min_snr(self, snr, gamma):  # noqa: ANN001, ANN201
        return snr.clamp(max=gamma) / (snr + 1)


class X0(Prediction):
    def target(self, x0, eps, alpha, sigma):  # noqa: ANN001, ANN201
        return x0

    def to_x0_eps(self, pred, z_t, alpha, sigma):  # noqa: ANN001, ANN201
        return pred, (z_t - alpha * pred) / sigma

    def skip_out(self, sigma, c_in):  # noqa: ANN001, ANN201
        return torch.zeros_like(sigma), torch.ones_like(sigma)

    def min_snr(self, snr, gamma):  # noqa: ANN001, ANN201
        return snr.clamp(max=gamma)


#: Prediction name -> what it means (the names of :data:`~mmldm.diffusion.config.PREDICTIONS`).
PREDICTION: dict[str, Prediction] = {"eps": Eps(), "v": V(), "x0": X0()}
assert tuple(PREDICTION) == PREDICTIONS


def _prediction(name: str) -> Prediction:
    if name not in PREDICTION:
        raise ValueError(f"unknown prediction '{name}'; expected one of {', '.join(PREDICTIONS)}")
    return PREDICTION[name]


def convert(pred: Tensor, z_t: Tensor, alpha: Tensor, sigma: Tensor, source: str, target: str) -> Tensor:
    """Turn a ``source`` prediction at ``z_t = alpha x0 + sigma eps`` into the ``target`` one (broadcastable)."""
    x0, eps = _prediction(source).to_x0_eps(pred, z_t, alpha, sigma)
    return _prediction(target).target(x0, eps, alpha, sigma)


class VPProcess(Process):
    """The VP process over a discrete schedule.

    Args:
        schedule (`DiscreteSchedule`): the betas and their sigmas.
        prediction (`str`, defaults to ``"eps"``): ``eps``, ``v`` or ``x0``.
        weighting (`str`, defaults to ``"uniform"``): ``uniform`` or ``min_snr`` (Min-SNR-gamma,
            Hang et al. 2023, arXiv 2303.09556, with ``min_snr_gamma``).

    Training draws ``t ~ U{0, ..., T-1}`` and ``eps ~ N(0, I)``; the network gets ``z_t`` and ``t``.
    """

    spacings = VPConfig.spacings

    def __init__(self, schedule: DiscreteSchedule, prediction: str = "eps", weighting: str = "uniform",
                 min_snr_gamma: float = 5.0):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting '{weighting}'; expected one of {', '.join(WEIGHTINGS)}")
        self.schedule, self.prediction = schedule, _prediction(prediction)
        self.prediction_name, self.weighting, self.min_snr_gamma = prediction, weighting, min_snr_gamma

    @classmethod
    def from_config(cls, cfg: VPConfig) -> "VPProcess":
        schedule = DiscreteSchedule.from_name(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end,
                                              cfg.zero_terminal_snr)
        return cls(schedule, cfg.prediction, cfg.weighting, cfg.min_snr_gamma)

    def loss_weight(self, alphas_cumprod: Tensor) -> Tensor:
        """Per-sample weight of the MSE on the prediction's target at ``a_t`` (``[B]``)."""
        if self.weighting == "uniform":
            return torch.ones_like(alphas_cumprod)
        return self.prediction.min_snr(alphas_cumprod / (1 - alphas_cumprod), self.min_snr_gamma)

    def noise(self, z0: Tensor, generator: torch.Generator | None = None) -> Noised:
        t = randint(self.schedule.num_timesteps, z0.shape[0], z0.device, generator)
        eps = randn(z0.shape, z0, generator)
        ab = self.schedule.alphas_cumprod.to(z0.device)[t]
        alpha, sigma = (append_dims(c.to(z0.dtype), z0.ndim) for c in (ab.sqrt(), (1 - ab).sqrt()))
        target = self.prediction.target(z0, eps, alpha, sigma)
        sigma_ve = self.schedule.sigmas.to(z0.device)[t].to(z0.dtype)  # sqrt((1 - a_t) / a_t)
        return Noised(alpha * z0 + sigma * eps, t.to(z0.dtype), target, self.loss_weight(ab), sigma_ve)

    def precondition(self, sigma: Tensor) -> Preconditioning:
        # c_in maps x back to the VP z_t the network was trained on
        c_in = (sigma**2 + 1).rsqrt()
        c_skip, c_out = self.prediction.skip_out(sigma, c_in)
        return Preconditioning(c_skip, c_out, c_in, self.schedule.sigma_to_t(sigma))

    def _sigmas(self, steps: int, spacing: str) -> Tensor:
        return self.schedule.sigmas_for(steps, spacing)

    def __repr__(self) -> str:
        return f"VPProcess(prediction={self.prediction_name!r}, weighting={self.weighting!r}, T={self.schedule.num_timesteps})"

