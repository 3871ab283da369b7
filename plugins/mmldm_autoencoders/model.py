"""N-d convolutional autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752).

One implementation for 1D, 2D and 3D data: every layer comes from
:mod:`mmldm.nn` and takes ``dims``. The encoder maps ``x [B, C, *s]`` to
``h [B, c * k, *s/f]`` (``k`` = the regularizer's ``encoder_channel_factor``),
the regularizer turns ``h`` into ``z [B, c, *s/f]`` and the decoder maps
``z`` back to ``x~ [B, C, *s]`` with no output activation (the loss decides:
L1/L2 on values, BCE-with-logits on occupancy).
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from mmldm.interfaces import Autoencoder, AutoencoderOutput, LatentDistribution, Regularizer
from mmldm.nn import AttentionBlock, Downsample, ResBlock, Upsample, conv_nd, group_norm

from .config import ConvAutoencoderConfig


class MidBlock(nn.Sequential):
    """ResBlock, optional self-attention (one head of all channels), ResBlock, at the lowest resolution."""

    def __init__(self, dims: int, channels: int, cfg: ConvAutoencoderConfig):
        g = cfg.norm_groups
        layers = [ResBlock(dims, channels, dropout=cfg.dropout, groups=g)]
        if cfg.attention:
            attn_groups = 32 if cfg.attention_norm_groups is None else cfg.attention_norm_groups
            layers.append(AttentionBlock(dims, channels, groups=attn_groups, qkv_bias=cfg.attention_bias))
        layers.append(ResBlock(dims, channels, dropout=cfg.dropout, groups=g))
        super().__init__(*layers)


class Encoder(nn.Module):
    """``x [B, C, *s] -> h [B, out_channels, *s/f]`` with ``f = 2 ** (len(channel_mult) - 1)``.

    With ``cfg.quant_conv`` a 1x1 convolution follows the output convolution.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, cfg: ConvAutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        g = cfg.norm_groups
        self.conv_in = conv_nd(dims, in_channels, cfg.channels, 3, padding=1)
        blocks: list[nn.Module] = []
        ch = cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(dims, ch, width, dropout=cfg.dropout, groups=g))
                ch = width
            if level < len(widths) - 1:
                blocks.append(Downsample(dims, ch, use_conv=cfg.downsample == "conv", padding=cfg.downsample_padding))
        self.down = nn.Sequential(*blocks)
        self.mid = MidBlock(dims, ch, cfg)
        self.norm_out = group_norm(ch, g)
        self.conv_out = conv_nd(dims, ch, out_channels, 3, padding=1)
        self.quant_conv = conv_nd(dims, out_channels, out_channels, 1) if cfg.quant_conv else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self.quant_conv(h) if self.quant_conv is not None else h


class Decoder(nn.Module):
    """``z [B, c, *s/f] -> x~ [B, out_channels, *s]``, mirroring :class:`Encoder` (one more ResBlock per level).

    With ``cfg.post_quant_conv`` a 1x1 convolution comes first.
    """

    def __init__(self, dims: int, latent_channels: int, out_channels: int, cfg: ConvAutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        g = cfg.norm_groups
        ch = widths[-1]
        self.post_quant_conv = conv_nd(dims, latent_channels, latent_channels, 1) if cfg.post_quant_conv else None
        self.conv_in = conv_nd(dims, latent_channels, ch, 3, padding=1)
        self.mid = MidBlock(dims, ch, cfg)
        blocks: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(dims, ch, widths[level], dropout=cfg.dropout, groups=g))
                ch = widths[level]
            if level > 0:
                blocks.append(Upsample(dims, ch))
        self.up = nn.Sequential(*blocks)
        self.norm_out = group_norm(ch, g)
        self.conv_out = conv_nd(dims, ch, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvAutoencoder(Autoencoder):
    """Encoder, regularizer and decoder for ``[B, C, *spatial]`` data of any ``dims``.

    Args:
        cfg (`ConvAutoencoderConfig`): widths, depth, ``latent_channels``, attention.
        dims (`int`): 1, 2 or 3 spatial dimensions.
        in_channels (`int`): ``C`` of the data.
        regularizer (`Regularizer`): built for ``cfg.latent_channels``; decides
            how many channels the encoder emits (``encoder_channel_factor``).
    """

    def __init__(self, cfg: ConvAutoencoderConfig, *, dims: int, in_channels: int, regularizer: Regularizer):
        super().__init__()
        reg_channels = getattr(regularizer, "latent_channels", cfg.latent_channels)
        if reg_channels != cfg.latent_channels:
            raise ValueError(
                f"autoencoder.latent_channels={cfg.latent_channels} but the regularizer was built for "
                f"latent_channels={reg_channels}; build it with the autoencoder's latent_channels"
            )
        self.cfg = cfg
        self.dims, self.in_channels = dims, in_channels
        self.latent_channels = cfg.latent_channels
        self.downsample_factor = 2 ** (len(cfg.channel_mult) - 1)
        self.encoder = Encoder(dims, in_channels, cfg.latent_channels * regularizer.encoder_channel_factor, cfg)
        self.regularizer = regularizer
        self.decoder = Decoder(dims, cfg.latent_channels, in_channels, cfg)

    def make_loss(self, reconstruction: str = "l1") -> nn.Module:
        """The phase-1 objective of ``cfg.loss``; ``reconstruction`` fills ``loss.reconstruction='auto'``."""
        from .losses import build_loss

        cfg = self.cfg.loss
        if cfg.reconstruction == "auto":
            cfg = dataclasses.replace(cfg, reconstruction=reconstruction)
        return build_loss(cfg, dims=self.dims, in_channels=self.in_channels)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output convolution (where LDM balances the GAN gradient)."""
        return self.decoder.conv_out.weight

    def _encode_features(self, x: Tensor) -> Tensor:
        self.latent_shape(x.shape[1:])  # raises a clear error on a bad rank or size
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, the autoencoder expects {self.in_channels}")
        return self.encoder(x)

    def encode(self, x: Tensor) -> LatentDistribution:
        """``x [B, C, *s]`` -> posterior over ``z [B, c, *s/f]`` (the latent diffusion sees)."""
        return self.regularizer.distribution(self._encode_features(x))

    def decode(self, z: Tensor) -> Tensor:
        """``z [B, c, *s/f]`` -> ``x~ [B, C, *s]`` (after the regularizer's ``decoder_input``)."""
        return self.decoder(self.regularizer.decoder_input(z))

    def forward(self, x: Tensor) -> AutoencoderOutput:
        """Training path; ``output.z`` is the decoder's input (quantized for VQ, a sample for KL)."""
        reg = self.regularizer(self._encode_features(x))
        return AutoencoderOutput(self.decoder(reg.z), reg.z, reg.loss, reg.logs)


def build_conv_autoencoder(
    cfg: ConvAutoencoderConfig, *, dims: int, in_channels: int, regularizer: Regularizer
) -> ConvAutoencoder:
    """Registry factory of autoencoder ``conv``."""
    return ConvAutoencoder(cfg, dims=dims, in_channels=in_channels, regularizer=regularizer)
