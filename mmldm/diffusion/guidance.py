"""Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598), plain and compositional.

Compositional guidance weights each condition separately, as Composable
Diffusion does for several concepts (Liu et al. 2022, arXiv 2206.01714, Eq. 11):
``D_u + sum_i w_i (D_i - D_u)``, where ``D_i`` sees condition ``i`` only.
"""

from __future__ import annotations

from functools import reduce
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..interfaces import Conditioning


def guided_denoiser(
    denoiser: Callable[..., Tensor], uncond: Conditioning, conds: Sequence[Conditioning], weights: Sequence[float]
) -> Callable[..., Tensor]:
    """A sampler model ``(x, sigma, **extra) -> x0`` returning ``D_u + sum_i w_i (D_i - D_u)``.

    All ``1 + len(conds)`` branches run in ONE forward pass over the batch
    ``[x; x; ...]`` (conditionings joined with :meth:`Conditioning.stack`).

    Args:
        denoiser: called as ``denoiser(x, sigma, conditioning=..., **extra)``, e.g. a
            :class:`~mmldm.diffusion.process.ProcessDenoiser`.
        uncond (`Conditioning`): the unconditional branch ``D_u``, batch size ``B`` of ``x``.
        conds (`Sequence[Conditioning]`): one conditioning per guided branch, each of batch size ``B``.
        weights (`Sequence[float]`): ``w_i`` per branch.
    """
    if len(conds) != len(weights):
        raise ValueError(f"guidance: {len(conds)} conditionings but {len(weights)} weights")
    if not conds:
        return lambda x, sigma, **extra: denoiser(x, sigma, conditioning=uncond, **extra)
    branches = 1 + len(conds)
    stacked = reduce(Conditioning.stack, conds, uncond)  # (branches * B, ...)

    def guided(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        out = denoiser(x.repeat(branches, *([1] * (x.ndim - 1))), sigma.repeat(branches),
                       conditioning=stacked, **extra)
        d_uncond, *d_conds = out.chunk(branches)
        return d_uncond + sum(w * (d - d_uncond) for w, d in zip(weights, d_conds))

    return guided


def cfg_denoiser(
    denoiser: Callable[..., Tensor], cond: Conditioning, uncond: Conditioning, scale: float
) -> Callable[..., Tensor]:
    """A sampler model ``(x, sigma, **extra) -> x0`` guided with weight ``scale``.

    Returns ``D(x, sigma, uncond) + scale * (D(x, sigma, cond) - D(x, sigma, uncond))``.
    Conditional and unconditional inputs run in ONE forward pass over the batch
    ``[x; x]`` (:func:`guided_denoiser` with one branch); ``scale == 1`` is the plain
    conditional model and skips the unconditional half.

    Args:
        denoiser: called as ``denoiser(x, sigma, conditioning=..., **extra)``, e.g. a
            :class:`~mmldm.diffusion.process.ProcessDenoiser`.
        cond (`Conditioning`), uncond (`Conditioning`): each with batch size ``B`` of ``x``
            (``uncond`` usually from :meth:`Conditioner.null`).
        scale (`float`): the guidance weight ``w`` (0 = unconditional, 1 = conditional).
    """
    if scale == 1:
        return lambda x, sigma, **extra: denoiser(x, sigma, conditioning=cond, **extra)
    return guided_denoiser(denoiser, uncond, [cond], [scale])
