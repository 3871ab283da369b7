"""Building a run's components from config nodes through the registry.

Training, export loading and the CLI all go through these functions, so a
model is assembled the same way everywhere: by registry name, never by
import string.
"""

from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from .interfaces import Autoencoder, Conditioner, Denoiser, Modality
from .plugins import registry


def build_modality(cfg: Any) -> Modality:
    """The modality named by ``cfg.name`` (data, file output, metrics)."""
    return registry().build("modality", cfg)


def build_autoencoder(autoencoder_cfg: Any, regularizer_cfg: Any, modality: Modality) -> Autoencoder:
    """Regularizer first, then the autoencoder around it (constructors take built objects).

    Every autoencoder config carries ``latent_channels``; the regularizer is
    built for that many channels.
    """
    reg = registry()
    latent_channels = autoencoder_cfg["latent_channels"] if isinstance(autoencoder_cfg, (dict, DictConfig)) else autoencoder_cfg.latent_channels
    regularizer = reg.build("regularizer", regularizer_cfg, latent_channels=latent_channels)
    autoencoder = reg.build(
        "autoencoder", autoencoder_cfg, dims=modality.dims, in_channels=modality.channels, regularizer=regularizer
    )
    autoencoder.latent_shape(modality.sample_shape)  # fails early when f does not divide the input size
    return autoencoder


def conditioner_configs(cfg: Any) -> list[Any]:
    """The conditioner nodes of a config: one node, a list of nodes, or ``none``."""
    if cfg is None:
        return []
    nodes = list(cfg) if isinstance(cfg, (list, tuple)) or OmegaConf.is_list(cfg) else [cfg]
    return [n for n in nodes if (n["name"] if isinstance(n, (dict, DictConfig)) else n.name) != "none"]


def build_conditioners(cfg: Any, modality: Modality, latent_shape: Sequence[int] | None = None) -> list[Conditioner]:
    """tau_theta for each configured condition (an empty list means unconditional).

    With ``latent_shape`` ``(c, *s)`` each conditioner is told the latent grid
    (:meth:`Conditioner.set_latent_shape`), which map-emitting ones need before use.
    """
    conditioners = [registry().build("conditioner", node, modality=modality) for node in conditioner_configs(cfg)]
    if latent_shape is not None:
        for c in conditioners:
            c.set_latent_shape(list(latent_shape))
    return conditioners


def build_denoiser(cfg: Any, latent_shape: Sequence[int], conditioners: Sequence[Conditioner]) -> Denoiser:
    """The denoiser for latents ``(c, *s)``, sized for what the conditioners emit.

    Cross-attention tokens of several conditioners are concatenated along
    ``M``, so they must share ``context_dim``; vectors are concatenated along
    features and concat maps along channels.
    """
    context_dims = {c.context_dim for c in conditioners if c.context_dim}
    if len(context_dims) > 1:
        raise ValueError(
            f"conditioners emit cross-attention tokens of different sizes {sorted(context_dims)}; "
            "set the same embed/context size on each"
        )
    vector_dim = sum(c.vector_dim or 0 for c in conditioners) or None
    concat = sum(c.concat_channels for c in conditioners)
    c = latent_shape[0]
    return registry().build(
        "denoiser", cfg, dims=len(latent_shape) - 1, in_channels=c, out_channels=c,
        context_dim=next(iter(context_dims), None), concat_channels=concat, vector_dim=vector_dim,
    )
