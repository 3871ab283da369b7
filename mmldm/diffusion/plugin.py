"""Built-in plugin registering the samplers (kind ``sampler``) and the diffusion processes (kind ``process``).

The registry entries are lazy ``"module:attr"`` references, so loading plugins does not import torch;
their configs are the dataclasses of :mod:`mmldm.diffusion.config`. :data:`SAMPLERS` is the one list
of built-in samplers; code looks a sampler up by name through the registry
(:func:`mmldm.diffusion.samplers.get_sampler`), which holds plugins' samplers too.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from .config import DDIMConfig, EDMConfig, FlowConfig, SamplerConfig, VPConfig

#: Built-in samplers: (name, config, description); the function is ``mmldm.diffusion.samplers.sample_<name>``.
SAMPLERS = (
    ("ddpm", SamplerConfig, "DDPM ancestral sampling from the posterior (Ho et al. 2020)"),
    ("ddim", DDIMConfig, "DDIM with eta (Song et al. 2021); eta=0 is deterministic"),
    ("euler", SamplerConfig, "Euler steps on the probability-flow ODE (Karras et al. 2022)"),
    ("heun", SamplerConfig, "Heun 2nd-order ODE steps, 2 model calls per step (Karras et al. 2022)"),
    ("dpmpp_2m", SamplerConfig, "DPM-Solver++(2M), good in 15-30 steps (Lu et al. 2022)"),
)
#: Built-in processes: (name, config, factory, description).
PROCESSES = (
    ("vp", VPConfig, "mmldm.diffusion.vp:VPProcess.from_config",
     "variance-preserving, eps/v/x0 prediction, beta schedules, min-SNR (DDPM, Stable Diffusion)"),
    ("flow", FlowConfig, "mmldm.diffusion.flow:FlowProcess.from_config",
     "rectified flow / flow matching, logit-normal times, SD3 shift (Esser et al. 2024)"),
    ("edm", EDMConfig, "mmldm.diffusion.edm:EDMProcess.from_config",
     "EDM preconditioning, log-normal sigmas, Karras grid (Karras et al. 2022)"),
)


@hookimpl
def mmldm_register_components(registry) -> None:  # type: ignore[no-untyped-def]
    for name, config, description in SAMPLERS:
        registry.add("sampler", name, f"mmldm.diffusion.samplers:sample_{name}", config=config, description=description)
    for name, config, factory, description in PROCESSES:
        registry.add("process", name, factory, config=config, description=description)
