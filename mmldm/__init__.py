"""mmldm: latent diffusion over any modality (1D, 2D and 3D latents), extended by pluggy plugins.

The package import is light (no torch): heavy parts load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import LatentDiffusion

__all__ = ["LatentDiffusion", "hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "LatentDiffusion":
        from .pipeline import LatentDiffusion

        return LatentDiffusion
    raise AttributeError(f"module 'mmldm' has no attribute {name!r}")
