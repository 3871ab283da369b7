"""Small tensor helpers shared by the diffusion modules."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    """Append trailing singleton axes to ``x`` until it has ``target_dims`` axes.

    ``sigma [B]`` -> ``[B, 1, ..., 1]`` so that it broadcasts over ``[B, C, *spatial]``.
    """
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def randn(shape: tuple[int, ...] | torch.Size, like: Tensor,
          generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype and device.

    The draw happens on the generator's device (a CPU generator gives the same
    numbers whatever device the model runs on), then moves to ``like.device``.
    With a sequence of generators, row ``i`` (of ``shape[0]``) comes from ``generator[i]``, so a
    sample's noise does not depend on the batch it is drawn in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else like.device
        return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for {shape[0]} samples; pass one per sample")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=like.dtype) for g in generator]
    return torch.stack(rows).to(like.device)


def randint(high: int, size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """``size`` integers uniform in ``[0, high)`` drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, high, (size,), generator=generator, device=gen_device).to(device)


def rand(size: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``size`` numbers uniform in ``[0, 1)`` with ``like``'s dtype, drawn on the generator's device."""
    device = generator.device if generator is not None else like.device
    return torch.rand((size,), generator=generator, device=device, dtype=like.dtype).to(like.device)
