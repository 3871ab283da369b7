"""N-d layer factories: one code path for 1D, 2D and 3D.

``dims`` selects the torch class; nothing else in mmldm branches on it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def check_dims(dims: int) -> int:
    """Return ``dims`` if it is 1, 2 or 3, else raise a ``ValueError`` that says so."""
    if dims not in _CONV:
        raise ValueError(f"dims must be 1, 2 or 3 (spatial dimensions of [B, C, *spatial]), got {dims!r}")
    return dims


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv{dims}d(*args, **kwargs)``."""
    return _CONV[check_dims(dims)](*args, **kwargs)


def conv_transpose_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.ConvTranspose{dims}d(*args, **kwargs)``."""
    return _CONV_T[check_dims(dims)](*args, **kwargs)


def conv_fn(dims: int, transposed: bool = False):
    """The functional form: ``F.conv{dims}d``, or ``F.conv_transpose{dims}d`` when ``transposed``."""
    return (_CONV_T_FN if transposed else _CONV_FN)[check_dims(dims)]


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.AvgPool{dims}d(*args, **kwargs)``."""
    return _AVG_POOL[check_dims(dims)](*args, **kwargs)


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups that divide ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=eps, affine=True)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (residual branches start as identity) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
