"""An N-d diffusion transformer (DiT) denoiser.

DiT of Peebles & Xie 2023 (arXiv 2212.09748): patch tokens with position embeddings, transformer
blocks whose LayerNorms are modulated by the conditioning vector ``c`` (adaLN-Zero: per block a
shift, scale and gate for attention and MLP, regressed from ``c`` by a zero-initialized layer, so
every block starts as the identity), a final adaLN + linear layer (zero-initialized: the untrained
model predicts 0), unpatchify. ``c`` is the timestep embedding plus the projected
``conditioning.vector`` (DiT's class embedding, here produced by the class conditioner). When the
conditioners emit tokens, each block cross-attends to them between self-attention and MLP
(PixArt-alpha, Chen et al. 2023, arXiv 2310.00426); ``conditioning.concat`` maps are stacked onto
``z_t`` before patchify. Written once for ``dims`` 1, 2 and 3 with the layers of :mod:`mmldm.nn`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmldm.interfaces import Conditioning, Denoiser
from mmldm.nn import Attention, TimestepEmbedding, check_dims, zero_module

from .config import DiTConfig
from .patches import Patches, PositionEmbedding, patch_sizes


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``shift, scale [B, 1, D]`` on tokens ``x [B, N, D]``."""
    return x * (1 + scale) + shift


def layer_norm(dim: int) -> nn.LayerNorm:
    """The LayerNorm of DiT blocks: no affine parameters (adaLN supplies them), eps 1e-6."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class DiTBlock(nn.Module):
    """Self-attention, optional cross-attention and MLP on tokens, with adaLN-Zero modulation.

    Args:
        dim (`int`), heads (`int`), mlp_ratio (`float`).
        context_dim (`int`, *optional*): width of the cross-attention tokens; None builds no
            cross-attention. Its output projection starts at zero (as in PixArt-alpha), so the block
            still starts as the identity.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None):
        super().__init__()
        self.norm1, self.attn = layer_norm(dim), Attention(dim, heads=heads, qkv_bias=True)
        self.norm_cross = self.cross_attn = None
        if context_dim:
            self.norm_cross = layer_norm(dim)
            self.cross_attn = Attention(dim, context_dim, heads=heads, qkv_bias=True)
            zero_module(self.cross_attn.to_out)
        hidden = int(dim * mlp_ratio)
        self.norm2 = layer_norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = zero_module(nn.Linear(dim, 6 * dim))  # adaLN-Zero, applied to silu(c)

    def forward(self, x: Tensor, c_act: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [B, N, D]``, ``c_act = silu(c) [B, D]``, ``context [B, M, d_ctx]`` -> ``[B, N, D]``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c_act)[:, None].chunk(6, -1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale from ``c``) and a linear map of each token to its patch, both zero-initialized."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.norm = layer_norm(dim)
        self.modulation = zero_module(nn.Linear(dim, 2 * dim))
        self.linear = zero_module(nn.Linear(dim, out_features))

    def forward(self, x: Tensor, c_act: Tensor) -> Tensor:
        shift, scale = self.modulation(c_act)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(Denoiser):
    """``F(z_t [B, in, *s], t [B], Conditioning) -> [B, out, *s]``.

    Args:
        dims (`int`): 1, 2 or 3 spatial dimensions.
        in_channels (`int`), out_channels (`int`): latent channels in and out.
        context_dim (`int`, *optional*): ``d_tau`` of cross-attention tokens ``[B, M, d_tau]``;
            None builds no cross-attention (unconditional or vector-only models).
        concat_channels (`int`): channels of ``conditioning.concat`` stacked onto ``z_t`` before patchify.
        vector_dim (`int`, *optional*): size of ``conditioning.vector``, projected by a Linear and added
            to the timestep embedding to form the adaLN conditioning ``c``.
        The other arguments are the fields of :class:`~mmldm_dit.config.DiTConfig`.
    """

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, *, hidden_size: int = 384, depth: int = 12,
        num_heads: int = 6, patch_size: Sequence[int] = (2,), mlp_ratio: float = 4.0, pos_embed: str = "sincos",
        max_positions: int = 64, frequency_dim: int = 256, use_checkpoint: bool = False,
        context_dim: int | None = None, concat_channels: int = 0, vector_dim: int | None = None,
    ):
        super().__init__()
        self.dims, self.in_channels, self.out_channels = check_dims(dims), in_channels, out_channels
        if hidden_size % num_heads:
            raise ValueError(f"denoiser.hidden_size={hidden_size} is not divisible by denoiser.num_heads={num_heads}")
        self.context_dim, self.concat_channels, self.vector_dim = context_dim, concat_channels, vector_dim
        self.use_checkpoint = use_checkpoint
        self.patches = Patches(patch_sizes(patch_size, dims))
        self.x_embed = nn.Linear(self.patches.volume * (in_channels + concat_channels), hidden_size)
        self.pos_embed = PositionEmbedding(dims, hidden_size, pos_embed == "learned", max_positions)
        self.time_embed = TimestepEmbedding(frequency_dim, hidden_size)
        self.vector_embed = nn.Linear(vector_dim, hidden_size) if vector_dim else None
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth)
        )
        self.final = FinalLayer(hidden_size, self.patches.volume * out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialization: Xavier-uniform linears with zero biases, N(0, 0.02) timestep MLP; the
        adaLN-Zero modulations, the final layer and the cross-attention outputs stay zero."""
        zeroed = [*(b.modulation for b in self.blocks), self.final.modulation, self.final.linear,
                  *(b.cross_attn.to_out for b in self.blocks if b.cross_attn is not None)]
        skip = {id(m) for m in zeroed} | {id(m) for m in self.time_embed.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in skip:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)

    def _check(self, z_t: Tensor, cond: Conditioning) -> tuple[int, ...]:
        """The patch grid of ``z_t``; ``ValueError`` for a wrong shape or missing conditioning."""
        self.check_inputs(z_t, cond)
        try:
            return self.patches.grid(z_t.shape[2:])
        except ValueError as e:
            raise ValueError(f"latent shape {tuple(z_t.shape[1:])}: {e}") from None

    def forward(self, z_t: Tensor, t: Tensor, conditioning: Conditioning | None = None) -> Tensor:
        cond = conditioning if conditioning is not None else Conditioning()
        grid = self._check(z_t, cond)
        h = z_t if not self.concat_channels else torch.cat([z_t, cond.concat.to(z_t)], dim=1)
        x = self.x_embed(self.patches.patchify(h))  # (B, N, D)
        x = x + self.pos_embed(grid, x.device, x.dtype)
        c = self.time_embed(torch.as_tensor(t, device=z_t.device).expand(z_t.shape[0]))  # (B, D)
        if self.vector_embed is not None:
            c = c + self.vector_embed(cond.vector.to(c))
        c_act = F.silu(c).to(x.dtype)
        context = cond.crossattn.to(x) if self.context_dim else None
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, c_act, context, use_reentrant=False)
            else:
                x = block(x, c_act, context)
        return self.patches.unpatchify(self.final(x, c_act), grid)  # (B, out, *s)


def build_dit(
    cfg: DiTConfig, *, dims: int, in_channels: int, out_channels: int, context_dim: int | None = None,
    concat_channels: int = 0, vector_dim: int | None = None,
) -> DiT:
    """Registry factory of ``dit`` (see :mod:`mmldm.interfaces`)."""
    return DiT(dims, in_channels, out_channels, context_dim=context_dim, concat_channels=concat_channels,
               vector_dim=vector_dim, **cfg.options())
