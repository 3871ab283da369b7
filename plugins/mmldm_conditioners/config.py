"""Config dataclasses of the built-in conditioners (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mmldm.config import ComponentConfig


@dataclass
class ClassConditionerConfig(ComponentConfig):
    """Class labels -> learned embeddings.

    Args:
        num_classes: number of labels; None takes the modality's ``num_classes``.
        embed_dim: size of each embedding (``d_tau`` of the cross-attention token
            and the size of the vector).
        outputs: which conditioning parts to fill: "crossattn" (one token per
            sample) and/or "vector" (added to the time embedding).
    """

    num_classes: Optional[int] = None
    embed_dim: int = 128
    outputs: list[str] = field(default_factory=lambda: ["crossattn", "vector"])
