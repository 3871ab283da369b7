"""Configuration of the audio modality and the Griffin-Lim vocoder (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from mmldm.config import ComponentConfig
from mmldm.schema import checked, non_negative, one_of, positive, seed, unit_interval

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
        peak_level (`float`, *optional*): when set, every clip (synthesized or read) has its mean
            removed and is scaled to this peak amplitude before cropping (e.g. 0.5 as AudioLDM):
            recordings made at different gains then compare; ``null`` keeps the levels.
        layout (`str`): ``"1d"`` -> ``x [n_mels, T]`` (mel bins as channels,
            ``dims=1``); ``"2d"`` -> ``x [1, n_mels, T]`` (``dims=2``, ``n_mels``
            must then be a multiple of 8 too).
        num_samples (`int`): number of synthesized clips (train + val).
        val_fraction (`float`): share of the clips held out as "val" (a seeded random pick of the
            folder's files; the last synthesized clips).
        val_pattern (`str`, *optional*): source ``"folder"`` only: a regex searched in each file's
            path relative to ``root``; matching files form "val", the others "train", and
            ``val_fraction`` is unused (e.g. ``_theo_`` holds out one FSDD speaker).
    """

    source: str = one_of("synth", AUDIO_SOURCES)
    root: Optional[str] = None  # required by "folder"
    label_pattern: Optional[str] = r"^(\d+)_"
    sample_rate: int = positive(16000)
    num_frames: int = checked(64, gt=0, multiple_of=8)
    n_fft: int = positive(1024)
    hop_length: int = positive(256)
    n_mels: int = positive(64)
    f_min: float = non_negative(0.0)
    f_max: Optional[float] = positive(None)  # null: sample_rate / 2
    log_floor: float = positive(1e-5)
    peak_level: Optional[float] = checked(None, gt=0, le=1)  # null: keep each file's own level
    layout: str = one_of("1d", AUDIO_LAYOUTS)
    num_samples: int = positive(1000)
    seed: int = seed(0)
    val_fraction: float = unit_interval(0.1, open_high=True)
    val_pattern: Optional[str] = None  # null: split by val_fraction

    #: the key that sets :attr:`sample_dims` (named when a denoiser's dims disagree)
    dims_key: ClassVar[str] = "layout"

    @property
    def sample_dims(self) -> int:
        """Spatial dimensions of a sample: 1 (``layout="1d"``) or 2."""
        return 1 if self.layout == "1d" else 2


@dataclass
class GriffinLimConfig(ComponentConfig):
    """Griffin-Lim phase reconstruction (Griffin & Lim 1984) with momentum (Perraudin et al. 2013).

    Args:
        n_iter (`int`): iterations; 32 is audible, 100+ is cleaner.
        momentum (`float`): fast Griffin-Lim momentum in [0, 1).
    """

    n_iter: int = positive(32)
    momentum: float = unit_interval(0.99, open_high=True)
