"""Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..interfaces import Conditioning


def cfg_denoiser(
    denoiser: Callable[..., Tensor], cond: Conditioning, uncond: Conditioning, scale: float
) -> Callable[..., Tensor]:
    """A sampler model ``(x, sigma, **extra) -> x0`` guided with weight ``scale``.

    Returns ``D(x, sigma, uncond) + scale * (D(x, sigma, cond) - D(x, sigma, uncond))``.
    Conditional and unconditional inputs run in ONE forward pass over the batch
    ``[x; x]`` with :meth:`Conditioning.stack`; ``scale == 1`` is the plain conditional
    model and skips the unconditional half.

    Args:
        denoiser: called as ``denoiser(x, sigma, conditioning=..., **extra)``, e.g. a
            :class:`~mmldm.diffusion.parameterization.DenoiserWrapper`.
        cond (`Conditioning`), uncond (`Conditioning`): each with batch size ``B`` of ``x``
            (``uncond`` usually from :meth:`Conditioner.null`).
        scale (`float`): the guidance weight ``w`` (0 = unconditional, 1 = conditional).
    """
    if scale == 1:
        return lambda x, sigma, **extra: denoiser(x, sigma, conditioning=cond, **extra)
    both = Conditioning.stack(cond, uncond)

    def guided(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), conditioning=both, **extra)
        d_cond, d_uncond = out.chunk(2)
        return d_uncond + scale * (d_cond - d_uncond)

    return guided
