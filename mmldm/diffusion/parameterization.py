"""What the network predicts (eps, v or x0), its sigma-space wrapper and the training loss.

Notation (VP): ``z_t = alpha_t z_0 + sigma_t eps`` with ``alpha_t = sqrt(a_t)``,
``sigma_t = sqrt(1 - a_t)``. The network may predict

- ``eps`` (Ho et al. 2020, arXiv 2006.11239),
- ``v = alpha_t eps - sigma_t z_0`` (Salimans & Ho 2022, arXiv 2202.00512),
- ``x0``, the clean latent itself.

Samplers work in the VE space ``x = z_0 + s eps`` with ``s = sigma_t / alpha_t``;
:class:`DenoiserWrapper` turns the network into the denoiser
``D(x, s) = c_skip x + c_out F(c_in x, c_noise)`` (Karras et al. 2022, arXiv 2206.00364, Table 1;
the eps and v rows are k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from einops import reduce
from torch import Tensor, nn

from .schedules import DiscreteSchedule
from .utils import append_dims, randint, randn

#: Names of the supported parameterizations.
PARAMETERIZATIONS = ("eps", "v", "x0")
#: Names of the supported loss weightings.
WEIGHTINGS = ("uniform", "min_snr")


def check_parameterization(name: str) -> str:
    """Return ``name`` if it is one of :data:`PARAMETERIZATIONS`, else raise a ``ValueError`` naming them."""
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization '{name}'; expected one of {', '.join(PARAMETERIZATIONS)}")
    return name


def _from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, param: str) -> Tensor:
    if param == "eps":
        return eps
    if param == "x0":
        return x0
    return alpha * eps - sigma * x0


def prediction_target(z0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor, param: str) -> Tensor:
    """The regression target of ``param`` for ``z_t = alpha z0 + sigma noise`` (alpha, sigma broadcastable)."""
    return _from_x0_eps(z0, noise, alpha, sigma, check_parameterization(param))


def convert(pred: Tensor, z_t: Tensor, alpha: Tensor, sigma: Tensor, source: str, target: str) -> Tensor:
    """Turn a ``source`` prediction at ``z_t`` into the ``target`` one (all VP, broadcastable).

    Uses ``z_t = alpha x0 + sigma eps`` and ``alpha^2 + sigma^2 = 1``.
    """
    check_parameterization(target)
    if check_parameterization(source) == "eps":
        x0, eps = (z_t - sigma * pred) / alpha, pred
    elif source == "x0":
        x0, eps = pred, (z_t - alpha * pred) / sigma
    else:  # v
        x0, eps = alpha * z_t - sigma * pred, sigma * z_t + alpha * pred
    return _from_x0_eps(x0, eps, alpha, sigma, target)


def scalings(sigma: Tensor, param: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in)`` for VE noise level ``sigma`` so that ``D = c_skip x + c_out F(c_in x)``.

    ``c_in = 1 / sqrt(sigma^2 + 1)`` maps ``x`` back to the VP ``z_t`` the network was trained on.
    """
    c_in = (sigma**2 + 1).rsqrt()
    if check_parameterization(param) == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if param == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
    return c_in**2, -sigma * c_in, c_in


class DenoiserWrapper(nn.Module):
    """Map a network ``F(z_t, t, **extra)`` to the sigma-space denoiser ``D(x, sigma, **extra) -> x0``.

    Args:
        model (`nn.Module`): e.g. a :class:`mmldm.interfaces.Denoiser` (``extra`` then holds
            ``conditioning=...``).
        schedule (`DiscreteSchedule`): gives ``c_noise = t(sigma)``, the fractional timestep.
        parameterization (`str`): what ``model`` predicts, one of :data:`PARAMETERIZATIONS`.

    ``x [B, C, *spatial]``, ``sigma [B]`` (or a scalar); returns ``[B, C, *spatial]``.
    """

    def __init__(self, model: nn.Module, schedule: DiscreteSchedule, parameterization: str = "eps"):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.parameterization = check_parameterization(parameterization)

    def forward(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in scalings(sigma, self.parameterization))
        t = self.schedule.sigma_to_t(sigma)
        return c_skip * x + c_out * self.model(x * c_in, t, **extra)


def loss_weight(alphas_cumprod: Tensor, param: str, weighting: str, gamma: float = 5.0) -> Tensor:
    """Per-sample weight of the MSE on the ``param`` target at ``a_t`` (``[B]``).

    ``"min_snr"`` is Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556): the x0-space weight
    ``min(SNR, gamma)``, divided by ``SNR`` for eps and ``SNR + 1`` for v targets.
    """
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod)
    if weighting != "min_snr":
        raise ValueError(f"unknown loss weighting '{weighting}'; expected one of {', '.join(WEIGHTINGS)}")
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if check_parameterization(param) == "eps":
        return (gamma / snr).clamp(max=1.0)  # min(snr, gamma) / snr, finite at snr = 0
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if param == "v" else clipped


def diffusion_loss(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    z0: Tensor,
    schedule: DiscreteSchedule,
    param: str = "eps",
    weighting: str = "uniform",
    generator: torch.Generator | None = None,
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """Denoising loss per sample ``[B]`` for clean latents ``z0 [B, C, *spatial]``.

    Draws ``t ~ U{0, ..., T-1}`` and ``eps ~ N(0, I)``, forms ``z_t`` and regresses
    ``model_fn(z_t, t)`` (``t`` float ``[B]``) onto the ``param`` target with :func:`loss_weight`
    (Ho et al. 2020, Algorithm 1). The squared error is averaged over all but the batch axis.
    """
    t = randint(schedule.num_timesteps, z0.shape[0], z0.device, generator)
    noise = randn(z0.shape, z0, generator)
    ab = schedule.alphas_cumprod.to(z0.device)[t]
    alpha, sigma = (append_dims(c.to(z0.dtype), z0.ndim) for c in (ab.sqrt(), (1 - ab).sqrt()))
    pred = model_fn(alpha * z0 + sigma * noise, t.to(z0.dtype))
    target = prediction_target(z0, noise, alpha, sigma, param)
    dtype = torch.promote_types(pred.dtype, torch.float32)  # half-precision predictions: loss in float32
    mse = reduce((pred.to(dtype) - target.to(dtype)) ** 2, "b ... -> b", "mean")
    return mse * loss_weight(ab, param, weighting, min_snr_gamma).to(mse)
