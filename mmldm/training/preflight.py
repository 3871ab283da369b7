"""Checks that a composed ``train`` config fits together, before any step is trained.

Each key is valid on its own once the config is composed and range-checked
(:func:`mmldm.configuration.check_values`, run here again for configs built in
Python); these checks catch combinations that would otherwise fail hours later (a denoiser that
cannot take phase 1's latents fails when phase 2 starts, after phase 1 has
trained). Each error names the config keys to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from ..build import build_autoencoder, build_denoiser
from ..configuration import ConfigProblem, check_values
from ..export import load_config
from ..interfaces import Conditioning, Modality
from ..plugins import plugins
from .order import preserved_rng


class PreflightError(ValueError):
    """Config values that do not fit together (the message names the keys)."""


def check_run(cfg: DictConfig, modality: Modality) -> tuple[int, ...]:
    """Check a ``train`` run; returns the latent shape ``(c, *s)`` phase 2 will see.

    Raises :class:`PreflightError` for a value out of its declared range
    (:func:`mmldm.configuration.check_values`), when phase 1's input size does not fit the
    autoencoder, when ``phase1.checkpoint`` holds an export that disagrees with
    the run config (modality, latent channels), or when the denoiser cannot
    take the latents (a zero latent is passed through it once).
    """
    try:  # the ranges every key declares (mmldm.schema), as `mmldm train` checks them when composing
        check_values(cfg)
    except ConfigProblem as e:
        raise PreflightError(str(e)) from None
    with preserved_rng():  # building models draws initial weights; the run's RNG stays as seeded
        if cfg.stage.autoencoder:
            latent_shape = _phase1_latent_shape(cfg, modality)
        elif cfg.phase1.checkpoint:
            latent_shape = _checkpoint_latent_shape(cfg, modality)
        else:
            return ()
        if cfg.stage.diffusion:
            _check_denoiser(cfg, latent_shape)
    _check_trained_modules(cfg, modality)
    return latent_shape


def _check_trained_modules(cfg: DictConfig, modality: Modality) -> None:
    """The trained parts the modality's files need (e.g. a neural vocoder's folder) load now, not when the
    first files are written after phase 1."""
    try:
        modality.trained_modules()
    except (OSError, ValueError, RuntimeError) as e:  # ExportError is a RuntimeError
        raise PreflightError(f"modality={cfg.modality.name}: {e}") from None


def _phase1_latent_shape(cfg: DictConfig, modality: Modality) -> tuple[int, ...]:
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    try:
        return tuple(autoencoder.latent_shape(modality.sample_shape))
    except ValueError as e:
        raise PreflightError(
            f"modality={cfg.modality.name} gives samples of shape {tuple(modality.sample_shape)} that "
            f"autoencoder={cfg.autoencoder.name} cannot encode: {e} (keys: modality size settings, "
            "autoencoder.channel_mult)"
        ) from None


def _checkpoint_latent_shape(cfg: DictConfig, modality: Modality) -> tuple[int, ...]:
    """An mmldm export's latent shape, or that of a format a plugin reads (hook ``mmldm_phase1_latent_shape``)."""
    where = Path(cfg.phase1.checkpoint)
    if not (where / "config.yaml").is_file():
        try:
            shape = plugins().manager.hook.mmldm_phase1_latent_shape(path=str(where),
                                                                     sample_shape=tuple(modality.sample_shape))
        except ValueError as e:
            raise PreflightError(f"phase1.checkpoint={where}: {e}") from None
        if shape is not None:
            return tuple(int(s) for s in shape)
    return _export_latent_shape(cfg)


def _export_latent_shape(cfg: DictConfig) -> tuple[int, ...]:
    """The latent shape of the ``phase1.checkpoint`` export, checked against the run config."""
    where = Path(cfg.phase1.checkpoint)
    exported = load_config(where)
    shape = tuple(int(s) for s in exported.get("latent", {}).get("shape", []))
    if not shape:
        raise PreflightError(f"phase1.checkpoint={where}: config.yaml has no latent.shape; is this an mmldm export?")
    name = exported.get("modality", {}).get("name")
    if name is not None and name != cfg.modality.name:
        raise PreflightError(
            f"phase1.checkpoint={where} holds an autoencoder for modality '{name}', but the run has "
            f"modality={cfg.modality.name}; set modality={name} or use an export of the right modality"
        )
    channels = cfg.autoencoder.get("latent_channels")
    if channels is not None and int(channels) != shape[0]:
        raise PreflightError(
            f"latent channel mismatch: phase1.checkpoint={where} encodes {shape[0]} latent channels "
            f"(latent shape {list(shape)}), but autoencoder.latent_channels={channels} in this config; "
            f"set autoencoder.latent_channels={shape[0]} (phase 2 is built for the export's latents)"
        )
    return shape


def _check_denoiser(cfg: DictConfig, latent_shape: Sequence[int]) -> None:
    """Build the (unconditional) denoiser for ``latent_shape`` and pass a batch of two zero latents through it
    (two: group norms over a 1x1 map need more than one value per group)."""
    name = cfg.denoiser.get("name", "?")
    try:
        denoiser = build_denoiser(cfg.denoiser, latent_shape, [])
        with torch.no_grad():
            out = denoiser.eval()(torch.zeros(2, *latent_shape), torch.zeros(2), Conditioning())
    except (ValueError, RuntimeError, TypeError) as e:
        raise PreflightError(
            f"denoiser={name} cannot take latents of shape {list(latent_shape)} "
            f"(dims={len(latent_shape) - 1}): {str(e).splitlines()[0]} (keys: denoiser.*, e.g. "
            "denoiser.channel_mult; or autoencoder.channel_mult / the modality size, which set the latent size)"
        ) from None
    if tuple(out.shape) != (2, *latent_shape):
        raise PreflightError(f"denoiser={name} returns shape {tuple(out.shape)} for latents {[2, *latent_shape]}; "
                             "it must return the latent's shape")

