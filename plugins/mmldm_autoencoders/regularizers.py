"""KL and plain (deterministic) regularizers between encoder and decoder.

Every loss here is per sample summed over latent elements and averaged
over the batch, the convention of the LDM KL autoencoder.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmldm.distributions import DeterministicLatent, DiagonalGaussian
from mmldm.interfaces import LatentDistribution, Regularizer, RegularizerOutput

from .config import AERegularizerConfig, KLRegularizerConfig


class KLRegularizer(Regularizer):
    """Diagonal-Gaussian posterior with a KL penalty to ``N(0, I)`` (Rombach et al. 2022, "KL-reg").

    The encoder emits ``[B, 2c, *s]`` (mean and log-variance). The loss is
    ``kl_weight * mean_b sum_{c, s} KL(q(z_b|x_b) || N(0, I))``: the KL is
    summed over latent elements and averaged over the batch, so ``kl_weight``
    pairs with a reconstruction loss reduced the same way (LDM uses 1e-6).
    """

    encoder_channel_factor = 2

    def __init__(self, latent_channels: int, kl_weight: float = 1e-6, sample: bool = True):
        super().__init__()
        self.latent_channels, self.kl_weight, self.sample = latent_channels, kl_weight, sample

    def distribution(self, h: Tensor) -> DiagonalGaussian:
        if h.shape[1] != 2 * self.latent_channels:
            raise ValueError(
                f"KL regularizer expects [B, 2 * {self.latent_channels}, *s] (mean, logvar), got {tuple(h.shape)}"
            )
        return DiagonalGaussian.from_moments(h)

    def forward(self, h: Tensor) -> RegularizerOutput:
        posterior = self.distribution(h)
        z = posterior.sample() if self.sample and self.training else posterior.mode()
        kl = posterior.kl().mean()
        logs = {"kl": kl.detach(), "posterior_std": posterior.std.mean().detach()}
        return RegularizerOutput(z, self.kl_weight * kl, logs, posterior)


class AERegularizer(Regularizer):
    """A deterministic latent ``z = bound(h)`` (a plain autoencoder), with three options.

    Args:
        latent_channels (`int`): ``c``.
        bound (`str`): ``none``; ``tanh`` (``z`` in ``(-1, 1)``); ``clamp`` (``z`` clipped to ``[-1, 1]``).
        variance_weight (`float`): adds ``w * sum_c (Var[z_c] - 1)^2``, the
            variance of each channel over batch and positions pulled to 1 (a
            scale that suits the diffusion prior without a KL term).
        noise_std (`float`): in training the decoder sees ``z + noise_std * eps``,
            so that it tolerates small errors of the diffusion model; ``encode``
            stays noise-free.
    """

    encoder_channel_factor = 1

    def __init__(self, latent_channels: int, bound: str = "none", variance_weight: float = 0.0, noise_std: float = 0.0):
        super().__init__()
        AERegularizerConfig(name="ae", bound=bound, noise_std=noise_std)  # validates the options
        self.latent_channels, self.bound = latent_channels, bound
        self.variance_weight, self.noise_std = variance_weight, noise_std

    def _bounded(self, h: Tensor) -> Tensor:
        if self.bound == "tanh":
            return torch.tanh(h)
        if self.bound == "clamp":
            return h.clamp(-1.0, 1.0)
        return h

    def distribution(self, h: Tensor) -> LatentDistribution:
        if h.shape[1] != self.latent_channels:
            raise ValueError(f"AE regularizer expects [B, {self.latent_channels}, *s], got {tuple(h.shape)}")
        return DeterministicLatent(self._bounded(h))

    def forward(self, h: Tensor) -> RegularizerOutput:
        posterior = self.distribution(h)
        z = posterior.mode()
        var = z.transpose(0, 1).flatten(1).var(dim=1, correction=0)  # (c,) over batch and positions
        var_loss = (var - 1.0).pow(2).sum()
        if self.training and self.noise_std > 0:
            z = z + self.noise_std * torch.randn_like(z)
        logs = {"latent_var": var.mean().detach(), "variance_loss": var_loss.detach()}
        return RegularizerOutput(z, self.variance_weight * var_loss, logs, posterior)


def build_kl(cfg: KLRegularizerConfig, *, latent_channels: int) -> KLRegularizer:
    """Registry factory of regularizer ``kl``."""
    return KLRegularizer(latent_channels, kl_weight=cfg.kl_weight, sample=cfg.sample)


def build_ae(cfg: AERegularizerConfig, *, latent_channels: int) -> AERegularizer:
    """Registry factory of regularizer ``ae``."""
    return AERegularizer(latent_channels, cfg.bound, cfg.variance_weight, cfg.noise_std)
