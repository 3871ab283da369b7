"""mmldm built-in plugin: the N-d convolutional autoencoder of phase 1 and its regularizers.

Registers autoencoder ``conv`` and regularizers ``kl``, ``vq`` and ``ae``.
Imports no torch: factories are lazy ``"module:attr"`` references.

Stable Diffusion's autoencoder: :mod:`mmldm_autoencoders.diffusers_format` loads a diffusers
``AutoencoderKL`` folder as ``conv`` + ``kl`` with its ``scaling_factor`` as latent statistics
(``load_diffusers_vae``) and writes one back (``save_diffusers_vae``).
"""

from __future__ import annotations

from mmldm import hookimpl

from .config import (
    AERegularizerConfig,
    AutoencoderLossConfig,
    ConvAutoencoderConfig,
    KLRegularizerConfig,
    VQRegularizerConfig,
)

__all__ = [
    "AERegularizerConfig", "AutoencoderLossConfig", "ConvAutoencoderConfig",
    "KLRegularizerConfig", "VQRegularizerConfig", "mmldm_load_phase1", "mmldm_phase1_latent_shape",
    "mmldm_register_components",
]


@hookimpl
def mmldm_register_components(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add(
        "autoencoder", "conv", "mmldm_autoencoders.model:build_conv_autoencoder", config=ConvAutoencoderConfig,
        description="N-d conv encoder/decoder (ResBlocks, mid attention), f = 2**(len(channel_mult)-1)",
    )
    registry.add(
        "regularizer", "kl", "mmldm_autoencoders.regularizers:build_kl", config=KLRegularizerConfig,
        description="diagonal Gaussian posterior with a KL penalty to N(0, I) (LDM KL-reg)",
    )
    registry.add(
        "regularizer", "vq", "mmldm_autoencoders.vq:build_vq", config=VQRegularizerConfig,
        description="vector quantization: straight-through, EMA codebook, dead-code restart",
    )
    registry.add(
        "regularizer", "ae", "mmldm_autoencoders.regularizers:build_ae", config=AERegularizerConfig,
        description="deterministic latent with optional tanh/clamp bound, variance pull and noise",
    )


def _diffusers_folder(path: str) -> bool:
    """A cheap, torch-free test: ``path`` (or ``path/vae``) has a diffusers ``AutoencoderKL`` config.json."""
    import json
    from pathlib import Path

    for folder in (Path(path), Path(path) / "vae"):
        try:
            return json.loads((folder / "config.json").read_text()).get("_class_name") == "AutoencoderKL"
        except (OSError, ValueError, AttributeError):
            continue
    return False


@hookimpl
def mmldm_phase1_latent_shape(path, sample_shape):  # type: ignore[no-untyped-def]
    if not _diffusers_folder(path):
        return None
    from .diffusers_format import diffusers_latent_shape

    return diffusers_latent_shape(path, sample_shape)


@hookimpl
def mmldm_load_phase1(path, modality_cfg):  # type: ignore[no-untyped-def]
    if not _diffusers_folder(path):
        return None
    from .diffusers_format import phase1_from_diffusers

    return phase1_from_diffusers(path, modality_cfg)
