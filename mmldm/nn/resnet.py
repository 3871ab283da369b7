"""N-d residual blocks and resampling layers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import avg_pool_nd, check_dims, conv_nd, group_norm, zero_module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip, optionally conditioned on an embedding.

    Args:
        dims (`int`): 1, 2 or 3.
        in_channels (`int`), out_channels (`int`, *optional*): defaults to ``in_channels``.
        emb_channels (`int`, *optional*): size of a conditioning vector ``[B, E]``
            (the time embedding). With ``scale_shift`` it modulates the second
            norm as ``norm(h) * (1 + scale) + shift`` (Dhariwal & Nichol 2021),
            otherwise it is added to the features.
        dropout (`float`): dropout before the second convolution.
        zero_init (`bool`): start the residual branch at zero (identity block).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int | None = None,
        emb_channels: int | None = None,
        dropout: float = 0.0,
        scale_shift: bool = True,
        zero_init: bool = True,
        groups: int = 32,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = conv_nd(dims, in_channels, out_channels, 3, padding=1)
        self.emb = None
        if emb_channels is not None:
            self.emb = nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1))
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        conv2 = conv_nd(dims, out_channels, out_channels, 3, padding=1)
        self.conv2 = zero_module(conv2) if zero_init else conv2
        self.skip = (
            nn.Identity() if in_channels == out_channels else conv_nd(dims, in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with emb_channels and needs an embedding")
            e = self.emb(F.silu(emb)).reshape(*emb.shape[:1], -1, *([1] * (h.ndim - 2)))  # (B, C', 1, ...)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = h * (1 + scale) + shift
            else:
                h = h + e
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


#: Zero padding of the strided downsampling convolution.
DOWNSAMPLE_PADDING = ("symmetric", "asymmetric")


class Downsample(nn.Module):
    """Halve every spatial axis: strided 3-conv, or average pooling when ``use_conv`` is False.

    Args:
        padding (`str`, defaults to ``"symmetric"``): of the convolution: ``symmetric``
            pads 1 on both sides of each axis; ``asymmetric`` pads 0 before and 1 after
            (Stable Diffusion's autoencoder; same output size, other alignment).
    """

    def __init__(self, dims: int, channels: int, out_channels: int | None = None, use_conv: bool = True,
                 padding: str = "symmetric"):
        super().__init__()
        out_channels = out_channels or channels
        check_dims(dims)
        if padding not in DOWNSAMPLE_PADDING:
            raise ValueError(f"Downsample padding={padding!r} is not valid; "
                             f"choose one of: {', '.join(DOWNSAMPLE_PADDING)}")
        self.pad = (0, 1) * dims if use_conv and padding == "asymmetric" else None  # F.pad order: last axis first
        if use_conv:
            self.op = conv_nd(dims, channels, out_channels, 3, stride=2, padding=0 if self.pad else 1)
        else:
            if out_channels != channels:
                raise ValueError("pooled downsampling cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(F.pad(x, self.pad) if self.pad else x)


class Upsample(nn.Module):
    """Double every spatial axis (nearest), then an optional 3-conv."""

    def __init__(self, dims: int, channels: int, out_channels: int | None = None, use_conv: bool = True):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = conv_nd(dims, channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x
