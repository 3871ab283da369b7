"""A Vocos-style neural vocoder: log-mel frames -> STFT magnitude and phase -> inverse STFT.

Siuzdak 2023, "Vocos: Closing the gap between time-domain and Fourier-based
neural vocoders for audio synthesis" (arXiv 2306.00814): instead of
upsampling frames to samples with transposed convolutions (HiFi-GAN), a
ConvNeXt stack (Liu et al. 2022, arXiv 2201.03545) runs at the frame rate
and predicts each frame's complex STFT coefficients; the inverse STFT with
the feature STFT's ``n_fft`` and ``hop_length`` (Hann window, centred) makes
the waveform, so one network frame is one hop and ``T`` frames give
``(T - 1) * hop`` samples, as Griffin-Lim does.

The network (:class:`VocosNet`) takes the *denormalized* log-mel
``log(clamp(mel power, floor)) [B, n_mels, T]``, so its weights do not depend
on a dataset's normalization statistics; :class:`VocosVocoder` wraps it with
the modality's statistics to take the modality's normalized features, like
:class:`~mmldm_audio.vocoder.GriffinLimVocoder`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmldm.export import load_weights
from mmldm.interfaces import Vocoder

from .config import VocosConfig, feature_settings, read_vocoder_folder
from .features import denormalize

#: The weights file of a trained vocoder folder (beside its ``config.yaml``).
WEIGHTS_FILE = "vocoder.safetensors"


class ConvNeXtBlock(nn.Module):
    """``x [B, dim, T] -> x + gamma * MLP(LayerNorm(DepthwiseConv(x)))``: a 1D ConvNeXt block (Liu et al. 2022)
    as Vocos uses it, with a learned per-channel layer scale ``gamma`` (Touvron et al. 2021, arXiv 2103.17239)."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).transpose(1, 2)  # (B, T, dim): LayerNorm and the MLP act per frame
        h = self.mlp(self.norm(h)) * self.gamma
        return x + h.transpose(1, 2)


class VocosNet(nn.Module):
    """``logmel [B, n_mels, T]`` (denormalized, floored) -> ``wave [B, (T - 1) * hop_length]``.

    Args:
        n_mels, n_fft, hop_length (`int`): the feature settings (the inverse STFT uses ``n_fft`` and
            ``hop_length`` with a Hann window of ``n_fft``, as the features' STFT).
        dim, hidden_dim, layers, kernel_size (`int`): the ConvNeXt stack (see :class:`VocosConfig`).
    """

    def __init__(self, n_mels: int, n_fft: int, hop_length: int, dim: int, hidden_dim: int, layers: int,
                 kernel_size: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.embed = nn.Conv1d(n_mels, dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, hidden_dim, kernel_size, 1 / layers) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 2 * (n_fft // 2 + 1))  # per frame: log-magnitude and phase of each bin
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # |STFT| of a signal in [-1, 1] is at most sum(window) = n_fft / 2: log(n_fft) bounds it with room
        self.max_log_magnitude = math.log(n_fft)

    def spectrum(self, logmel: Tensor) -> Tensor:
        """``logmel [B, n_mels, T]`` -> complex STFT ``[B, n_fft // 2 + 1, T]``."""
        h = self.norm(self.embed(logmel).transpose(1, 2)).transpose(1, 2)  # (B, dim, T)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.final_norm(h.transpose(1, 2))).transpose(1, 2)  # (B, 2 * bins, T)
        log_magnitude, phase = out.chunk(2, dim=1)
        magnitude = log_magnitude.clamp(max=self.max_log_magnitude).exp()
        # the phase as an angle: cos/sin wrap it, so the network needs no 2*pi discontinuity (Vocos, sec. 3.2)
        return torch.polar(magnitude, phase)

    def forward(self, logmel: Tensor) -> Tensor:
        length = (logmel.shape[-1] - 1) * self.hop_length
        return torch.istft(self.spectrum(logmel), self.n_fft, self.hop_length, self.n_fft, self.window,
                           center=True, length=length)


class VocosVocoder(Vocoder):
    """``features [B, n_mels, T]`` ("1d") or ``[B, 1, n_mels, T]`` ("2d") -> ``wave [B, (T - 1) * hop]``.

    The modality's normalized features are denormalized with its statistics and floored (the modality's
    ``to_logmel``), then :attr:`net` vocodes them. Only :attr:`net`'s weights are saved (the statistics are
    non-persistent buffers): a trained folder fits any dataset with the same feature settings.

    Args:
        cfg (`VocosConfig`): sizes (and the training recipe :meth:`fit` uses).
        modality (`AudioModality`): supplies the feature settings and normalization statistics.
    """

    def __init__(self, cfg: VocosConfig, *, modality: Any) -> None:
        super().__init__()
        acfg = modality.cfg
        self.cfg = cfg
        self.sample_rate = acfg.sample_rate
        self.layout = acfg.layout
        self.log_floor = math.log(acfg.log_floor)
        self.features = feature_settings(acfg)
        self.net = VocosNet(acfg.n_mels, acfg.n_fft, acfg.hop_length, cfg.dim, cfg.hidden_dim, cfg.layers,
                            cfg.kernel_size)
        stats = modality.stats
        self.register_buffer("mean", stats["mean"].clone(), persistent=False)
        self.register_buffer("std", stats["std"].clone(), persistent=False)

    def to_logmel(self, features: Tensor) -> Tensor:
        """Normalized features -> floored log-mel ``[B, n_mels, T]`` (the network's input)."""
        logmel = denormalize(features.float(), {"mean": self.mean, "std": self.std}, self.layout)
        return logmel.clamp(min=self.log_floor)

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        return self.net(self.to_logmel(features))

    def fit(self, modality: Any, directory: Path, *, seed: int = 0, max_steps: int | None = None,
            max_minutes: float | None = None, progress: bool = True) -> dict[str, Any]:
        """Train on the modality's "train" clips and write a vocoder folder (:mod:`.vocoder_training`)."""
        from .vocoder_training import train_vocoder

        return train_vocoder(self, modality, Path(directory), seed=seed, max_steps=max_steps,
                             max_minutes=max_minutes, progress=progress)


def load_vocoder(modality: Any) -> tuple[Vocoder, dict[str, Any]]:
    """The trained vocoder of ``modality.cfg.vocoder_path`` and its folder's record (``config.yaml``).

    Raises ``ValueError`` naming the file, the key and both values when the folder was trained on other
    feature settings, and :class:`~mmldm.export.ExportError` naming the weights file when it is missing
    or does not fit the recorded config.
    """
    from mmldm.plugins import registry

    record = read_vocoder_folder(modality.cfg)
    vocoder = registry().build("vocoder", record["vocoder"], modality=modality)
    load_weights(vocoder, Path(modality.cfg.vocoder_path) / WEIGHTS_FILE)
    return vocoder.eval(), record
