"""Configuration of the audio modality and the Griffin-Lim vocoder (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmldm.config import ComponentConfig

AUDIO_SOURCES = ("synth", "folder")
AUDIO_LAYOUTS = ("1d", "2d")


@dataclass
class AudioConfig(ComponentConfig):
    """Normalized log-mel spectrograms of fixed-length mono clips.

    A clip holds ``(num_frames - 1) * hop_length`` samples, which the
    centred STFT turns into exactly ``num_frames`` frames (defaults: 16,128
    samples, ~1.01 s at 16 kHz, 64 frames).

    Args:
        source (`str`): ``"synth"`` (embedded synthesized sounds, default) or
            ``"folder"`` (WAV/FLAC/OGG files under ``root``).
        label_pattern (`str`, *optional*): regex on the file name whose first
            group is the label (default fits ``{digit}_{speaker}_{index}.wav``);
            ``null`` takes labels from the first sub-folder instead.
        num_frames (`int`): ``T``, a multiple of 8 so the autoencoder can halve it 3 times.
        log_floor (`float`): mel power is clamped to at least this before the log.
        layout (`str`): ``"1d"`` -> ``x [n_mels, T]`` (mel bins as channels,
            ``dims=1``); ``"2d"`` -> ``x [1, n_mels, T]`` (``dims=2``, ``n_mels``
            must then be a multiple of 8 too).
        num_samples (`int`): number of synthesized clips (train + val).
    """

    source: str = "synth"
    root: Optional[str] = None  # required by "folder"
    label_pattern: Optional[str] = r"^(\d+)_"
    sample_rate: int = 16000
    num_frames: int = 64
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    f_min: float = 0.0
    f_max: Optional[float] = None  # null: sample_rate / 2
    log_floor: float = 1e-5
    layout: str = "1d"
    num_samples: int = 1000
    seed: int = 0
    val_fraction: float = 0.1


@dataclass
class GriffinLimConfig(ComponentConfig):
    """Griffin-Lim phase reconstruction (Griffin & Lim 1984) with momentum (Perraudin et al. 2013).

    Args:
        n_iter (`int`): iterations; 32 is audible, 100+ is cleaner.
        momentum (`float`): fast Griffin-Lim momentum in [0, 1).
    """

    n_iter: int = 32
    momentum: float = 0.99
