"""Helpers shared by the built-in conditioners."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mmldm.interfaces import CONDITIONING_KINDS, Conditioner

from .config import ConditionerConfig


def check_outputs(outputs: Sequence[str], allowed: Sequence[str], conditioner: str) -> tuple[str, ...]:
    """``outputs`` in the order of :data:`CONDITIONING_KINDS`; a clear error for an empty or bad list."""
    bad = [o for o in outputs if o not in allowed]
    if bad or not outputs:
        raise ValueError(
            f"{conditioner} conditioner outputs must be a non-empty subset of {list(allowed)}, got {list(outputs)}"
        )
    return tuple(kind for kind in CONDITIONING_KINDS if kind in outputs)


def apply_options(conditioner: Conditioner, cfg: ConditionerConfig, freeze: bool = True) -> Conditioner:
    """Set ``key`` and ``dropout`` from the config; freeze every weight when ``trainable`` is off.

    ``freeze=False`` leaves freezing to the conditioner (a pretrained encoder freezes
    only the encoder, not a new projection).
    """
    if not cfg.key:
        raise ValueError(f"conditioner '{cfg.name}': key must name an entry of batch['cond'], got '{cfg.key}'")
    if cfg.dropout is not None and not 0.0 <= cfg.dropout <= 1.0:
        raise ValueError(f"conditioner '{cfg.name}' (key '{cfg.key}'): dropout must be in [0, 1], got {cfg.dropout}")
    conditioner.key = cfg.key
    conditioner.dropout = cfg.dropout
    if freeze and not cfg.trainable:
        conditioner.requires_grad_(False)
    return conditioner


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``tokens [B, M, d]`` over the positions where ``mask [B, M]`` is set -> ``[B, d]``."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, M, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def anchor_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
