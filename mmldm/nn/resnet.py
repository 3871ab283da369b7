"""N-d residual blocks and resampling layers."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import avg_pool_nd, check_dims, conv_fn, conv_nd, group_norm, zero_module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip, optionally conditioned on an embedding.

    Args:
        dims (`int`): 1, 2 or 3.
        in_channels (`int`), out_channels (`int`, *optional*): defaults to ``in_channels``.
        emb_channels (`int`, *optional*): size of a conditioning vector ``[B, E]``
            (the time embedding). With ``scale_shift`` it modulates the second
            norm as ``norm(h) * (1 + scale) + shift`` (Dhariwal & Nichol 2021),
            otherwise it is added to the features before the second norm,
            ``norm(h + Linear(emb))`` (Ho et al. 2020; Rombach et al.'s
            ``use_scale_shift_norm=False``, diffusers' ``"default"``, MONAI's only form).
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
        if self.emb is None:
            h = self.norm2(h)
        else:
            if emb is None:
                raise ValueError("this ResBlock was built with emb_channels and needs an embedding")
            e = self.emb(F.silu(emb)).reshape(*emb.shape[:1], -1, *([1] * (h.ndim - 2)))  # (B, C', 1, ...)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                # two elementwise ops, not one addcmul: torch's addcmul with a broadcast [B, C, 1, ...]
                # operand takes a slow path (forward + backward 1.1-2.9x the time of mul + add here,
                # float32 and bf16, dims 2 and 3)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
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


#: How :func:`upsample_conv` computes: ``auto`` picks by cost (:func:`transposed_upsample_pays`).
UPSAMPLE_METHODS = ("auto", "transposed", "interpolate")


def _check_upsample_method(method: str) -> str:
    if method not in UPSAMPLE_METHODS:
        raise ValueError(f"upsample method={method!r} is not valid; choose one of: {', '.join(UPSAMPLE_METHODS)}")
    return method

# Per axis, a 3-tap kernel (w0, w1, w2) applied after nearest x2 upsampling equals a stride-2 transposed
# convolution (padding 1) with the 4-tap kernel (w2, w1 + w2, w0 + w1, w0): even outputs see inputs i-1, i
# through (w0, w1 + w2), odd outputs see i, i+1 through (w0 + w1, w2). Rows: the 4 taps; columns: w0..w2.
_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


@functools.lru_cache(maxsize=None)
def _tap_matrix(dims: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[3^dims, 4^dims]``: flattened 3-conv kernel -> flattened transposed-conv kernel (Kronecker power)."""
    m = torch.tensor(_TAPS, dtype=torch.float64)
    out = m
    for _ in range(dims - 1):
        out = torch.kron(out, m)
    return out.T.contiguous().to(device=device, dtype=dtype)


def transposed_upsample_pays(x: Tensor) -> bool:
    """Whether :func:`upsample_conv` should take the transposed convolution for input ``x``.

    The transposed form does ``(3/2)^dims`` fewer multiply-adds (2^d instead of 3^d per output and channel
    pair), but first builds its ``4^d``-tap kernel from the weight, forward and backward: memory traffic of
    about ``3^d + 4^d`` words per channel pair. It pays when the multiply-adds saved per kernel word,
    ``positions * 2^d * (3^d - 2^d) / (3^d + 4^d)`` with ``positions = batch * input cells``, reach 200.
    Measured on CPU (``python -m benchmarks.upsample``, forward + backward): from there on it took 0.13-0.94
    of the time of interpolate + convolution in 2D and 3D (1.0 in 1D, where it saves only 1.5x), except
    at the rule's edge with the heaviest weight (256 channels, 4^3 cells, batch 2: 0.84-1.08 over three
    runs); below, small 2D maps were up to 1.3x and 1D sequences up to 2x slower. So 1D takes it from 700 positions, 2D from 250
    and 3D from 120. The voxel preset's training steps: autoencoder 0.87, U-Net 0.93 of their time with
    every upsampler on ``interpolate``.
    """
    d = x.ndim - 2
    positions = x.shape[0] * math.prod(x.shape[2:])
    return positions * 2**d * (3**d - 2**d) >= 200 * (3**d + 4**d)


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None, method: str = "auto") -> Tensor:
    """``conv(nearest_upsample_x2(x), weight, bias, padding=1)`` for a 3-tap ``weight [C_out, C_in, 3, ...]``.

    ``method``: ``interpolate`` computes exactly that; ``transposed`` computes the same function as one
    stride-2 transposed convolution with a 4-tap kernel derived from ``weight`` (no upsampled copy of
    ``x`` and ``(3/2)^dims`` fewer multiply-adds; equal to float rounding, gradients included);
    ``auto`` takes whichever :func:`transposed_upsample_pays` says is cheaper for ``x``'s shape.
    """
    _check_upsample_method(method)
    d = check_dims(x.ndim - 2)
    if tuple(weight.shape[2:]) != (3,) * d:
        raise ValueError(f"upsample_conv needs a 3-tap kernel over {d} axes, got weight shape {tuple(weight.shape)}")
    if method == "interpolate" or (method == "auto" and not transposed_upsample_pays(x)):
        return conv_fn(d)(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
    c_out, c_in = weight.shape[:2]
    # kernel in the transposed convolution's [C_in, C_out, 4, ...] layout, in the weight's dtype (under
    # autocast the convolution rounds it once, as it does the 3-tap weight)
    with torch.autocast(x.device.type, enabled=False):
        taps = _tap_matrix(d, weight.device, weight.dtype)
        kernel = (weight.transpose(0, 1).reshape(c_in * c_out, 3**d) @ taps).view(c_in, c_out, *[4] * d)
    return conv_fn(d, transposed=True)(x, kernel, bias, stride=2, padding=1)


class Upsample(nn.Module):
    """Double every spatial axis (nearest), then an optional 3-conv.

    The conv is stored as a plain ``conv`` layer (the checkpoint layout of Rombach et al. and diffusers)
    and applied through :func:`upsample_conv`, which computes nearest + conv as one transposed convolution
    where that is cheaper (``method="auto"``).
    """

    def __init__(self, dims: int, channels: int, out_channels: int | None = None, use_conv: bool = True,
                 method: str = "auto"):
        super().__init__()
        out_channels = out_channels or channels
        self.method = _check_upsample_method(method)
        self.conv = conv_nd(dims, channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return upsample_conv(x, self.conv.weight, self.conv.bias, self.method)
