"""N-d patches and their position embeddings: one code path for ``dims`` 1, 2 and 3.

Patchify cuts ``[B, C, *s]`` into non-overlapping patches of side ``p_i`` along axis ``i``
and flattens each into a token: ``[B, N, prod(p) * C]`` with ``N = prod(s_i / p_i)`` in
row-major grid order and features ordered ``(p_0, ..., p_{d-1}, C)`` (channels fastest),
the token layout of DiT. Unpatchify is its inverse.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn


def patch_sizes(patch_size: Sequence[int], dims: int) -> tuple[int, ...]:
    """``denoiser.patch_size`` as one side per axis: one entry applies to every axis."""
    sizes = tuple(int(p) for p in patch_size)
    if len(sizes) == 1:
        return sizes * dims
    if len(sizes) != dims:
        raise ValueError(f"denoiser.patch_size={list(sizes)} has {len(sizes)} entries for {dims}-D latents; "
                         f"give one (every axis) or {dims} (one per axis)")
    return sizes


class Patches:
    """Patchify/unpatchify with einops patterns built from ``dims``.

    Args:
        patch_size (`Sequence[int]`): the patch side per axis (``len == dims``).
    """

    def __init__(self, patch_size: Sequence[int]):
        self.size = tuple(patch_size)
        dims = len(self.size)
        grid = " ".join(f"g{i}" for i in range(dims))
        patch = " ".join(f"p{i}" for i in range(dims))
        self._map = "b c " + " ".join(f"(g{i} p{i})" for i in range(dims))  # (B, C, *s)
        self._tokens = f"b ({grid}) ({patch} c)"  # (B, N, prod(p) * C)
        self._sides = {f"p{i}": p for i, p in enumerate(self.size)}

    @property
    def volume(self) -> int:
        """Latent cells per patch, ``prod(p)``."""
        return math.prod(self.size)

    def grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Patches per axis of a latent of spatial size ``spatial``; ``ValueError`` when a side does not divide."""
        bad = [i for i, (s, p) in enumerate(zip(spatial, self.size)) if s % p]
        if bad:
            i = bad[0]
            raise ValueError(
                f"spatial size {tuple(spatial)} is not divisible by denoiser.patch_size={list(self.size)} "
                f"(axis {i}: {spatial[i]} % {self.size[i]} != 0); choose patch sides that divide every latent side"
            )
        return tuple(s // p for s, p in zip(spatial, self.size))

    def patchify(self, x: Tensor) -> Tensor:
        """``[B, C, *s] -> [B, N, prod(p) * C]``."""
        return rearrange(x, f"{self._map} -> {self._tokens}", **self._sides)

    def unpatchify(self, tokens: Tensor, grid: Sequence[int]) -> Tensor:
        """``[B, N, prod(p) * C] -> [B, C, *s]`` for the patch grid ``grid`` (``N = prod(grid)``)."""
        sides = {**self._sides, **{f"g{i}": g for i, g in enumerate(grid)}}
        return rearrange(tokens, f"{self._tokens} -> {self._map}", **sides)


def axis_widths(dim: int, dims: int) -> list[int]:
    """The share of the token width each axis encodes: ``2 * (dim // (2 * dims))`` each (sin and cos halves);
    the ``dim % (2 * dims)`` channels left over carry no position (zeros)."""
    return [2 * (dim // (2 * dims))] * dims


def sincos_1d(width: int, positions: Tensor) -> Tensor:
    """``[len(positions), width]``: ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (width/2))``
    (Vaswani et al. 2017; the per-axis table of MAE and DiT), computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))
    args = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _combine(tables: Sequence[Tensor], dim: int) -> Tensor:
    """Per-axis tables ``[g_i, w_i]`` -> ``[prod(g), dim]`` in row-major grid order.

    The axes' blocks are concatenated last axis first: for 2-D grids ``[w-block, h-block]``, the layout of
    DiT's (and MAE's) 2-D sin-cos table. Channels beyond ``sum(w_i)`` are zero.
    """
    dims = len(tables)
    grid = [t.shape[0] for t in tables]
    blocks = []
    for axis in reversed(range(dims)):
        shape = [1] * dims + [tables[axis].shape[1]]
        shape[axis] = grid[axis]
        blocks.append(tables[axis].reshape(shape).expand(*grid, -1))  # (*grid, w_axis)
    out = torch.cat(blocks, dim=-1).reshape(math.prod(grid), -1)
    pad = dim - out.shape[1]
    return torch.nn.functional.pad(out, (0, pad)) if pad else out


class PositionEmbedding(nn.Module):
    """Position embeddings ``[1, N, dim]`` of an N-d patch grid, added to the patch tokens.

    Args:
        dims (`int`): axes of the grid.
        dim (`int`): token width; each axis encodes :func:`axis_widths` channels.
        learned (`bool`): ``False``: the fixed N-d sin-cos table (no parameters; any grid size).
            ``True``: one learned table ``[max_positions, w]`` per axis (axial embeddings), initialized to
            the sin-cos values, so the two start equal.
        max_positions (`int`): ``learned`` only: grid size per axis the tables cover.
    """

    def __init__(self, dims: int, dim: int, learned: bool = False, max_positions: int = 64):
        super().__init__()
        self.dims, self.dim, self.max_positions = dims, dim, max_positions
        self.widths = axis_widths(dim, dims)
        self.tables = None
        if learned:
            start = [sincos_1d(w, torch.arange(max_positions)).float() for w in self.widths]
            self.tables = nn.ParameterList(nn.Parameter(t) for t in start)

    def forward(self, grid: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        if self.tables is None:
            tables = [sincos_1d(w, torch.arange(g)) for w, g in zip(self.widths, grid)]
            return _combine(tables, self.dim)[None].to(device=device, dtype=dtype)
        if max(grid) > self.max_positions:
            raise ValueError(f"a patch grid of {tuple(grid)} exceeds denoiser.max_positions={self.max_positions} "
                             "of the learned position tables; raise it or use denoiser.pos_embed=sincos")
        return _combine([t[:g] for t, g in zip(self.tables, grid)], self.dim)[None].to(dtype=dtype)
