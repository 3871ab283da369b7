"""Configuration dataclasses shared by every component.

Each component registers a config dataclass derived from
:class:`ComponentConfig`. The registry stores it in Hydra's ``ConfigStore``
under group ``kind`` and option ``name``, so ``denoiser=unet3d`` on the
command line selects it, and typos in its keys or values fail at
composition time.

This module must stay importable without torch: the CLI validates a
configuration before importing the training stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import MISSING


@dataclass
class ComponentConfig:
    """Base of every component config.

    Args:
        name (`str`): the registry name of the component ("unet3d", "kl", ...).
            Set by the registry when the config is stored; it is how a built
            run finds the factory again, so exported models need no import strings.
    """

    name: str = MISSING

    def options(self) -> dict[str, Any]:
        """The fields other than ``name``, as keyword arguments for the component's constructor."""
        return {k: v for k, v in asdict(self).items() if k != "name"}
