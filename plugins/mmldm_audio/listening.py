"""Listening files of autoencoder reconstructions: what a run's ``reconstructions/`` folder holds for audio.

A log-mel autoencoder is heard through a vocoder, so a person compares three things per clip: the input
(the vocoder on the real features), the reconstruction (the vocoder on the autoencoder's output) and how
the reconstruction's spectrogram survives vocoding. :func:`save_listening_files` writes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor

from mmldm.preview import tile

from .modality import spectrogram_pictures

#: the panels of each ``compare_XXXX.png``, left to right
PANELS = ("input", "autoencoder", "autoencoder+vocoder")


@torch.no_grad()
def save_listening_files(modality: Any, x: Tensor, x_rec: Tensor, directory: Path) -> list[Path]:
    """Per clip ``input_XXXX.wav``, ``reconstruction_XXXX.wav`` and ``compare_XXXX.png``, then ``compare_grid.png``.

    * ``input_XXXX.wav``: ``modality.vocoder()`` on the real features ``x`` (what the autoencoder could
      at best give back through this vocoder);
    * ``reconstruction_XXXX.wav``: the same vocoder on the autoencoder's output ``x_rec``;
    * ``compare_XXXX.png``: three titled log-mel panels, :data:`PANELS`: the input, the autoencoder's
      output, and the log-mel re-analysed from ``reconstruction_XXXX.wav`` (what a listener hears);
      one colour scale for all clips and panels (``log(log_floor)`` to the loudest bin);
    * ``compare_grid.png``: every clip's three panels, one row per clip.

    Args:
        modality (`AudioModality`): supplies ``vocoder()``, ``logmel``, ``to_logmel`` and the sample rate.
        x, x_rec (`Tensor`): normalized features ``[B, C, *s]`` in the modality's layout.
        directory (`Path`): created if needed.

    Returns:
        the written paths, per clip its two WAVs and its picture, the grid last.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x, x_rec = x.detach().float().cpu(), x_rec.detach().float().cpu()
    vocoder = modality.vocoder()
    waves, waves_rec = vocoder(x).cpu(), vocoder(x_rec).cpu()
    logmels = torch.cat([modality.to_logmel(x), modality.to_logmel(x_rec), modality.logmel(waves_rec)])  # (3B, F, T)
    pictures = spectrogram_pictures(logmels, math.log(modality.cfg.log_floor))
    b = len(x)
    paths: list[Path] = []
    rows = []  # per clip its three pictures (3, H, W, 3)
    for i in range(b):
        for name, wave in (("input", waves[i]), ("reconstruction", waves_rec[i])):
            paths.append(directory / f"{name}_{i:04d}.wav")
            sf.write(paths[-1], wave.clamp(-1, 1).numpy(), modality.sample_rate, subtype="PCM_16")
        row = pictures[[i, b + i, 2 * b + i]]  # input | autoencoder | autoencoder+vocoder
        rows.append(row)
        paths.append(directory / f"compare_{i:04d}.png")
        Image.fromarray(tile(row, ncol=len(PANELS), titles=list(PANELS))).save(paths[-1])
    paths.append(directory / "compare_grid.png")
    grid_titles = [f"{i}: {panel}" for i in range(b) for panel in PANELS]
    Image.fromarray(tile(np.concatenate(rows), ncol=len(PANELS), titles=grid_titles)).save(paths[-1])
    return paths
