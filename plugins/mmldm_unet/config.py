"""U-Net configs (torch-free). ``dims`` and channel counts come from the factory call, not from here;
the sized variants declare the dimensions they are sized for (``dims``), which the config
validation checks against the modality's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from mmldm.config import ComponentConfig
from mmldm.schema import check_fields, checked, non_negative, one_of, positive, unit_interval

#: how the time embedding enters each ResBlock (:class:`mmldm.nn.ResBlock`)
TIME_CONDITIONING = ("scale_shift", "additive")


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
        time_conditioning (`str`): how the time embedding enters each ResBlock: ``scale_shift`` modulates
            the second norm, ``norm(h) * (1 + scale) + shift`` (Dhariwal & Nichol 2021; Stable Diffusion 2's
            and the image presets' choice); ``additive`` adds a projection before it, ``norm(h + proj)``
            (Ho et al. 2020, LDM's ``use_scale_shift_norm=False``, MONAI's ``DiffusionModelUNet``), with
            half the projection's parameters. GroupNorm subtracts each group's mean of the added term, so
            at levels of 32 channels or fewer (one channel per group) the time has no effect on a block.
        use_checkpoint (`bool`): gradient checkpointing per block (less memory, ~30% slower training).
        channels_last (`bool`): channels-last memory format for dims 2 and 3 (no effect for dims 1).
        compile (`bool`): run the forward through ``torch.compile`` (inductor). Off by default: on a 2-core
            CPU compiling a 3-level U-Net's training step took minutes and a narrow (32-channel) one was
            not faster afterwards; ``python -m benchmarks.unet_vs_diffusers --compile`` measures it.

    Class attribute ``dims``: the latent dimensions a variant is sized for (``None``: any).
    """

    dims: ClassVar[Optional[int]] = None

    model_channels: int = positive(64)
    channel_mult: list[int] = checked(factory=lambda: [1, 2, 4], each=True, nonempty=True, ge=1)
    num_res_blocks: int = non_negative(2)
    attention_levels: list[int] = checked(factory=lambda: [1, 2], each=True, ge=0)
    num_heads: int = positive(4)
    head_dim: Optional[int] = positive(None)
    transformer_depth: int = positive(1)
    mid_attention: bool = True
    dropout: float = unit_interval(0.0, open_high=True)
    time_conditioning: str = one_of("scale_shift", TIME_CONDITIONING)
    use_checkpoint: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "denoiser")
        bad = [lvl for lvl in self.attention_levels if lvl >= len(self.channel_mult)]
        if bad:
            levels = len(self.channel_mult)
            raise ValueError(f"denoiser.attention_levels {list(self.attention_levels)} contains {bad[0]}, but "
                             f"denoiser.channel_mult {list(self.channel_mult)} has levels 0..{levels - 1}")


@dataclass
class UNet1dConfig(UNetConfig):
    """Sizes for 1D latents such as ``[B, c, T]`` mel-spectrogram latents (long sequences: 4 levels)."""

    dims: ClassVar[Optional[int]] = 1

    channel_mult: list[int] = checked(factory=lambda: [1, 2, 4, 4], each=True, nonempty=True, ge=1)
    attention_levels: list[int] = checked(factory=lambda: [2, 3], each=True, ge=0)


@dataclass
class UNet2dConfig(UNetConfig):
    """Sizes for 2D latents (e.g. 32x32 image latents)."""

    dims: ClassVar[Optional[int]] = 2

    model_channels: int = positive(128)
    channel_mult: list[int] = checked(factory=lambda: [1, 2, 4], each=True, nonempty=True, ge=1)
    attention_levels: list[int] = checked(factory=lambda: [1, 2], each=True, ge=0)
    head_dim: Optional[int] = positive(32)


@dataclass
class UNet3dConfig(UNetConfig):
    """Sizes for 3D latents (e.g. 8^3 or 16^3 voxel latents): fewer channels, attention only at the coarsest level
    (attention cost grows with the number of voxels)."""

    dims: ClassVar[Optional[int]] = 3

    model_channels: int = positive(32)
    channel_mult: list[int] = checked(factory=lambda: [1, 2, 4], each=True, nonempty=True, ge=1)
    attention_levels: list[int] = checked(factory=lambda: [2], each=True, ge=0)
    num_res_blocks: int = non_negative(1)
