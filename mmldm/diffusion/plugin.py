"""Built-in plugin registering the samplers of :mod:`mmldm.diffusion.samplers` (kind ``sampler``).

The registry entry *is* the sampler function (a lazy ``"module:attr"`` so that
loading plugins does not import torch); its config is a :class:`SamplerConfig`.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from .config import DDIMConfig, SamplerConfig

_MODULE = "mmldm.diffusion.samplers"
_SAMPLERS = (
    ("ddpm", SamplerConfig, "DDPM ancestral sampling from the posterior (Ho et al. 2020)"),
    ("ddim", DDIMConfig, "DDIM with eta (Song et al. 2021); eta=0 is deterministic"),
    ("euler", SamplerConfig, "Euler steps on the probability-flow ODE (Karras et al. 2022)"),
    ("heun", SamplerConfig, "Heun 2nd-order ODE steps, 2 model calls per step (Karras et al. 2022)"),
    ("dpmpp_2m", SamplerConfig, "DPM-Solver++(2M), good in 15-30 steps (Lu et al. 2022)"),
)


@hookimpl
def mmldm_register_components(registry) -> None:  # type: ignore[no-untyped-def]
    for name, config, description in _SAMPLERS:
        registry.add("sampler", name, f"{_MODULE}:sample_{name}", config=config, description=description)
