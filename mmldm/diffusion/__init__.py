"""Diffusion: schedules, parameterizations and loss, samplers, classifier-free guidance.

Importing this package is torch-free (the sampler plugin and configs load
without torch); the names below import their module on first access::

    from mmldm.diffusion import DiscreteSchedule, DenoiserWrapper, sample_dpmpp_2m
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "schedules": ("BETA_SCHEDULES", "SPACINGS", "DiscreteSchedule", "make_betas", "rescale_zero_terminal_snr"),
    "parameterization": (
        "PARAMETERIZATIONS", "WEIGHTINGS", "DenoiserWrapper", "check_parameterization", "convert",
        "diffusion_loss", "loss_weight", "prediction_target", "scalings",
    ),
    "samplers": (
        "SAMPLERS", "ancestral_step", "get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
        "sample_euler", "sample_heun",
    ),
    "guidance": ("cfg_denoiser", "guided_denoiser"),
    "sampling": ("condition", "guidance_branches", "null_condition", "resolve_sampler", "sample_latents"),
    "config": ("DDIMConfig", "SamplerConfig", "sampler_options"),
    "utils": ("append_dims",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mmldm.diffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
