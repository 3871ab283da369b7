"""Sampler configs (torch-free: the CLI validates them before importing torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import ComponentConfig
from ..schema import at_least, check_fields, checked, one_of


@dataclass
class SamplerConfig(ComponentConfig):
    """How to sample with a registered sampler.

    Args:
        steps (`int`): number of sigma steps (Heun evaluates the model ``2 * steps - 1`` times).
        spacing (`str`): ``leading``, ``trailing``, ``linspace`` or ``karras``
            (see :meth:`mmldm.diffusion.DiscreteSchedule.sigmas_for`).
    """

    steps: int = at_least(1, 50)
    # trailing always starts at the last training step, which zero-terminal-SNR
    # schedules need (Lin et al. 2023) and is never worse for the others
    spacing: str = one_of("trailing", ("leading", "trailing", "linspace", "karras"))

    def __post_init__(self) -> None:
        check_fields(self, "sampler")


@dataclass
class DDIMConfig(SamplerConfig):
    """DDIM: ``eta`` 0 is deterministic, 1 matches DDPM's posterior noise."""

    eta: float = checked(0.0, ge=0)


def sampler_options(cfg: SamplerConfig) -> dict[str, Any]:
    """The keyword options a sampler function takes from ``cfg`` (fields beyond name, steps, spacing)."""
    base = {f.name for f in dataclasses.fields(SamplerConfig)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in base}
