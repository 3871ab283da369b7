"""Diffusion: processes (vp, flow, edm), schedules, loss, samplers, classifier-free guidance.

Importing this package is torch-free (the plugin and configs load without torch);
the names below import their module on first access::

    from mmldm.diffusion import DiscreteSchedule, VPProcess, FlowProcess, sample_dpmpp_2m
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "process": ("Noised", "Preconditioning", "Process", "ProcessDenoiser", "build_process", "diffusion_loss"),
    "vp": ("PREDICTION", "VPProcess", "convert"),
    "flow": ("FlowProcess",),
    "edm": ("EDMProcess",),
    "schedules": ("BETA_SCHEDULES", "SPACINGS", "DiscreteSchedule", "make_betas", "rescale_zero_terminal_snr"),
    "samplers": (
        "ancestral_step", "get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_euler",
        "sample_heun",
    ),
    "plugin": ("PROCESSES", "SAMPLERS"),
    "guidance": ("cfg_denoiser", "guided_denoiser"),
    "sampling": ("condition", "guidance_branches", "guided_model", "null_condition", "resolve_sampler", "sample_latents",
                 "sampler_settings"),
    "config": ("DDIMConfig", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "EDMConfig", "FlowConfig", "PREDICTIONS",
               "ProcessConfig", "SamplerConfig", "VPConfig", "WEIGHTINGS", "check_sampler_fits", "upgrade_diffusion_config",
               "sampler_options"),
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
