"""The DiT config (torch-free). ``dims`` and channel counts come from the factory call, not from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from mmldm.config import ComponentConfig
from mmldm.schema import check_fields, checked, one_of, positive

#: ``denoiser.pos_embed``: fixed N-d sin-cos table, or per-axis tables learned from that start.
POS_EMBEDS = ("sincos", "learned")


@dataclass
class DiTConfig(ComponentConfig):
    """A diffusion transformer over N-d patches (Peebles & Xie 2023, arXiv 2212.09748).

    Defaults are DiT-S/2 (hidden 384, depth 12, 6 heads, patches of 2 per axis).

    Args:
        hidden_size (`int`): token width ``D``; a multiple of ``num_heads``.
        depth (`int`): number of transformer blocks.
        num_heads (`int`): attention heads (head size ``hidden_size // num_heads``).
        patch_size (`list[int]`): patch side per latent axis: one entry (every axis) or ``dims`` entries.
            Every latent side must be divisible by its patch side; the run checks it before phase 1 trains.
        mlp_ratio (`float`): MLP width as a multiple of ``hidden_size``.
        pos_embed (`str`): ``sincos`` (fixed; the width split across the axes) or ``learned`` (one table
            per axis of ``max_positions`` rows, initialized to the sin-cos values).
        max_positions (`int`): ``learned`` only: patches per axis the tables cover.
        frequency_dim (`int`): sinusoidal features of the timestep before its MLP (DiT: 256).
        use_checkpoint (`bool`): gradient checkpointing per block (less memory, slower training).

    Class attribute ``dims``: ``None``, the DiT fits latents of any dimensions.
    """

    dims: ClassVar[Optional[int]] = None

    hidden_size: int = positive(384)
    depth: int = positive(12)
    num_heads: int = positive(6)
    patch_size: list[int] = checked(factory=lambda: [2], each=True, nonempty=True, ge=1)
    mlp_ratio: float = positive(4.0)
    pos_embed: str = one_of("sincos", POS_EMBEDS)
    max_positions: int = positive(64)
    frequency_dim: int = checked(256, ge=2, multiple_of=2)
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "denoiser")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"denoiser.hidden_size={self.hidden_size} is not divisible by "
                             f"denoiser.num_heads={self.num_heads}; choose a multiple of the head count")
        if len(self.patch_size) > 3:
            raise ValueError(f"denoiser.patch_size={list(self.patch_size)} has {len(self.patch_size)} entries; "
                             "give one (every axis) or one per latent axis (at most 3)")
