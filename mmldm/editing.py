"""Editing what exists, in latent space, for latents of any dimension: inpainting (masked generation),
variations (SDEdit / img2img) and interpolation, through the same processes, samplers and conditioners as
generation from scratch. :class:`~mmldm.pipeline.LatentDiffusion` exposes them as
:meth:`~mmldm.pipeline.LatentDiffusion.inpaint`, :meth:`~mmldm.pipeline.LatentDiffusion.vary` and
:meth:`~mmldm.pipeline.LatentDiffusion.interpolate`; ``mmldm edit`` on the command line.

Masks follow diffusers' convention: **1 marks what to generate, 0 what to keep**.

**Inpainting without training** (:func:`masked_sample`). Every sampler steps in the variance-exploding view
``x = z0 + sigma eps`` and calls the denoiser ``D(x, sigma) -> z0``. The denoiser is wrapped so that in the
kept region it returns the known latent: ``D' = keep z_known + (1 - keep) D``. Each sampler's update moves
``x`` towards ``D'``, so the kept region stays a sample of ``z_known + sigma eps`` at every step's level
(the noise being the sampler's own) and equals ``z_known`` at the end (every sampler's last step to
``sigma = 0`` returns ``D'``). This holds for any sampler that steps along the grid towards the denoised
estimate (first or higher order, deterministic or ancestral); :class:`mmldm.testing.SamplerContract` checks it
for each sampler. RePaint's resampling (Lugmayr et al. 2022, arXiv 2201.09865) is the ``resample`` option:
after ``jump_length`` steps the latent is noised back up to where they started (fresh noise of variance
``sigma_start^2 - sigma_end^2``) and the steps are taken again, ``resample`` times in all, which lets the
generated region agree with the kept one.

Replacing the estimate tells the generated region about the kept one only through the noisy latent ``x``,
which at high noise says little: the replacement method's completions often do not join the kept part (Ho et
al. 2022, "Video Diffusion Models", arXiv 2204.03458, sec. 3.1). **Reconstruction guidance**
(``reconstruction_guidance = w > 0``) corrects the estimate along the gradient of the kept region's error,
weighted as in ΠGDM (Song et al. 2023, "Pseudoinverse-Guided Diffusion Models for Inverse Problems", ICLR; the
inpainting operator is its own pseudoinverse): ``D'(x) = D(x) + w (1 + sigma^2) J^T (keep (z_known - D(x)))``
with ``J = dD/dx``, one vector-Jacobian product (a backward pass through the denoiser) per evaluation.
``sigma^2 / (1 + sigma^2)`` is ΠGDM's variance of the clean latent given ``x`` for unit-variance latents
(mmldm normalizes latents to unit variance) and ``sigma^2`` turns a correction of the score into one of the
denoised estimate (``D = x + sigma^2 grad log p(x)``).

A data-space mask reaches latent resolution by its area fraction per latent cell (:func:`latent_mask`):
rule ``any`` (default) generates a latent cell as soon as one of its data cells is masked, ``all`` only when
all are, ``soft`` uses the fraction as a blend weight. The decoded result is blended back at data
resolution (:func:`blend`), so the kept region of the output is the input's own.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion.utils import append_dims, randn

#: How a latent cell that covers masked and kept data cells is treated: generated (``any``), kept (``all``) or
#: blended by the masked area's fraction (``soft``).
MASK_RULES = ("any", "all", "soft")

#: ``LatentDiffusion.inpaint``'s methods: masked sampling with any model, or a model trained with ``conditioner=inpaint``.
INPAINT_METHODS = ("training_free", "trained")

Generator = torch.Generator | Sequence[torch.Generator] | None


def check_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """``mask`` as a float ``[B, 1 or C, *s]`` tensor for inputs ``like [B, C, *s]``.

    Accepts ``[B, 1 or C, *s]`` or ``[1 or C, *s]`` (one mask for the whole batch) with values in [0, 1];
    a ``ValueError`` names the shapes otherwise.
    """
    mask = torch.as_tensor(mask)
    given = tuple(mask.shape)
    if mask.ndim == like.ndim - 1:
        mask = mask.unsqueeze(0)
    spatial_ok = mask.ndim == like.ndim and tuple(mask.shape[2:]) == tuple(like.shape[2:])
    if not spatial_ok or mask.shape[0] not in (1, like.shape[0]) or mask.shape[1] not in (1, like.shape[1]):
        raise ValueError(f"{name} of shape {given} does not fit inputs of shape {tuple(like.shape)}: "
                         f"expected [B or 1, 1 or {like.shape[1]}, {', '.join(map(str, like.shape[2:]))}] "
                         "(1 = generate, 0 = keep)")
    mask = mask.to(device=like.device, dtype=torch.float32)
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"{name} holds values outside [0, 1] (min {float(mask.min()):g}, max {float(mask.max()):g}): "
                         "expected 1 = generate, 0 = keep")
    return mask.expand(like.shape[0], *mask.shape[1:])


def latent_mask(mask: Tensor, latent_spatial: Sequence[int], rule: str = "any") -> Tensor:
    """Carry a data-space mask ``[B, 1 or C, *s]`` (1 = generate) to latent resolution ``[B, 1, *latent_spatial]``.

    A data location is to be generated when any of its channels is. Each latent cell gets the fraction of
    its data cells that are masked (area pooling, ``torch.nn.functional.interpolate(mode="area")``, any of
    1, 2 or 3 spatial dims), then ``rule``: ``any`` -> 1 if the fraction is above 0, ``all`` -> 1 if it is 1,
    ``soft`` -> the fraction itself.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule '{rule}'; expected one of {', '.join(MASK_RULES)}")
    if mask.ndim - 2 != len(latent_spatial):
        raise ValueError(f"a mask with {mask.ndim - 2} spatial axes cannot be carried to a latent of spatial shape "
                         f"{tuple(latent_spatial)}")
    m = mask.float().amax(dim=1, keepdim=True)
    fraction = F.interpolate(m, size=tuple(latent_spatial), mode="area")
    eps = 1e-6  # area pooling sums in float32: a fully masked cell may read 0.9999999
    if rule == "any":
        return (fraction > eps).float()
    if rule == "all":
        return (fraction >= 1 - eps).float()
    return fraction.clamp(0, 1)


def inpaint_condition(z: Tensor, mask: Tensor) -> Tensor:
    """The condition of trained inpainting (conditioner ``inpaint``; Stable Diffusion's inpainting input):
    ``cat(z (1 - mask), mask)`` ``[B, c + 1, *s]`` of latents ``z [B, c, *s]`` and a latent mask ``[B, 1, *s]``
    (1 = generate)."""
    mask = mask.to(z.dtype)
    return torch.cat([z * (1 - mask), mask], dim=1)


def blend(x: Tensor, generated: Tensor, mask: Tensor) -> Tensor:
    """``mask * generated + (1 - mask) * x``: the kept region (mask 0) is ``x``'s own."""
    return torch.lerp(x, generated, mask.to(generated.dtype))


class KeepKnown(nn.Module):
    """The sigma-space denoiser ``model(x, sigma, **extra) -> z0`` with the kept region replaced by the known
    latent: ``keep z_known + (1 - keep) model(x, sigma)`` (``keep = 1 - latent mask``).

    ``reconstruction_guidance = w > 0`` first adds ``w (1 + sigma^2) J^T (keep (z_known - D_l))`` (ΠGDM's
    reconstruction guidance, module docstring), moving the generated region towards what agrees with the kept
    one. ``D_l`` and ``J = dD_l/dx`` are those of ``likelihood_model`` (default: ``model``): under
    classifier-free guidance pass the conditional model, whose estimate is a posterior mean, because the
    guided combination's Jacobian is scaled up by the guidance weight and over-corrects.
    """

    def __init__(self, model: Callable[..., Tensor], z_known: Tensor, keep: Tensor,
                 reconstruction_guidance: float = 0.0, likelihood_model: Callable[..., Tensor] | None = None):
        super().__init__()
        if not reconstruction_guidance >= 0:
            raise ValueError(f"reconstruction_guidance must be >= 0 (0 = off), got {reconstruction_guidance}")
        self.model, self.z_known, self.keep = model, z_known, keep
        self.reconstruction_guidance = float(reconstruction_guidance)
        self.likelihood_model = likelihood_model

    def forward(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        if not self.reconstruction_guidance:
            denoised = self.model(x, sigma, **extra)
        elif self.likelihood_model is None:
            denoised, correction = self._correction(self.model, x, sigma, **extra)
            denoised = denoised + correction
        else:
            with torch.no_grad():
                denoised = self.model(x, sigma, **extra)
            denoised = denoised + self._correction(self.likelihood_model, x, sigma, **extra)[1]
        return torch.lerp(denoised, self.z_known.to(denoised.dtype), self.keep.to(denoised.dtype))

    def _correction(self, model: Callable[..., Tensor], x: Tensor, sigma: Tensor, **extra: Any) -> tuple[Tensor, Tensor]:
        """``(D, w (1 + sigma^2) J^T (keep (z_known - D)))`` of ``model``, the vector-Jacobian product by autograd."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            denoised = model(x_in, sigma, **extra)
            residual = (self.keep.to(denoised.dtype) * (self.z_known.to(denoised.dtype) - denoised)).detach()
            (vjp,) = torch.autograd.grad(denoised, x_in, grad_outputs=residual)
        weight = self.reconstruction_guidance * (1 + append_dims(sigma.to(x.dtype), x.ndim) ** 2)
        return denoised.detach(), weight * vjp.to(denoised.dtype)


def masked_sample(
    sample_fn: Callable[..., Tensor],
    model: Callable[..., Tensor],
    z_known: Tensor,
    mask: Tensor,
    sigmas: Tensor,
    generator: Generator = None,
    resample: int = 1,
    jump_length: int = 1,
    progress: bool = False,
    extra_args: Mapping[str, Any] | None = None,
    reconstruction_guidance: float = 0.0,
    likelihood_model: Callable[..., Tensor] | None = None,
    **sampler_options: Any,
) -> Tensor:
    """Inpaint latents with any sampler: keep ``z_known [B, c, *s]`` where ``mask [B, 1, *s]`` is 0, generate
    where it is 1 (values between blend), stepping along ``sigmas`` (descending, ending in 0).

    Args:
        sample_fn: a sampler ``(model, x, sigmas, extra_args, callback, disable, generator, **options)``.
        model: the sigma-space denoiser ``D(x, sigma, **extra) -> z0`` (guidance included).
        generator: one generator, one per sample, or None: the starting noise and every fresh noise.
        resample (`int`, defaults to 1): how many times each stretch of ``jump_length`` steps is taken
            (RePaint's ``r``); 1 is plain masked sampling. The last stretch (ending at sigma 0) is taken once.
        jump_length (`int`, defaults to 1): steps per stretch (RePaint's ``j``). A multistep sampler keeps its
            history within a stretch only.
        reconstruction_guidance (`float`, defaults to 0): the weight of ΠGDM's reconstruction guidance (module
            docstring); 0 is plain replacement, 1 the published weighting. Each evaluation of ``model`` then
            adds a backward pass through it.
        likelihood_model: the denoiser whose estimate and Jacobian reconstruction guidance uses (default
            ``model``); with classifier-free guidance, the conditional model (:class:`KeepKnown`).
    """
    if resample < 1 or jump_length < 1:
        raise ValueError(f"resample and jump_length must be >= 1, got resample={resample}, jump_length={jump_length}")
    keep = 1 - mask.to(z_known.dtype)
    wrapped = KeepKnown(model, z_known, keep, reconstruction_guidance, likelihood_model)
    # the start: the known latent noised to sigmas[0] where kept, pure noise (as in generation) elsewhere
    x = keep * z_known + randn(z_known.shape, z_known, generator) * sigmas[0]
    options = {"extra_args": dict(extra_args or {}), "generator": generator, **sampler_options}
    if resample == 1:
        return sample_fn(wrapped, x, sigmas, disable=not progress, **options)
    steps = len(sigmas) - 1
    stretches = [(i, min(i + jump_length, steps)) for i in range(0, steps, jump_length)]
    bar = _progress(len(stretches), progress)
    for start, end in stretches:
        segment = sigmas[start:end + 1]
        for attempt in range(resample):
            x = sample_fn(wrapped, x, segment, disable=True, **options)
            if attempt == resample - 1 or float(segment[-1]) == 0:
                break
            x = x + randn(x.shape, x, generator) * (segment[0] ** 2 - segment[-1] ** 2).sqrt()
        bar.update()
    bar.close()
    return x


def condition_scores(
    model: Callable[..., Tensor],
    z: Tensor,
    keep: Tensor,
    candidates: Sequence[Mapping[str, Any]],
    sigmas: Tensor,
    generator: Generator = None,
    progress: bool = False,
) -> Tensor:
    """The model as a classifier of its own conditions: an estimate of ``-log p(z_keep | candidate)`` per item and
    candidate, ``[B, K]`` (lower = more likely), from denoising errors (Li et al. 2023, "Your Diffusion Model is
    Secretly a Zero-Shot Classifier", arXiv 2303.16203; Clark & Jaini 2023).

    At each noise level ``sigma`` of ``sigmas`` (descending, > 0) one noise draw ``eps`` is shared by all candidates
    (a paired comparison, which removes most of the Monte Carlo variance between candidates). The kept region of
    the input is ``z + sigma eps``; the rest, about which nothing is known, is a draw of the unit-variance latents'
    marginal at that level, ``sqrt(1 + sigma^2) eps'``. The candidate's error is the kept region's
    ``|z - D(x, sigma)|^2 / sigma^2`` (the noise-prediction error). Summed over ``log sigma`` by the trapezoid rule
    this is the continuous-time variational bound on ``-log p`` (Kingma et al. 2021, "Variational Diffusion
    Models": ``-d SNR`` with ``SNR = sigma^-2`` is ``2 sigma^-2 d log sigma``) up to terms that do not depend on the
    candidate, so ``log_softmax(-scores)`` is the posterior over the candidates under a uniform prior.

    Args:
        model: the sigma-space denoiser ``D(x, sigma, **extra) -> z0`` (no guidance: guidance is not a likelihood).
        z (`Tensor [B, c, *s]`): normalized latents.
        keep (`Tensor [B or 1, 1, *s]`): 1 where the latent is known (``1 - latent_mask``), 0 where not; all ones
            to score whole inputs.
        candidates: the ``extra`` keyword arguments of ``model`` for each candidate (e.g. ``{"conditioning": ...}``).
        sigmas (`Tensor [L]`): the noise levels, descending and > 0; more levels, less variance.
        generator: one generator, one per item, or None.
    """
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2 or not bool((sigmas > 0).all()) or not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError(f"condition_scores needs at least 2 descending noise levels > 0, got {sigmas.tolist()}")
    if not candidates:
        raise ValueError("condition_scores needs at least one candidate")
    keep = keep.to(z.dtype)
    log_sigma = sigmas.double().log()
    step = log_sigma[:-1] - log_sigma[1:]
    weights = torch.zeros_like(log_sigma)  # the trapezoid rule over log sigma
    weights[:-1] += step / 2
    weights[1:] += step / 2
    scores = torch.zeros(z.shape[0], len(candidates), dtype=torch.float64, device=z.device)
    bar = _progress(len(sigmas) * len(candidates), progress, unit="evaluation")
    for sigma, weight in zip(sigmas.to(z.device, z.dtype), weights.tolist()):
        known = z + sigma * randn(z.shape, z, generator)
        unknown = randn(z.shape, z, generator) * (1 + sigma ** 2).sqrt()
        x = torch.lerp(unknown, known, keep)
        for k, extra in enumerate(candidates):
            denoised = model(x, sigma.expand(z.shape[0]), **extra)
            error = (keep * (denoised.to(z.dtype) - z)) ** 2
            scores[:, k] += weight * error.flatten(1).sum(1).double() / float(sigma) ** 2
            bar.update()
    bar.close()
    return scores


def _progress(total: int, enabled: bool, unit: str = "stretch"):  # noqa: ANN202 - a tqdm bar
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit=unit, leave=False)


def strength_sigmas(sigmas: Tensor, strength: float) -> Tensor:
    """The tail of a sampling grid ``sigmas [steps + 1]`` that a variation of ``strength`` in (0, 1] takes:
    the last ``int(steps * strength)`` steps (diffusers' img2img rule); strength 1 is the whole grid."""
    steps = len(sigmas) - 1
    if not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    taken = min(int(steps * strength), steps)
    if taken < 1:
        raise ValueError(f"strength {strength} of {steps} steps takes no step: raise strength or steps "
                         f"(at least {1 / steps:.3g} for {steps} steps)")
    return sigmas[steps - taken:]


def noised_start(z: Tensor, sigmas: Tensor, generator: Generator = None) -> Tensor:
    """``z + sigmas[0] eps``: a latent noised to the first level of a (shortened) grid."""
    return z + randn(z.shape, z, generator) * sigmas[0]


@torch.no_grad()
def invert(model: Callable[..., Tensor], z: Tensor, sigmas: Tensor, extra_args: Mapping[str, Any] | None = None,
           progress: bool = False) -> Tensor:
    """Deterministic inversion (DDIM inversion, Song et al. 2021, arXiv 2010.02502, sec. 4.3; in sigma space):
    run the probability-flow ODE with Euler steps *up* the grid ``sigmas`` (descending, ending in 0) from the
    clean latent ``z`` to the noise at ``sigmas[0]`` that Euler sampling along the same grid maps back to
    (about) ``z``. The first step evaluates the denoiser at the smallest positive level."""
    extra = dict(extra_args or {})
    levels = sigmas.flip(0)  # ascending, from 0
    x, s_in = z, z.new_ones([z.shape[0]])
    from tqdm.auto import tqdm

    for i in tqdm(range(len(levels) - 1), disable=not progress, leave=False):
        here = levels[i] if float(levels[i]) > 0 else levels[i + 1]
        denoised = model(x, here * s_in, **extra)
        d = (x - denoised) / here
        x = denoised + d * levels[i + 1]
    return x


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between ``a`` and ``b`` (per sample, over all but the batch axis) at ``t`` in
    [0, 1] (Shoemake 1985); linear where the two are (nearly) parallel. Keeps the norm of Gaussian noise."""
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1)).clamp_min(1e-12)
    theta = cos.clamp(-1, 1).acos()
    sin = theta.sin()
    parallel = sin.abs() < 1e-6
    wa = torch.where(parallel, 1 - t, ((1 - t) * theta).sin() / sin.where(~parallel, torch.ones_like(sin)))
    wb = torch.where(parallel, torch.full_like(sin, t), (t * theta).sin() / sin.where(~parallel, torch.ones_like(sin)))
    out = append_dims(wa, a.ndim) * a.double() + append_dims(wb, a.ndim) * b.double()
    return out.to(a.dtype)


def interpolation_weights(n: int) -> list[float]:
    """``n >= 2`` evenly spaced weights from 0 to 1 (both inputs included)."""
    if n < 2:
        raise ValueError(f"an interpolation needs n >= 2 frames (both ends included), got {n}")
    return [i / (n - 1) for i in range(n)]


__all__ = [
    "INPAINT_METHODS", "MASK_RULES", "KeepKnown", "blend", "check_mask", "inpaint_condition", "interpolation_weights",
    "invert", "latent_mask",
    "masked_sample", "noised_start", "slerp", "strength_sigmas",
]
