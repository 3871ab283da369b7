"""The time-series modality: 1D samples ``[C, T]``, sums of sinusoids plus noise, classes by frequency band."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset

from mmldm.data import check_split, split_indices
from mmldm.interfaces import Modality

from .config import TimeSeriesConfig

#: Zero-padding factor of the FFT that finds a series' dominant frequency (sub-bin resolution).
PAD = 8


def band_edges(cfg: TimeSeriesConfig) -> np.ndarray:
    """``num_classes + 1`` equally spaced edges of the frequency bands, in cycles per series."""
    return np.linspace(cfg.min_cycles, cfg.max_cycles, cfg.num_classes + 1)


def synthesize(cfg: TimeSeriesConfig, index: int) -> tuple[np.ndarray, int]:
    """Series ``index``: ``(x float32 [channels, length], label)``, a function of ``(seed, index)`` only.

    Frequencies are drawn from the inner 80% of the label's band, so that the
    band of the dominant frequency names the class without ambiguity.
    """
    rng = np.random.default_rng([cfg.seed, index])
    label = index % cfg.num_classes
    lo, hi = band_edges(cfg)[label : label + 2]
    margin = 0.1 * (hi - lo)
    t = np.arange(cfg.length) / cfg.length  # one series spans time [0, 1)
    x = np.zeros((cfg.channels, cfg.length))
    for _ in range(cfg.components):
        cycles, amplitude = rng.uniform(lo + margin, hi - margin), rng.uniform(0.3, 0.6)
        phases = rng.uniform(0, 2 * np.pi, size=(cfg.channels, 1))
        x += amplitude * np.sin(2 * np.pi * cycles * t + phases)
    x += cfg.noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), label


def dominant_cycles(x: Tensor) -> Tensor:
    """``x [B, C, T]`` -> ``[B]``: the frequency (cycles per series) of the largest peak of the
    channel-averaged magnitude spectrum, zero-padded ``PAD`` times; the constant term is ignored."""
    length = x.shape[-1]
    spectrum = torch.fft.rfft(x.float() - x.float().mean(-1, keepdim=True), n=PAD * length).abs().mean(1)
    return spectrum.argmax(-1).float() / PAD


def log_spectrum(x: Tensor) -> Tensor:
    """``x [B, C, T]`` -> ``log(1 + |rfft(x)|)`` averaged over channels: ``[B, T // 2 + 1]``."""
    return torch.log1p(torch.fft.rfft(x.float()).abs()).mean(1)


class TimeSeriesDataset(Dataset):
    """Items ``{"x": FloatTensor[C, T], "cond": {"class": int}}`` of the given series indices."""

    def __init__(self, cfg: TimeSeriesConfig, indices: np.ndarray) -> None:
        pairs = [synthesize(cfg, int(i)) for i in indices]
        self.x = torch.from_numpy(np.stack([x for x, _ in pairs])) if pairs else torch.zeros(0, cfg.channels, cfg.length)
        self.labels = [label for _, label in pairs]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "cond": {"class": self.labels[i]}}


class TimeSeriesModality(Modality):
    """Time series ``[B, C, T]`` (``dims=1``); see :class:`~mmldm_timeseries.config.TimeSeriesConfig`."""

    name = "timeseries"
    dims = 1
    reconstruction_loss = "l1"

    def __init__(self, cfg: TimeSeriesConfig) -> None:
        if cfg.num_classes < 1 or cfg.channels < 1:
            raise ValueError(f"timeseries: num_classes={cfg.num_classes} and channels={cfg.channels} must be >= 1")
        if not 0 < cfg.min_cycles < cfg.max_cycles < cfg.length / 2:
            raise ValueError(
                f"timeseries: need 0 < min_cycles ({cfg.min_cycles}) < max_cycles ({cfg.max_cycles}) "
                f"< length / 2 ({cfg.length / 2}, the Nyquist limit)"
            )
        self.cfg = cfg
        self.channels = cfg.channels
        self.num_classes = cfg.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.cfg.channels, self.cfg.length)

    @property
    def class_names(self) -> list[str]:
        edges = band_edges(self.cfg)
        return [f"{lo:.3g}-{hi:.3g} cycles" for lo, hi in zip(edges[:-1], edges[1:])]

    def dataset(self, split: str) -> TimeSeriesDataset:
        check_split(split)
        indices = split_indices(self.cfg.num_samples, self.cfg.val_fraction, split, self.cfg.seed, shuffle=False)
        return TimeSeriesDataset(self.cfg, indices)

    def band(self, x: Tensor) -> Tensor:
        """``x [B, C, T]`` -> the class ``[B]`` whose band holds each series' dominant frequency
        (-1 outside every band)."""
        edges = torch.as_tensor(band_edges(self.cfg), dtype=torch.float32)
        k = torch.bucketize(dominant_cycles(x), edges, right=True) - 1
        return torch.where((k >= 0) & (k < self.num_classes), k, torch.full_like(k, -1))

    def save(self, samples: Tensor, directory: Path, prefix: str = "sample") -> list[Path]:
        """Per sample of ``[B, C, T]`` a CSV (columns ``t, ch0, ...``) and a PNG plot, plus ``{prefix}_grid.png``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        x = samples.detach().float().cpu().numpy()
        t = np.arange(x.shape[-1])
        header = ",".join(["t", *(f"ch{c}" for c in range(x.shape[1]))])
        paths: list[Path] = []
        for i, series in enumerate(x):
            paths.append(directory / f"{prefix}_{i:04d}.csv")
            np.savetxt(paths[-1], np.column_stack([t, series.T]), delimiter=",", header=header, comments="", fmt="%.6g")
            paths.append(directory / f"{prefix}_{i:04d}.png")
            _plot([series], paths[-1], columns=1)
        paths.append(directory / f"{prefix}_grid.png")
        _plot(list(x), paths[-1], columns=math.ceil(math.sqrt(len(x))))
        return paths

    def reconstruction_metrics(self, x: Tensor, x_rec: Tensor) -> dict[str, float]:
        """``rmse`` and ``snr_db`` (signal-to-error ratio in dB, inf when identical) over the batch."""
        error = (x.float() - x_rec.float()).square().sum()
        snr = math.inf if error == 0 else float(10 * torch.log10(x.float().square().sum() / error))
        return {"rmse": float((error / x.numel()).sqrt()), "snr_db": snr}

    def generation_metrics(self, real: Tensor, generated: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """``mean_spectrum_l1`` between the sets' mean log-magnitude spectra and, with ``labels``,
        ``band_accuracy``: the share of generated series whose dominant frequency lies in their class's band."""
        out = {"mean_spectrum_l1": float((log_spectrum(real).mean(0) - log_spectrum(generated).mean(0)).abs().mean())}
        if labels is not None:
            out["band_accuracy"] = float((self.band(generated) == labels.cpu()).float().mean())
        return out


def _plot(series: list[np.ndarray], path: Path, columns: int) -> None:
    """Line plots of ``[C, T]`` arrays, ``columns`` per row, written to ``path`` (no pyplot state)."""
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(2.4 * columns, 1.2 * rows), dpi=80)
    for i, s in enumerate(series):
        ax = fig.add_subplot(rows, columns, i + 1)
        for channel in s:
            ax.plot(channel, linewidth=1)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
