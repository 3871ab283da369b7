"""U-Net configs (torch-free). ``dims`` and channel counts come from the factory call, not from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mmldm.config import ComponentConfig


@dataclass
class UNetConfig(ComponentConfig):
    """An N-d U-Net denoiser (Ronneberger et al. 2015; the LDM variant of Rombach et al. 2022).

    Args:
        model_channels (`int`): channels of the first level; level ``i`` has ``model_channels * channel_mult[i]``.
        channel_mult (`list[int]`): one entry per resolution; each level after the first halves every axis,
            so spatial sizes must be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks (`int`): ResBlocks per level on the way down (one more on the way up).
        attention_levels (`list[int]`): levels (0-based) that get a SpatialTransformer after each ResBlock.
        num_heads (`int`), head_dim (`int`, *optional*): attention heads; ``head_dim`` wins when set.
        transformer_depth (`int`): TransformerBlocks per SpatialTransformer.
        mid_attention (`bool`): a SpatialTransformer between the two middle ResBlocks.
        dropout (`float`): inside the ResBlocks and feed-forwards.
        use_checkpoint (`bool`): gradient checkpointing per block (less memory, ~30% slower training).
        channels_last (`bool`): channels-last memory format for dims 2 and 3 (no effect for dims 1).
        compile (`bool`): run the forward through ``torch.compile`` (inductor). Off by default: on a 2-core
            CPU compiling a 3-level U-Net's training step took minutes and a narrow (32-channel) one was
            not faster afterwards; ``python -m benchmarks.unet_vs_diffusers --compile`` measures it.
    """

    model_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])
    num_heads: int = 4
    head_dim: Optional[int] = None
    transformer_depth: int = 1
    mid_attention: bool = True
    dropout: float = 0.0
    use_checkpoint: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclass
class UNet1dConfig(UNetConfig):
    """Sizes for 1D latents such as ``[B, c, T]`` mel-spectrogram latents (long sequences: 4 levels)."""

    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    attention_levels: list[int] = field(default_factory=lambda: [2, 3])


@dataclass
class UNet2dConfig(UNetConfig):
    """Sizes for 2D latents (e.g. 32x32 image latents)."""

    model_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])
    head_dim: Optional[int] = 32


@dataclass
class UNet3dConfig(UNetConfig):
    """Sizes for 3D latents (e.g. 8^3 or 16^3 voxel latents): fewer channels, attention only at the coarsest level
    (attention cost grows with the number of voxels)."""

    model_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    attention_levels: list[int] = field(default_factory=lambda: [2])
    num_res_blocks: int = 1
