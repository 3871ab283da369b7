"""Log-mel features: waveform ``[B, N]`` -> log-mel ``[B, n_mels, T]`` and back to the tensor layout.

The mel power spectrogram (torchaudio ``MelSpectrogram``, HTK mel scale, no
filter normalization) is log-compressed with a floor, ``log(clamp(mel, floor))``,
then standardized per mel bin with statistics measured on the training data.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from .config import AudioConfig


def f_max_of(cfg: AudioConfig) -> float:
    return float(cfg.f_max) if cfg.f_max is not None else cfg.sample_rate / 2


class LogMel(nn.Module):
    """``wave [B, N]`` -> ``log(clamp(mel, floor)) [B, n_mels, 1 + N // hop]`` (centred frames)."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.floor = cfg.log_floor
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=f_max_of(cfg),
            n_mels=cfg.n_mels,
            power=2.0,
            center=True,
        )

    def forward(self, wave: Tensor) -> Tensor:
        return torch.log(self.mel(wave).clamp(min=self.floor))


def measure_stats(logmel: Tensor, min_std: float = 1e-3) -> dict[str, Tensor]:
    """Per-mel-bin ``mean`` and ``std`` ``[n_mels]`` of ``logmel [B, n_mels, T]`` over items and frames."""
    flat = logmel.transpose(0, 1).reshape(logmel.shape[1], -1)  # (n_mels, B*T)
    return {"mean": flat.mean(1), "std": flat.std(1).clamp(min=min_std)}


def normalize(logmel: Tensor, stats: dict[str, Tensor], layout: str) -> Tensor:
    """``logmel [B, n_mels, T]`` -> standardized ``[B, n_mels, T]`` ("1d") or ``[B, 1, n_mels, T]`` ("2d")."""
    x = (logmel - stats["mean"][:, None]) / stats["std"][:, None]
    return x.unsqueeze(1) if layout == "2d" else x


def denormalize(x: Tensor, stats: dict[str, Tensor], layout: str) -> Tensor:
    """Inverse of :func:`normalize`: back to ``logmel [B, n_mels, T]``."""
    if layout == "2d":
        x = x.squeeze(1)  # (B, 1, n_mels, T) -> (B, n_mels, T)
    return x * stats["std"][:, None] + stats["mean"][:, None]


def fix_length(wave: Tensor, length: int, random_crop: bool) -> Tensor:
    """Crop ``wave [N]`` to ``length`` (random offset or centred) or zero-pad it centred."""
    n = wave.shape[-1]
    if n >= length:
        start = int(torch.randint(0, n - length + 1, ())) if random_crop else (n - length) // 2
        return wave[..., start : start + length]
    left = (length - n) // 2
    return nn.functional.pad(wave, (left, length - n - left))
