"""Attention over N-d feature maps, all through ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .layers import conv_nd, group_norm, zero_module


class Attention(nn.Module):
    """Multi-head attention ``x [B, N, D]`` to ``context [B, M, D_ctx]`` (self-attention when None).

    Args:
        dim (`int`): query feature size.
        context_dim (`int`, *optional*): key/value feature size; defaults to ``dim``.
        heads (`int`), head_dim (`int`, *optional*): ``head_dim`` defaults to ``dim // heads``.
        qkv_bias (`bool`, defaults to False): biases on the query/key/value projections
            (as in the attention of Stable Diffusion's autoencoder).
    """

    def __init__(self, dim: int, context_dim: int | None = None, heads: int = 8, head_dim: int | None = None,
                 qkv_bias: bool = False):
        super().__init__()
        head_dim = head_dim or dim // heads
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        attn_mask = None if mask is None else mask[:, None, None, :].bool()  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class AttentionBlock(nn.Module):
    """Residual self-attention over all positions of ``[B, C, *spatial]`` (the VAE mid-block).

    Args:
        dims (`int`), channels (`int`), heads (`int`, defaults to 1: one head of all channels).
        groups (`int`, defaults to 32): of the GroupNorm before attention (see :func:`group_norm`).
        qkv_bias (`bool`, defaults to False): biases on the query/key/value projections.
    """

    def __init__(self, dims: int, channels: int, heads: int = 1, groups: int = 32, qkv_bias: bool = False):
        super().__init__()
        self.dims = dims
        self.norm = group_norm(channels, groups)
        self.attn = Attention(channels, heads=heads, qkv_bias=qkv_bias)

    def forward(self, x: Tensor) -> Tensor:
        h = rearrange(self.norm(x), "b c ... -> b (...) c")  # (B, N, C)
        h = self.attn(h)
        return x + h.transpose(1, 2).reshape(x.shape)


class FeedForward(nn.Module):
    """GEGLU feed-forward (as in Stable Diffusion's transformer blocks)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.proj = nn.Linear(dim, inner * 2)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention (if ``context_dim``) and feed-forward on tokens."""

    def __init__(self, dim: int, heads: int, head_dim: int | None = None, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads=heads, head_dim=head_dim)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.attn2 = Attention(dim, context_dim, heads=heads, head_dim=head_dim) if context_dim else None
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None and context is not None:
            x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer blocks over the positions of an N-d map ``[B, C, *spatial]``.

    Norm, 1x1 projection in, ``depth`` :class:`TransformerBlock` (self- and
    cross-attention to ``context [B, M, context_dim]``), zero-initialized 1x1
    projection out, residual. As in Rombach et al. 2022, for any ``dims``.
    """

    def __init__(self, dims: int, channels: int, heads: int, head_dim: int | None = None,
                 context_dim: int | None = None, depth: int = 1, dropout: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = conv_nd(dims, channels, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, heads, head_dim, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = zero_module(conv_nd(dims, channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = rearrange(self.proj_in(self.norm(x)), "b c ... -> b (...) c")  # (B, N, C)
        for block in self.blocks:
            h = block(h, context, mask)
        h = h.transpose(1, 2).reshape(x.shape)  # (B, C, *spatial), a view with channels-last strides
        if h.stride() != x.stride():  # back to x's layout, so proj_out, the residual add and the skip
            h = h.contiguous()  # concatenations downstream see one memory format (~1% of a training step)
        return x + self.proj_out(h)
