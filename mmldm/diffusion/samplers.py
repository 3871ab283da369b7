"""Samplers: pure functions over a denoiser, in k-diffusion's sigma space.

Every sampler has one contract::

    sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None, **opts)

- ``model(x, sigma, **extra_args)`` returns the denoised ``x0`` estimate for
  ``x [B, C, *spatial]`` at noise level ``sigma [B]`` (see
  :class:`~mmldm.diffusion.process.ProcessDenoiser` and
  :func:`~mmldm.diffusion.guidance.cfg_denoiser`);
- ``x`` is the initial noise already scaled by ``sigmas[0]``;
- ``sigmas`` is descending and ends with 0 (:meth:`mmldm.diffusion.process.Process.sigmas`);
- ``callback`` receives ``{"x", "i", "sigma", "sigma_next", "denoised"}`` after each step;
- ``disable`` turns the tqdm progress bar off;
- ``generator`` is the noise source of stochastic samplers. A run and :meth:`mmldm.LatentDiffusion.sample`
  pass a *list* with one ``torch.Generator`` per sample
  (:func:`~mmldm.diffusion.sampling.sample_generators`, which also drew the starting noise ``x``), or
  ``None`` without a seed; ``DiffusionModule.sample`` may pass one generator. Draw noise with
  :func:`randn` (``randn(x.shape, x, generator)``): it takes all three and draws row ``i`` from
  ``generator[i]``, so sample ``i`` depends on its own generator only, in any batch;
- ``**opts`` are the sampler's own options: the fields of its config (a dataclass derived from
  :class:`~mmldm.diffusion.config.SamplerConfig`, or ``sampler.steps`` is no key of it) beyond
  ``name``, ``steps`` and ``spacing``, passed by name (``sampler.eta=0.5`` gives ``eta=0.5``;
  :func:`~mmldm.diffusion.sampling.sampler_settings`).

A run calls ``sampler(model, x, sigmas, generator=..., disable=..., **opts)``
(:func:`~mmldm.diffusion.sampling.sample_latents`): guidance and conditioning live inside ``model``.
:class:`mmldm.testing.SamplerContract` calls a sampler the same way and checks it.

Helpers for writing one: :func:`randn` (noise, one generator per sample), :func:`append_dims`
(``sigma [B]`` to ``[B, 1, ..., 1]``), :func:`ancestral_step` (the deterministic and the fresh-noise part
of a stochastic step); :func:`get_sampler` finds a registered sampler by name.

In this space ``x = z_0 + sigma eps``: the VP latent ``z_t`` divided by ``sqrt(a_t)`` (so DDPM and
DDIM steps are exact rewrites of their VP updates), the flow latent divided by ``1 - t``, EDM's
``x`` itself. Every process maps to it, so every sampler runs with every process.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import trange

from .utils import append_dims, randn

__all__ = [
    "ancestral_step", "append_dims", "get_sampler", "randn", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
    "sample_euler", "sample_heun",
]

Model = Callable[..., Tensor]


def _to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def _steps(sigmas: Tensor, disable: bool | None):
    return trange(len(sigmas) - 1, disable=disable, desc="sampling", leave=False)


def _report(callback, x, i, sigma, sigma_next, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(sigma_down, sigma_up)`` of a stochastic step from ``sigma`` to ``sigma_next``.

    ``sigma_up = eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma`` is DDIM's
    ``sigma_t(eta)`` (Song et al. 2021, arXiv 2010.02502, eq. 16) divided by
    ``sqrt(a_next)``; ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)``.
    """
    if float(sigma_next) == 0:
        return sigma_next, sigma_next
    # written with ratios, so that no sigma is squared (sigma^2 overflows float16 from sigma 256)
    sigma_up = (eta * sigma_next * (1 - (sigma_next / sigma) ** 2).clamp(min=0).sqrt()).clamp(max=sigma_next)
    return sigma_next * (1 - (sigma_up / sigma_next) ** 2).sqrt(), sigma_up


@torch.no_grad()
def sample_euler(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                 callback=None, disable: bool | None = None, generator=None) -> Tensor:
    """Euler steps on the probability-flow ODE.

    Implements Algorithm 2 (Euler steps) from Karras et al. (2022), arXiv 2206.00364,
    without churn. With VP-derived sigmas this equals deterministic DDIM. The step
    ``x + d (sigma_next - sigma)`` is computed as ``D + d sigma_next`` (the same number), which keeps
    its precision when ``sigma`` is large: ``x`` of size ``sigma`` is not added to a nearly opposite term.
    """
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = denoised + _to_d(x, sigmas[i] * s_in, denoised) * sigmas[i + 1]
        _report(callback, x, i, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_heun(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback=None, disable: bool | None = None, generator=None) -> Tensor:
    """Heun's second-order method on the probability-flow ODE.

    Implements Algorithm 2 (Heun steps) from Karras et al. (2022), arXiv 2206.00364,
    without churn; the last step (to sigma 0) is an Euler step. Uses ``2 * steps - 1``
    model evaluations.
    """
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = _to_d(x, sigmas[i] * s_in, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if float(sigmas[i + 1]) == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = _to_d(x_2, sigmas[i + 1] * s_in, denoised_2)
            x = x + (d + d_2) / 2 * dt
        _report(callback, x, i, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_ddim(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback=None, disable: bool | None = None, generator=None, eta: float = 0.0) -> Tensor:
    """Denoising diffusion implicit models (Song et al. 2021, arXiv 2010.02502, eq. 12).

    In sigma space the update ``x_next = x0 + sigma_down eps + sigma_up noise`` with
    ``eps = (x - x0) / sigma`` and :func:`ancestral_step` is exactly DDIM's; ``eta = 0``
    is deterministic (and equals :func:`sample_euler`), ``eta = 1`` is DDPM's posterior.
    """
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + _to_d(x, sigmas[i] * s_in, denoised) * sigma_down
        if float(sigma_up) > 0:
            x = x + randn(x.shape, x, generator) * sigma_up
        _report(callback, x, i, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_ddpm(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback=None, disable: bool | None = None, generator=None) -> Tensor:
    """Ancestral sampling from the DDPM posterior (Ho et al. 2020, arXiv 2006.11239, Algorithm 2).

    Each step draws from ``q(x_next | x, x0 = D(x, sigma))``. In sigma space the forward
    process has independent increments (``x_sigma = x_next + sqrt(sigma^2 - sigma_next^2) n``),
    so the posterior is the Brownian bridge

        ``N(x0 + (sigma_next / sigma)^2 (x - x0),  sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)``,

    which is Ho et al.'s ``mu~_t`` and ``beta~_t`` ("fixed small" variance) divided by
    ``sqrt(a_next)``, for strided timesteps too (the step's beta is ``1 - a_t / a_next``).
    """
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        x = denoised + (sigma_next / sigma) ** 2 * (x - denoised)
        if float(sigma_next) > 0:
            std = sigma_next * (1 - (sigma_next / sigma) ** 2).sqrt()  # no sigma^2: finite in float16
            x = x + randn(x.shape, x, generator) * std
        _report(callback, x, i, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                    callback=None, disable: bool | None = None, generator=None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), multistep, data prediction.

    With ``lambda = -log(sigma)`` and ``h = lambda_next - lambda``, each step is
    ``x_next = (sigma_next / sigma) x - expm1(-h) D`` where ``D`` is the denoised estimate,
    extrapolated with the previous one as ``(1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`` (``r = h_prev / h``).
    The first step and the step to sigma 0 are first order.
    """
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if float(sigma_next) == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * d
            h_last = h
        old_denoised = denoised
        _report(callback, x, i, sigma, sigma_next, denoised)
    return x


def get_sampler(name: str) -> Callable[..., Any]:
    """The sampler function registered as ``name`` (kind ``sampler``: the built-ins of
    :data:`mmldm.diffusion.plugin.SAMPLERS` and any plugin's); a ``ValueError`` lists the choices otherwise."""
    from ..plugins import registry
    from ..registry import RegistryError

    try:
        return registry().get("sampler", name).resolve()
    except RegistryError as e:
        raise ValueError(f"unknown sampler '{name}'; expected one of {', '.join(registry().names('sampler'))}") from e
