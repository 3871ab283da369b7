"""Attention over N-d feature maps, all through ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
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
        dims (`int`): spatial dimensions of ``x`` (1, 2 or 3).
        channels (`int`): ``C`` of ``x``.
        heads (`int`, defaults to 1): attention heads (1: one head of all channels).
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
        # The 1x1 projections are stored as convolutions (the checkpoint layout of Rombach et al.) but
        # applied as matrix products on the token layout, the same arithmetic without layout copies:
        # proj_in reads the normed map through a transposed view and writes contiguous tokens; proj_out
        # writes [B, C, N] with the residual folded in (baddbmm) when x is contiguous, and writes tokens,
        # which already are the channels-last layout, when x is channels-last. About 1% of a U-Net
        # training step against the convolutions (benchmarks/unet_vs_diffusers.py, A/B in one process).
        h = rearrange(self.norm(x), "b c ... -> b (...) c")
        h = F.linear(h, self.proj_in.weight.flatten(1), self.proj_in.bias)  # (B, N, C)
        for block in self.blocks:
            h = block(h, context, mask)
        w_out = self.proj_out.weight.flatten(1)
        if torch.is_autocast_enabled(x.device.type):  # cast once: autocast would cast the B-fold expand below
            w_out = w_out.to(torch.get_autocast_dtype(x.device.type))
        if x.is_contiguous():
            out = torch.baddbmm(x.flatten(2) + self.proj_out.bias[:, None], w_out.expand(x.shape[0], -1, -1),
                                h.transpose(1, 2))
            return out.view(x.shape)
        return x + F.linear(h, w_out, self.proj_out.bias).transpose(1, 2).reshape(x.shape)
