"""An N-d U-Net denoiser with time embedding, scale-shift ResBlocks and cross-attention.

The architecture of Ho et al. 2020 / Dhariwal & Nichol 2021 (arXiv 2105.05233) with the
SpatialTransformer conditioning of Rombach et al. 2022 (arXiv 2112.10752), written once
for ``dims`` 1, 2 and 3 with the layers of :mod:`mmldm.nn`.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmldm.interfaces import Conditioning, Denoiser
from mmldm.nn import (
    Downsample, ResBlock, SpatialTransformer, TimestepEmbedding, Upsample, check_dims, conv_nd, group_norm,
    zero_module,
)

from .config import TIME_CONDITIONING, UNetConfig

_MEMORY_FORMAT = {2: torch.channels_last, 3: torch.channels_last_3d}


class UNetBlock(nn.Module):
    """Layers applied in order: ResBlocks get the embedding, SpatialTransformers the context."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        for layer in self.layers:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(Denoiser):
    """``F(z_t [B, in, *s], t [B], Conditioning) -> [B, out, *s]``.

    Args:
        dims (`int`): 1, 2 or 3 spatial dimensions.
        in_channels (`int`), out_channels (`int`): latent channels in and out.
        context_dim (`int`, *optional*): ``d_tau`` of cross-attention tokens ``[B, M, d_tau]``;
            None builds self-attention only.
        concat_channels (`int`): channels of ``conditioning.concat`` stacked onto ``z_t``.
        vector_dim (`int`, *optional*): size of ``conditioning.vector``, added to the time
            embedding through a Linear.
        The other arguments are the fields of :class:`~mmldm_unet.config.UNetConfig`; with ``compile``
        the forward runs through one ``torch.compile``-d function shared by all instances (parameters are
        graph inputs, so copies such as an EMA model reuse the compiled code instead of the original's).
    """

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, *, model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 2, attention_levels: Sequence[int] = (1, 2),
        num_heads: int = 4, head_dim: int | None = None, transformer_depth: int = 1, mid_attention: bool = True,
        dropout: float = 0.0, time_conditioning: str = "scale_shift", context_dim: int | None = None,
        concat_channels: int = 0,
        vector_dim: int | None = None, use_checkpoint: bool = False, channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.dims, self.in_channels, self.out_channels = check_dims(dims), in_channels, out_channels
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {list(attention_levels)} contains {bad[0]}, but channel_mult "
                             f"{list(channel_mult)} only has levels 0..{len(channel_mult) - 1}")
        self.context_dim, self.concat_channels, self.vector_dim = context_dim, concat_channels, vector_dim
        self.num_levels, self.use_checkpoint, self.use_compile = len(channel_mult), use_checkpoint, compile
        self._attn = dict(num_heads=num_heads, head_dim=head_dim, depth=transformer_depth, dropout=dropout)
        if time_conditioning not in TIME_CONDITIONING:
            raise ValueError(f"time_conditioning={time_conditioning!r} is not valid; choose one of: "
                             f"{', '.join(TIME_CONDITIONING)}")
        self._scale_shift = time_conditioning == "scale_shift"
        emb_dim = 4 * model_channels
        self.time_embed = TimestepEmbedding(model_channels, emb_dim)
        self.vector_embed = nn.Linear(vector_dim, emb_dim) if vector_dim else None
        self.down, skips = self._build_down(in_channels + concat_channels, model_channels, channel_mult,
                                            num_res_blocks, attention_levels, emb_dim, dropout)
        ch = skips[-1]
        mid = functools.partial(ResBlock, dims, ch, emb_channels=emb_dim, dropout=dropout,
                                scale_shift=self._scale_shift)
        self.mid = UNetBlock(mid(), *([self._transformer(ch)] if mid_attention else []), mid())
        self.up = self._build_up(skips, model_channels, channel_mult, num_res_blocks, attention_levels,
                                 emb_dim, dropout)
        self.out = nn.Sequential(group_norm(model_channels), nn.SiLU(),
                                 zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)))
        self.memory_format = _MEMORY_FORMAT.get(dims) if channels_last else None
        if self.memory_format is not None:
            self.to(memory_format=self.memory_format)

    def _transformer(self, ch: int) -> SpatialTransformer:
        head_dim, heads = self._attn["head_dim"], self._attn["num_heads"]
        if head_dim is not None:
            if ch % head_dim:
                raise ValueError(f"head_dim={head_dim} does not divide the {ch} channels of an attention level")
            heads = ch // head_dim
        return SpatialTransformer(self.dims, ch, heads, ch // heads, self.context_dim,
                                  self._attn["depth"], self._attn["dropout"])

    def _build_down(self, in_ch, mc, channel_mult, num_res_blocks, attention_levels, emb_dim, dropout):
        blocks, skips, ch = [UNetBlock(conv_nd(self.dims, in_ch, mc, 3, padding=1))], [mc], mc
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(self.dims, ch, mc * mult, emb_channels=emb_dim, dropout=dropout,
                                   scale_shift=self._scale_shift)]
                ch = mc * mult
                layers += [self._transformer(ch)] if level in attention_levels else []
                blocks.append(UNetBlock(*layers))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                blocks.append(UNetBlock(Downsample(self.dims, ch)))
                skips.append(ch)
        return nn.ModuleList(blocks), skips

    def _build_up(self, skips, mc, channel_mult, num_res_blocks, attention_levels, emb_dim, dropout):
        skips, blocks, ch = list(skips), [], skips[-1]
        for level in reversed(range(len(channel_mult))):
            for i in range(num_res_blocks + 1):
                out_ch = mc * channel_mult[level]
                layers = [ResBlock(self.dims, ch + skips.pop(), out_ch, emb_channels=emb_dim, dropout=dropout,
                                   scale_shift=self._scale_shift)]
                ch = out_ch
                layers += [self._transformer(ch)] if level in attention_levels else []
                layers += [Upsample(self.dims, ch)] if level > 0 and i == num_res_blocks else []
                blocks.append(UNetBlock(*layers))
        return nn.ModuleList(blocks)

    def _check(self, z_t: Tensor, cond: Conditioning) -> None:
        factor = 2 ** (self.num_levels - 1)
        self.check_inputs(z_t, cond)
        if any(s % factor for s in z_t.shape[2:]):
            raise ValueError(f"latent size {tuple(z_t.shape[2:])} must be divisible by {factor} "
                             f"(2 ** (len(channel_mult) - 1)); pad the latents or use fewer levels")

    def _run(self, block: UNetBlock, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)

    def forward(self, z_t: Tensor, t: Tensor, conditioning: Conditioning | None = None) -> Tensor:
        if self.use_compile and not torch.compiler.is_compiling():
            return _compiled_forward()(self, z_t, t, conditioning)
        cond = conditioning if conditioning is not None else Conditioning()
        self._check(z_t, cond)
        return self._forward(z_t, t, cond)

    def _forward(self, z_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        h = z_t if not self.concat_channels else torch.cat([z_t, cond.concat.to(z_t)], dim=1)
        if self.memory_format is not None:
            h = h.contiguous(memory_format=self.memory_format)
        emb = self.time_embed(torch.as_tensor(t, device=z_t.device).expand(z_t.shape[0]))
        if self.vector_embed is not None:
            emb = emb + self.vector_embed(cond.vector.to(emb))
        context = cond.crossattn.to(z_t) if self.context_dim else None
        skips = []
        for block in self.down:
            h = self._run(block, h, emb, context)
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)


@functools.cache
def _compiled_forward() -> Callable[..., Tensor]:
    """``torch.compile(UNet.forward)``, made on first use (compilation itself happens on the first call).

    The whole ``forward``, checks included, not only its body ``_forward``: compiling ``_forward`` called from
    an eager ``forward`` made the 2D benchmark U-Net's compiled training step about 10% slower (0.855 vs
    0.776 s, 15 interleaved rounds each, 2 threads), for the same graph."""
    return torch.compile(UNet.forward)


def build_unet(
    cfg: UNetConfig, *, dims: int, in_channels: int, out_channels: int, context_dim: int | None = None,
    concat_channels: int = 0, vector_dim: int | None = None,
) -> UNet:
    """Registry factory of ``unet``/``unet1d``/``unet2d``/``unet3d`` (see :mod:`mmldm.interfaces`)."""
    return UNet(dims, in_channels, out_channels, context_dim=context_dim, concat_channels=concat_channels,
                vector_dim=vector_dim, **cfg.options())
