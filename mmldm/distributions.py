"""Posterior distributions over latents returned by :meth:`Autoencoder.encode`.

All tensors are ``[B, c, *latent_spatial]``; per-sample reductions sum over
every non-batch axis and return ``[B]``.
"""

from __future__ import annotations

import math

import torch
from einops import reduce
from torch import Tensor

from .interfaces import LatentDistribution

#: Log-variance clamp of the LDM autoencoder (Rombach et al. 2022): keeps
#: ``exp(logvar)`` finite early in training.
LOGVAR_RANGE = (-30.0, 20.0)


def _per_sample_sum(t: Tensor) -> Tensor:
    return reduce(t, "b ... -> b", "sum")


class DiagonalGaussian(LatentDistribution):
    """``q(z|x) = N(mean, diag(exp(logvar)))``, the posterior of a KL autoencoder.

    Args:
        mean (`Tensor`): ``[B, c, *s]``.
        logvar (`Tensor`): ``[B, c, *s]``, clamped to :data:`LOGVAR_RANGE`.

    Attributes:
        std (`Tensor`), var (`Tensor`): ``exp(logvar / 2)`` and ``exp(logvar)``.
    """

    is_stochastic = True

    def __init__(self, mean: Tensor, logvar: Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must have one shape")
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self._std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @property
    def std(self) -> Tensor:
        return self._std

    @classmethod
    def from_moments(cls, h: Tensor) -> "DiagonalGaussian":
        """Split an encoder output ``[B, 2c, *s]`` into mean and log-variance along channels."""
        if h.shape[1] % 2:
            raise ValueError(f"a diagonal Gaussian needs an even channel count (mean, logvar), got {h.shape[1]}")
        mean, logvar = h.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterized draw ``mean + std * eps`` (Kingma & Welling 2014)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> Tensor:
        """``KL(self || other)`` per sample, summed over latent elements: ``[B]``.

        ``other=None`` means the standard normal ``N(0, I)``.
        """
        if other is None:
            return 0.5 * _per_sample_sum(self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return 0.5 * _per_sample_sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        )

    def nll(self, z: Tensor) -> Tensor:
        """Negative log-likelihood of ``z [B, c, *s]`` per sample, summed over elements: ``[B]``."""
        return 0.5 * _per_sample_sum(math.log(2.0 * math.pi) + self.logvar + (z - self.mean).pow(2) / self.var)


class DeterministicLatent(LatentDistribution):
    """A point mass at ``z``: plain and vector-quantized autoencoders.

    ``sample()`` and ``mode()`` return ``z``; ``kl()`` is zero (``[B]``).
    """

    def __init__(self, z: Tensor):
        self.z = z

    @property
    def mean(self) -> Tensor:
        return self.z

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.z

    def mode(self) -> Tensor:
        return self.z

    def kl(self) -> Tensor:
        return self.z.new_zeros(self.z.shape[0])
