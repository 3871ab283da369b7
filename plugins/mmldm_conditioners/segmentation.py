"""Segmentation maps as tau_theta: one-hot maps on the latent grid (LDM semantic synthesis).

Rombach et al. 2022 (Sec. 4.3.2) condition on semantic maps by resizing them to
the latent resolution and concatenating them with ``z_t``. This conditioner
does that for any ``dims``: a label map ``[B, *spatial]`` (or ``[B, 1, *spatial]``)
of integers, or class probabilities ``[B, K, *spatial]``, becomes ``K + 1``
channels on the latent grid, the last one meaning "unknown". With
``subcells=s`` each latent cell carries the map at ``s**dims`` positions
(space-to-depth), so strokes thinner than a latent cell still reach the
denoiser: ``(K + 1) * s**dims`` channels. Optionally each latent cell (or pooled
block) also becomes a cross-attention token.

Null condition: the all-"unknown" map (every cell has the unknown channel set),
which labels ``-1`` also give, cell by cell.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mmldm.interfaces import Conditioner, Conditioning, Modality
from mmldm.nn import avg_pool_nd, check_dims

from .common import anchor_device, apply_options, check_outputs
from .config import SEGMENTATION_RESIZE, SegmentationConditionerConfig

#: Label of a cell whose class is unknown.
UNKNOWN = -1


class SegmentationConditioner(Conditioner):
    """``y`` label maps -> ``concat [B, (K + 1) * subcells**dims, *latent_spatial]`` and/or ``crossattn [B, M, d_tau]``.

    Args:
        dims (`int`): spatial dims of the maps (1, 2 or 3).
        num_classes (`int`): ``K``, the labels ``0..K-1`` of the maps.
        outputs (`Sequence[str]`): "concat" and/or "crossattn".
        resize (`str`): "nearest" (one label per latent cell) or "area" (class shares per cell).
        subcells (`int`): resize the map to ``subcells`` times the latent grid per axis and fold
            each ``subcells**dims`` block into channels (1: one value per cell and class).
        embed_dim (`int`): ``d_tau`` of the tokens.
        token_pool (`int`): pool the latent-grid map by this factor per axis before making tokens
            (``M = prod(latent_spatial) / token_pool**dims``).

    :meth:`set_latent_shape` must be called before use (training and loading do it).
    """

    key = "segmentation"

    def __init__(
        self, dims: int, num_classes: int, outputs: Sequence[str] = ("concat",), resize: str = "nearest",
        embed_dim: int = 128, token_pool: int = 1, subcells: int = 1,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"segmentation conditioner needs num_classes >= 1, got {num_classes}")
        if resize not in SEGMENTATION_RESIZE:
            raise ValueError(f"segmentation conditioner: resize '{resize}' unknown; choices: {list(SEGMENTATION_RESIZE)}")
        if subcells < 1:
            raise ValueError(f"segmentation conditioner needs subcells >= 1, got {subcells}")
        self.dims, self.num_classes, self.resize, self.subcells = check_dims(dims), num_classes, resize, subcells
        self.outputs = check_outputs(outputs, ("crossattn", "concat"), "segmentation")
        self.map_channels = (num_classes + 1) * subcells**dims  # one-hot classes + "unknown", per sub-cell
        self.concat_channels = self.map_channels if "concat" in self.outputs else 0
        self.context_dim = embed_dim if "crossattn" in self.outputs else None
        self.pool = avg_pool_nd(dims, token_pool, token_pool) if token_pool > 1 else nn.Identity()
        self.token_proj = nn.Linear(self.map_channels + dims, embed_dim) if self.context_dim else None
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # device of maps without weights
        self.grid: tuple[int, ...] | None = None

    def set_latent_shape(self, latent_shape: Sequence[int]) -> None:
        grid = tuple(int(s) for s in latent_shape[1:])
        if len(grid) != self.dims:
            raise ValueError(f"segmentation conditioner for dims={self.dims} got a latent shape {tuple(latent_shape)}")
        self.grid = grid

    def one_hot(self, seg: Tensor) -> Tensor:
        """Labels ``[B, *s]`` / ``[B, 1, *s]`` (int) or probabilities ``[B, K, *s]`` (float) -> ``[B, K + 1, *s]``."""
        k = self.num_classes
        if seg.is_floating_point():
            if seg.ndim != self.dims + 2 or seg.shape[1] != k:
                raise ValueError(f"cond['{self.key}']: float maps must be [B, {k}, *spatial] with {self.dims} "
                                 f"spatial dims (class probabilities), got shape {tuple(seg.shape)}")
            return torch.cat([seg, torch.zeros_like(seg[:, :1])], dim=1)
        if seg.ndim == self.dims + 2 and seg.shape[1] == 1:
            seg = seg[:, 0]
        if seg.ndim != self.dims + 1:
            raise ValueError(f"cond['{self.key}']: label maps must be [B, *spatial] or [B, 1, *spatial] with "
                             f"{self.dims} spatial dims, got shape {tuple(seg.shape)}")
        bad = seg[(seg < UNKNOWN) | (seg >= k)]
        if bad.numel():
            raise ValueError(f"cond['{self.key}']: label {int(bad[0])} out of range for {k} classes: "
                             f"expected 0..{k - 1} (or {UNKNOWN} for unknown)")
        seg = torch.where(seg == UNKNOWN, torch.full_like(seg, k), seg).long()
        return rearrange(F.one_hot(seg, k + 1), "b ... c -> b c ...").float()

    def latent_maps(self, seg: Tensor) -> Tensor:
        """``[B, K + 1, *s]`` at the input resolution -> ``[B, map_channels, *grid]`` on the latent grid."""
        if self.grid is None:
            raise RuntimeError(f"segmentation conditioner '{self.key}': set_latent_shape() was not called")
        size = tuple(g * self.subcells for g in self.grid)
        if tuple(seg.shape[2:]) != size:
            seg = F.interpolate(seg, size=size, mode="nearest-exact" if self.resize == "nearest" else "area")
        if self.subcells == 1:
            return seg
        # space-to-depth over any number of axes: (g s) per axis -> channels (c s s ...)
        axes = [f"g{i}" for i in range(self.dims)]
        subs = [f"s{i}" for i in range(self.dims)]
        pattern = (f"b c {' '.join(f'({g} {s})' for g, s in zip(axes, subs))} -> "
                   f"b (c {' '.join(subs)}) {' '.join(axes)}")
        return rearrange(seg, pattern, **{s: self.subcells for s in subs})

    def tokens(self, maps: Tensor) -> Tensor:
        """Maps ``[B, map_channels, *g]`` -> tokens ``[B, M, d_tau]``: each cell's classes (per sub-cell) and its
        coordinates in [-1, 1]."""
        maps = self.pool(maps)
        axes = [torch.linspace(-1, 1, n, device=maps.device, dtype=maps.dtype) for n in maps.shape[2:]]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).expand(maps.shape[0], -1, *maps.shape[2:])
        cells = rearrange(torch.cat([maps, coords], dim=1), "b c ... -> b (...) c")
        return self.token_proj(cells)

    def _wrap(self, maps: Tensor) -> Conditioning:
        return Conditioning(
            concat=maps if "concat" in self.outputs else None,
            crossattn=self.tokens(maps) if "crossattn" in self.outputs else None,
        )

    def forward(self, cond: Mapping[str, Any], batch_size: int) -> Conditioning:
        if self.key not in cond:
            return self.null(batch_size)
        seg = torch.as_tensor(cond[self.key]).to(anchor_device(self))
        if seg.shape[0] != batch_size:
            raise ValueError(f"cond['{self.key}'] has {seg.shape[0]} maps for a batch of {batch_size}")
        return self._wrap(self.latent_maps(self.one_hot(seg)))

    def null(self, batch_size: int) -> Conditioning:
        if self.grid is None:
            raise RuntimeError(f"segmentation conditioner '{self.key}': set_latent_shape() was not called")
        unknown = torch.zeros(batch_size, self.num_classes + 1, *(g * self.subcells for g in self.grid),
                              device=anchor_device(self))
        unknown[:, self.num_classes] = 1.0
        return self._wrap(self.latent_maps(unknown))


def build_segmentation_conditioner(
    cfg: SegmentationConditionerConfig, *, modality: Modality | None = None
) -> SegmentationConditioner:
    """Factory of ``conditioner=segmentation``: ``num_classes`` from the config or the modality."""
    num_classes = cfg.num_classes or getattr(modality, "segmentation_classes", 0)
    if not num_classes:
        name = getattr(modality, "name", "?")
        raise ValueError(
            f"conditioner=segmentation needs label maps: the modality '{name}' has none (segmentation_classes=0) "
            "and conditioner.num_classes is not set"
        )
    if modality is None:
        raise ValueError("conditioner=segmentation needs the modality (its dims)")
    conditioner = SegmentationConditioner(
        modality.dims, num_classes, tuple(cfg.outputs), cfg.resize, cfg.embed_dim, cfg.token_pool, cfg.subcells
    )
    return apply_options(conditioner, cfg)
