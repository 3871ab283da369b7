"""Class-label conditioner with a reserved null class for classifier-free guidance."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mmldm.interfaces import Conditioner, Conditioning, Modality

from .common import apply_options, check_outputs
from .config import ClassConditionerConfig

#: ``cond["class"]`` entries equal to this value mean "no label" (dropped for guidance).
DROPPED = -1


class ClassConditioner(Conditioner):
    """tau_theta for class labels: ``y [B] (long) -> Conditioning``.

    The embedding table has ``num_classes + 1`` rows; the last row is the null
    class used by :meth:`null` and for labels equal to ``-1`` (condition
    dropout in training). Fills ``crossattn`` as one token ``[B, 1, embed_dim]``
    and/or ``vector`` ``[B, embed_dim]``, as configured.
    """

    key = "class"

    def __init__(self, num_classes: int, embed_dim: int = 128, outputs: tuple[str, ...] = ("crossattn", "vector")):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"class conditioner needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.outputs = check_outputs(outputs, ("crossattn", "vector"), "class")
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.context_dim = embed_dim if "crossattn" in self.outputs else None
        self.vector_dim = embed_dim if "vector" in self.outputs else None

    def _wrap(self, emb: Tensor) -> Conditioning:  # emb: (B, D)
        return Conditioning(
            crossattn=emb[:, None, :] if "crossattn" in self.outputs else None,
            vector=emb if "vector" in self.outputs else None,
        )

    def forward(self, cond: Mapping[str, Any], batch_size: int) -> Conditioning:
        if self.key not in cond:
            return self.null(batch_size)
        labels = torch.as_tensor(cond[self.key], device=self.embedding.weight.device).long().reshape(-1)
        if labels.numel() != batch_size:
            raise ValueError(f"cond['{self.key}'] has {labels.numel()} labels for a batch of {batch_size}")
        bad = labels[(labels >= self.num_classes) | (labels < DROPPED)]
        if bad.numel():
            raise ValueError(
                f"cond['{self.key}']: class index {int(bad[0])} out of range for {self.num_classes} classes: "
                f"expected 0..{self.num_classes - 1} (or -1 for none)"
            )
        labels = torch.where(labels == DROPPED, torch.full_like(labels, self.num_classes), labels)
        return self._wrap(self.embedding(labels))

    def values(self) -> range:
        """The class indices ``0 .. num_classes - 1``."""
        return range(self.num_classes)

    def null(self, batch_size: int) -> Conditioning:
        labels = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=self.embedding.weight.device)
        return self._wrap(self.embedding(labels))

    def drop(self, cond: Mapping[str, Any], mask: Tensor) -> dict[str, Any]:
        """Return ``cond`` with the labels of samples where ``mask [B]`` is true replaced by ``-1``."""
        labels = torch.as_tensor(cond[self.key]).long().clone()
        labels[mask.to(labels.device)] = DROPPED
        return {**cond, self.key: labels}


def build_class_conditioner(cfg: ClassConditionerConfig, *, modality: Modality | None = None) -> ClassConditioner:
    """Factory: ``num_classes`` from the config or else from the modality; key, dropout, trainable."""
    num_classes = cfg.num_classes or (modality.num_classes if modality is not None else 0)
    if not num_classes:
        raise ValueError(
            "conditioner=class needs labelled data: the modality reports num_classes=0 and "
            "conditioner.num_classes is not set; use conditioner=none for unconditional training"
        )
    return apply_options(ClassConditioner(num_classes, cfg.embed_dim, tuple(cfg.outputs)), cfg)
