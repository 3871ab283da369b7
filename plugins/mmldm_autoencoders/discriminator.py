"""N-d PatchGAN discriminator and GAN objectives (Isola et al. 2017, arXiv 1611.07004).

As in VQGAN/LDM (Esser et al. 2021, Rombach et al. 2022) the discriminator
scores overlapping patches: ``x [B, C, *s] -> logits [B, 1, *s']``, with
``s' = s / 2**layers - 2`` per axis (inputs need at least ``3 * 2**layers``).
GroupNorm replaces BatchNorm so that the same code runs for any ``dims``
and batch size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmldm.nn import conv_nd, group_norm


class PatchDiscriminator(nn.Module):
    """Patch classifier ``[B, C, *s] -> [B, 1, *s']`` with ``layers`` strided 4-convs.

    Args:
        dims (`int`): 1, 2 or 3.
        in_channels (`int`): ``C``.
        channels (`int`): width of the first layer, doubled per layer up to 8x.
        layers (`int`): number of stride-2 convolutions.
    """

    def __init__(self, dims: int, in_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        self.min_size = 3 * 2**layers
        seq: list[nn.Module] = [conv_nd(dims, in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1  # the last feature layer keeps the resolution
            seq += [conv_nd(dims, ch, out, 4, stride=stride, padding=1), group_norm(out), nn.LeakyReLU(0.2)]
            ch = out
        seq.append(conv_nd(dims, ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        small = [s for s in x.shape[2:] if s < self.min_size]
        if small:
            raise ValueError(
                f"PatchGAN input {tuple(x.shape)} is too small: every spatial size must be >= {self.min_size} "
                f"(3 * 2**disc_layers); lower loss.disc_layers"
            )
        return self.net(x)


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialization: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``(E[relu(1 - D(x))] + E[relu(1 + D(x~))]) / 2`` (Lim & Ye 2017)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Binary cross-entropy of the original GAN (Goodfellow et al. 2014), on logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """``-E[D(x~)]``, the generator side of the hinge GAN (as in VQGAN/LDM)."""
    return -logits_fake.mean()


def vanilla_g_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss ``E[softplus(-D(x~))]``."""
    return F.softplus(-logits_fake).mean()


#: ``disc_loss`` name -> (discriminator loss, generator loss).
GAN_LOSSES = {"hinge": (hinge_d_loss, hinge_g_loss), "vanilla": (vanilla_d_loss, vanilla_g_loss)}
