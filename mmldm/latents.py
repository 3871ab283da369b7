"""Latent statistics: phase 2 diffuses normalized latents ``(z - mean) / std``.

Rombach et al. 2022 rescale KL latents by one factor measured on the data
(Stable Diffusion's 0.18215); mmldm measures per-channel statistics of the
trained autoencoder's latents on the training data instead of assuming one,
so that every channel enters the diffusion process with unit variance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import torch
from einops import reduce
from torch import Tensor


@dataclass
class _Moments:
    """Streaming per-channel count, mean and sum of squared deviations (float64).

    Batches merge with Chan et al.'s parallel update, which stays accurate
    over many batches where ``sum(z**2) - n * mean**2`` would cancel.
    """

    n: float = 0.0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def update(self, z: Tensor, per_channel: bool) -> None:
        z = z.detach().to(torch.float64)
        if not per_channel:
            z = z.reshape(-1, 1)  # every element belongs to one group
        n_b = z.numel() / z.shape[1]
        mean_b = reduce(z, "b c ... -> c", "mean")
        m2_b = reduce((z - mean_b.view(1, -1, *([1] * (z.ndim - 2)))) ** 2, "b c ... -> c", "sum")
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def std(self) -> Tensor:
        return (self.m2 / max(self.n - 1.0, 1.0)).sqrt()


#: Values of ``data.latent_scale``: measured per channel, one pooled mean/std, or no normalization.
LATENT_SCALES = ("per_channel", "global", "none")


@dataclass
class LatentStats:
    """Per-channel mean and standard deviation of latents ``[B, c, *s]``.

    ``normalize(z) = (z - mean) / std`` broadcast over ``[B, c, *s]``;
    :meth:`denormalize` inverts it before decoding.

    Args:
        mean (`list[float]`): length ``c``.
        std (`list[float]`): length ``c``, all positive.
        global_scale (`bool`): the statistics were pooled over all channels
            (one mean and one std repeated ``c`` times), as in Stable Diffusion's
            single scale factor.
    """

    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    global_scale: bool = False

    def __post_init__(self) -> None:
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        if len(self.mean) != len(self.std):
            raise ValueError(f"LatentStats: mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"LatentStats: std must be positive, got {self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def identity(cls, channels: int) -> "LatentStats":
        """Statistics that leave latents unchanged (mean 0, std 1)."""
        return cls([0.0] * channels, [1.0] * channels)

    @classmethod
    @torch.no_grad()
    def measure(
        cls,
        autoencoder: Any,
        batches: Iterable[Any],
        max_batches: int | None = None,
        use_samples: bool = True,
        global_scale: bool = False,
        generator: torch.Generator | None = None,
    ) -> "LatentStats":
        """Measure the statistics of ``autoencoder.encode(x)`` over data.

        Args:
            autoencoder (`Autoencoder`): a trained phase-1 model (put in eval
                mode while measuring, then restored).
            batches (`Iterable`): dict batches ``{"x": [B, C, *s], ...}`` or tensors.
            max_batches (`int`, *optional*): stop after this many batches.
            use_samples (`bool`): statistics of posterior samples ``z ~ q(z|x)``
                (what phase 2 is trained on for KL autoencoders); else of the mode.
            global_scale (`bool`): one mean and std pooled over all channels.
            generator (`torch.Generator`, *optional*): for the posterior samples.
        """
        was_training = autoencoder.training
        autoencoder.eval()
        device = next(autoencoder.parameters()).device
        moments = _Moments()
        try:
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch["x"] if isinstance(batch, Mapping) else batch
                posterior = autoencoder.encode(x.to(device))
                z = posterior.sample(generator) if use_samples else posterior.mode()
                moments.update(z, per_channel=not global_scale)
                channels = z.shape[1]
        finally:
            autoencoder.train(was_training)
        if moments.mean is None:
            raise ValueError("LatentStats.measure: no batches were given, cannot measure latent statistics")
        mean, std = moments.mean.tolist(), moments.std().clamp_min(1e-8).tolist()
        if global_scale:
            mean, std = mean * channels, std * channels
        return cls(mean, std, global_scale)

    def _view(self, values: list[float], z: Tensor) -> Tensor:
        if z.shape[1] != self.channels:
            raise ValueError(
                f"LatentStats has {self.channels} channels but the latent is {tuple(z.shape)} "
                f"(expected [B, {self.channels}, *spatial])"
            )
        t = torch.tensor(values, dtype=z.dtype, device=z.device)
        return t.view(1, -1, *([1] * (z.ndim - 2)))  # (1, c, 1, ...)

    def normalize(self, z: Tensor) -> Tensor:
        """``(z - mean) / std`` for ``z [B, c, *s]``."""
        return (z - self._view(self.mean, z)) / self._view(self.std, z)

    def denormalize(self, z_norm: Tensor) -> Tensor:
        """``z_norm * std + mean``, the inverse of :meth:`normalize`."""
        return z_norm * self._view(self.std, z_norm) + self._view(self.mean, z_norm)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and a flag, for YAML or safetensors metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatentStats":
        missing = {"mean", "std"} - set(data)
        if missing:
            raise KeyError(f"LatentStats.from_dict: missing key(s) {sorted(missing)}; got {sorted(data)}")
        return cls(list(data["mean"]), list(data["std"]), bool(data.get("global_scale", False)))
