"""Drawing latents: conditioning, guidance, process, sampler, in one function (:func:`sample_latents`)
shared by training (``DiffusionModule.sample``), the pipeline (``LatentDiffusion.sample``) and, through
the pipeline, ``mmldm sample``."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..interfaces import Conditioner, Conditioning
from .config import DEFAULT_SAMPLER, DEFAULT_STEPS
from .guidance import cfg_denoiser, guided_denoiser
from .process import Process
from .utils import randn


def condition(conditioners: Sequence[Conditioner], cond: Mapping[str, Any] | None, batch_size: int) -> Conditioning:
    """Merge what every conditioner makes of ``cond``; a conditioner whose key is missing gives its null."""
    out = Conditioning()
    for c in conditioners:
        out = out.merge(c(cond, batch_size) if cond and c.key in cond else c.null(batch_size))
    return out


def null_condition(conditioners: Sequence[Conditioner], batch_size: int) -> Conditioning:
    """The merged null conditioning (the unconditional branch of classifier-free guidance)."""
    return condition(conditioners, None, batch_size)


def guidance_branches(
    conditioners: Sequence[Conditioner], cond: Mapping[str, Any] | None, weights: Mapping[str, float], batch_size: int,
    compose: Sequence[str] = (),
) -> tuple[Conditioning, list[Conditioning], list[float]]:
    """Branches of compositional guidance: ``(uncond, [cond_i], [w_i])`` for :func:`guided_denoiser`.

    ``uncond`` nulls every key named in ``weights`` and keeps the other given
    conditions; branch ``i`` adds condition ``i`` (a key missing from ``cond`` has no branch).
    A key named in ``compose`` gives one branch per part of its value (:meth:`Conditioner.parts`, e.g. a
    caption's comma-separated parts), each with the key's weight: Composable Diffusion's sum over concepts.
    """
    known = {c.key: c for c in conditioners}
    for what, keys in (("compose", compose), ("guidance", weights)):
        unknown = sorted(set(keys) - set(known))
        if unknown:
            raise ValueError(f"{what} names unknown condition key(s) {unknown}; "
                             f"the conditioners read {[c.key for c in conditioners]}")
    unweighted = sorted(set(compose) - set(weights))
    if unweighted:
        raise ValueError(f"compose names condition key(s) {unweighted} that guidance gives no weight; "
                         f"guidance weighs {sorted(weights)}")
    cond = dict(cond or {})
    kept = {k: v for k, v in cond.items() if k not in weights}
    values, branch_weights = [], []
    for k in (k for k in weights if k in cond):
        parts = known[k].parts(cond[k], batch_size) if k in compose else [cond[k]]
        if parts is None:
            raise ValueError(f"compose names '{k}', but conditioner '{k}' ({type(known[k]).__name__}) cannot "
                             "split its condition into parts; compose only keys of conditioners with parts()")
        values += [(k, part) for part in parts]
        branch_weights += [float(weights[k])] * len(parts)
    branches = [condition(conditioners, {**kept, k: v}, batch_size) for k, v in values]
    return condition(conditioners, kept, batch_size), branches, branch_weights


def resolve_sampler(sampler: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A sampler function: a callable as is, a name through the plugin registry (kind ``sampler``)."""
    if callable(sampler):
        return sampler
    from .samplers import get_sampler

    return get_sampler(sampler)


def sampler_settings(
    config: Mapping[str, Any] | None, sampler: str | Callable[..., Tensor] | None = None, steps: int | None = None,
    spacing: str | None = None, **options: Any,
) -> dict[str, Any]:
    """The sampler arguments of :func:`sample_latents` from a sampler config (an export's ``sampler``
    entry, or None) and what a call asks for: a call's value wins, then the config's, then the defaults
    (:data:`~mmldm.diffusion.config.DEFAULT_SAMPLER`, :data:`~mmldm.diffusion.config.DEFAULT_STEPS`,
    spacing ``auto``). The config's own options (``eta``) apply only when the call keeps its sampler."""
    config = dict(config or {})
    name = sampler or config.get("name", DEFAULT_SAMPLER)
    own = {k: v for k, v in config.items() if k not in ("name", "steps", "spacing")} if name == config.get("name") else {}
    # `is None`, not `or`: steps=0 must reach the process's check (">= 1"), not silently become the default
    return {"sampler": name, "steps": config.get("steps", DEFAULT_STEPS) if steps is None else steps,
            "spacing": config.get("spacing", "auto") if spacing is None else spacing, **own, **options}


def sample_generators(seed: int, n: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample, seeded from ``(seed, i)`` (numpy's ``SeedSequence``, so neighbouring
    seeds do not share samples): sample ``i`` of a call is the same for any batch size ``n > i``."""
    import numpy as np

    states = np.random.SeedSequence(seed).spawn(n)
    return [torch.Generator(device).manual_seed(int(s.generate_state(1, np.uint64)[0] >> 1)) for s in states]


def initial_noise(shape: Sequence[int], generator: torch.Generator | Sequence[torch.Generator] | None,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """Unit Gaussian noise of ``shape`` ``[n, c, *s]``: from one generator, or row ``i`` from ``generator[i]``."""
    return randn(tuple(shape), torch.empty((), device=device, dtype=dtype), generator)


@torch.no_grad()
def sample_latents(
    denoiser: nn.Module,
    conditioners: Sequence[Conditioner],
    process: Process,
    shape: Sequence[int],
    cond: Mapping[str, Any] | None = None,
    sampler: str | Callable[..., Tensor] = DEFAULT_SAMPLER,
    steps: int = DEFAULT_STEPS,
    guidance: float | Mapping[str, float] = 1.0,
    spacing: str = "auto",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    progress: bool = False,
    compose: Sequence[str] = (),
    **sampler_options: Any,
) -> Tensor:
    """Draw latents of ``shape`` ``[n, c, *s]`` (in the space the denoiser was trained on).

    The sampler steps along ``process.sigmas(steps, spacing)`` from ``noise * sigmas[0]`` and sees the
    sigma-space denoiser :meth:`Process.denoiser` of the network, wrapped by classifier-free guidance
    (:func:`cfg_denoiser`: cond and uncond in one batched forward pass; ``guidance == 1`` runs the
    conditional model only).

    Args:
        process (`Process`): the diffusion process the denoiser was trained with.
        sampler (`str | Callable`): a registered sampler name (``ddpm``, ``ddim``, ``euler``,
            ``heun``, ``dpmpp_2m`` or a plugin's) or a sampler function.
        spacing (`str`): ``auto`` (the process's default) or one of ``process.spacings``.
        guidance (`float | Mapping[str, float]`): one weight for all conditions, or a weight per
            condition key (compositional guidance, :func:`guidance_branches`), e.g.
            ``{"class": 2.0, "text": 4.0}``; still one batched forward pass per step.
        compose (`Sequence[str]`): condition keys guided part by part (:func:`guidance_branches`; a caption's
            comma-separated parts, Composable Diffusion's AND); with one weight, every given condition key
            gets that weight (compositional guidance instead of one joint branch).
        generator (`torch.Generator | Sequence[torch.Generator]`, *optional*): the noise source; with one
            generator per sample (:func:`sample_generators`) each sample's starting noise is its own, so
            with a deterministic sampler (``ddim`` with ``eta=0``, ``euler``, ``heun``, ``dpmpp_2m``)
            sample ``i`` does not depend on the batch size (up to float rounding of batched kernels).
            Stochastic samplers (``ddpm``, ``ddim`` with ``eta > 0``) draw each sample's per-step noise
            from its own generator too.
        sampler_options: the sampler's own options (``eta`` for DDIM).
    """
    sample_fn = resolve_sampler(sampler)
    ref = next(denoiser.parameters())
    sigmas = process.sigmas(steps, spacing).to(device=ref.device, dtype=ref.dtype)
    x = initial_noise(shape, generator, ref.device, ref.dtype) * sigmas[0]
    fn = guided_model(denoiser, conditioners, process, cond, guidance, shape[0], compose=compose)
    return sample_fn(fn, x, sigmas, generator=generator, disable=not progress, **sampler_options)


def guided_model(
    denoiser: nn.Module, conditioners: Sequence[Conditioner], process: Process, cond: Mapping[str, Any] | None,
    guidance: float | Mapping[str, float], n: int, keep: Sequence[str] = (), compose: Sequence[str] = (),
) -> Callable[..., Tensor]:
    """The sampler's model ``D(x, sigma) -> z0`` for ``n`` samples: the network in the process's sigma space
    (:meth:`Process.denoiser`) under classifier-free guidance (one weight, :func:`cfg_denoiser`) or
    compositional guidance (a weight per condition key, :func:`guided_denoiser`).

    ``keep``: condition keys that one weight does not guide: the unconditional branch keeps what ``cond`` gives
    them instead of their null (trained inpainting's known latent and mask, as Stable Diffusion's inpainting
    pipelines keep the masked image in both branches). A weight per key guides only the keys it names anyway.
    ``compose``: keys guided part by part (:func:`guidance_branches`); one weight then applies to every given
    key outside ``keep``."""
    model = process.denoiser(denoiser)
    if compose and not isinstance(guidance, Mapping):
        guidance = {k: guidance for k in dict.fromkeys([*(cond or {}), *compose]) if k not in keep}
    if isinstance(guidance, Mapping):
        return guided_denoiser(model, *guidance_branches(conditioners, cond, guidance, n, compose))
    kept = {k: v for k, v in (cond or {}).items() if k in keep}
    return cfg_denoiser(model, condition(conditioners, cond, n), condition(conditioners, kept, n), guidance)
