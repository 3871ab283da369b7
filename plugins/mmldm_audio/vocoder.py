"""Griffin-Lim vocoder: normalized log-mel -> waveform, no training needed.

Undo the per-bin standardization and the log, invert the mel filter bank by
least squares (torchaudio ``InverseMelScale``) and recover a phase with fast
Griffin-Lim (Griffin & Lim 1984; Perraudin et al. 2013, momentum).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor

from mmldm.interfaces import Vocoder

from .config import GriffinLimConfig
from .features import denormalize, f_max_of


class GriffinLimVocoder(Vocoder):
    """``features [B, n_mels, T]`` ("1d") or ``[B, 1, n_mels, T]`` ("2d") -> ``wave [B, (T - 1) * hop]``.

    Args:
        cfg (`GriffinLimConfig`): iterations and momentum.
        modality (`AudioModality`): supplies the feature settings and the
            normalization statistics (measured on its training data if needed).
    """

    def __init__(self, cfg: GriffinLimConfig, *, modality) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        acfg = modality.cfg
        self.sample_rate = acfg.sample_rate
        self.layout = acfg.layout
        stats = modality.stats
        self.register_buffer("mean", stats["mean"].clone())
        self.register_buffer("std", stats["std"].clone())
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=acfg.n_fft // 2 + 1,
            n_mels=acfg.n_mels,
            sample_rate=acfg.sample_rate,
            f_min=acfg.f_min,
            f_max=f_max_of(acfg),
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=acfg.n_fft,
            n_iter=cfg.n_iter,
            hop_length=acfg.hop_length,
            power=2.0,  # the mel features are power spectrograms
            momentum=cfg.momentum,
            rand_init=False,  # zero-phase start: the same features give the same waveform
        )

    def mel_power(self, features: Tensor) -> Tensor:
        """Normalized features -> linear mel power ``[B, n_mels, T]``."""
        logmel = denormalize(features.float(), {"mean": self.mean, "std": self.std}, self.layout)
        return logmel.exp()

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        power = self.inverse_mel(self.mel_power(features)).clamp(min=0)  # (B, n_fft//2+1, T)
        return self.griffin_lim(power)
