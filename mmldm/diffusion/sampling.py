"""Drawing latents: conditioning, guidance, sampler, in one function shared by training and the pipeline."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..interfaces import Conditioner, Conditioning
from .guidance import cfg_denoiser
from .parameterization import DenoiserWrapper
from .schedules import DiscreteSchedule


def condition(conditioners: Sequence[Conditioner], cond: Mapping[str, Any] | None, batch_size: int) -> Conditioning:
    """Merge what every conditioner makes of ``cond``; a conditioner whose key is missing gives its null."""
    out = Conditioning()
    for c in conditioners:
        out = out.merge(c(cond, batch_size) if cond and c.key in cond else c.null(batch_size))
    return out


def null_condition(conditioners: Sequence[Conditioner], batch_size: int) -> Conditioning:
    """The merged null conditioning (the unconditional branch of classifier-free guidance)."""
    return condition(conditioners, None, batch_size)


def resolve_sampler(sampler: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A sampler function: a callable as is, a name through the plugin registry (kind ``sampler``)."""
    if callable(sampler):
        return sampler
    from ..plugins import registry

    return registry().get("sampler", sampler).resolve()


@torch.no_grad()
def sample_latents(
    denoiser: nn.Module,
    conditioners: Sequence[Conditioner],
    schedule: DiscreteSchedule,
    parameterization: str,
    shape: Sequence[int],
    cond: Mapping[str, Any] | None = None,
    sampler: str | Callable[..., Tensor] = "dpmpp_2m",
    steps: int = 25,
    guidance: float = 1.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    progress: bool = False,
    **sampler_options: Any,
) -> Tensor:
    """Draw latents of ``shape`` ``[n, c, *s]`` (in the space the denoiser was trained on).

    The sampler sees the sigma-space denoiser of :class:`DenoiserWrapper`, wrapped by
    classifier-free guidance (:func:`cfg_denoiser`: cond and uncond in one batched
    forward pass; ``guidance == 1`` runs the conditional model only).

    Args:
        sampler (`str | Callable`): a registered sampler name (``ddpm``, ``ddim``, ``euler``,
            ``heun``, ``dpmpp_2m`` or a plugin's) or a sampler function.
        sampler_options: the sampler's own options (``eta`` for DDIM).
    """
    sample_fn = resolve_sampler(sampler)
    ref = next(denoiser.parameters())
    n = shape[0]
    sigmas = schedule.sigmas_for(steps, spacing).to(device=ref.device, dtype=ref.dtype)
    x = torch.randn(tuple(shape), generator=generator, device=ref.device, dtype=ref.dtype) * sigmas[0]
    model = DenoiserWrapper(denoiser, schedule, parameterization)
    fn = cfg_denoiser(model, condition(conditioners, cond, n), null_condition(conditioners, n), guidance)
    return sample_fn(fn, x, sigmas, generator=generator, disable=not progress, **sampler_options)
