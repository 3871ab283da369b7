"""Trained inpainting as tau_theta: the masked latent and the mask, concatenated with ``z_t``.

Stable Diffusion's inpainting models add five input channels to the U-Net: the VAE latent of the masked
image and the mask at latent resolution. This conditioner does that for latents of any dims: its condition
is ``[B, c + 1, *s]``, the known latent with the region to generate zeroed, then the mask (1 = generate).
In training the condition is made from each batch's clean latents (:attr:`latent_derived`) with a random
mask of the configured families, drawn on the latent grid; :meth:`mmldm.pipeline.LatentDiffusion.inpaint`
with ``method="trained"`` builds it from an input and a data-space mask (:func:`mmldm.editing.latent_mask`).

Null condition: nothing known (zero latent, mask 1 everywhere), which is generation from scratch; condition
dropout trains it, so the same model also samples unconditionally and guidance has its unconditional branch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from mmldm.editing import inpaint_condition
from mmldm.interfaces import Conditioner, Conditioning, Modality

from .common import apply_options
from .config import INPAINT_MASKS, InpaintConditionerConfig


def random_masks(shape: Sequence[int], families: Sequence[str], generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """Masks ``[B, 1, *s]`` (1 = generate) for ``shape = (B, *s)``, each of a family drawn uniformly from
    ``families`` (:data:`~mmldm_conditioners.config.INPAINT_MASKS`); drawn on the CPU from ``generator``."""
    b, spatial = shape[0], tuple(shape[1:])
    unknown = [f for f in families if f not in INPAINT_MASKS]
    if unknown or not families:
        raise ValueError(f"unknown inpainting mask families {unknown or list(families)}; expected some of {list(INPAINT_MASKS)}")
    grids = torch.meshgrid(*[(torch.arange(n, dtype=torch.float32) + 0.5) / n for n in spatial], indexing="ij")
    coords = torch.stack(grids)  # [dims, *s], cell centres in (0, 1)
    out = torch.zeros(b, 1, *spatial)
    picks = torch.randint(len(families), (b,), generator=generator)
    for i in range(b):
        family = families[int(picks[i])]
        u = lambda *size: torch.rand(size, generator=generator)  # noqa: E731
        if family == "box":  # whole cells: 25-75% of each axis (at least one cell)
            box = torch.zeros(spatial, dtype=torch.bool)
            index = []
            for n in spatial:
                width = max(1, round((0.25 + 0.5 * float(u(1))) * n))
                start = int(torch.randint(n - width + 1, (1,), generator=generator))
                index.append(slice(start, start + width))
            box[tuple(index)] = True
            out[i, 0] = box.float()
        elif family == "half":
            normal = torch.randn(len(spatial), generator=generator)
            normal = normal / normal.norm().clamp_min(1e-6)
            point = 0.25 + 0.5 * u(len(spatial))
            side = ((coords - point.reshape(-1, *[1] * len(spatial))) * normal.reshape(-1, *[1] * len(spatial))).sum(0)
            out[i, 0] = (side > 0).float()
        else:  # slab: a band of 10-50% of the last axis (at least one cell)
            n = spatial[-1]
            width = max(1, round((0.1 + 0.4 * float(u(1))) * n))
            start = int(torch.randint(n - width + 1, (1,), generator=generator))
            out[i, 0, ..., start:start + width] = 1.0
    return out.to(device)


class InpaintConditioner(Conditioner):
    """``{"inpaint": Tensor [B, c + 1, *s]}`` -> ``concat [B, c + 1, *s]`` (see the module docstring).

    Args:
        masks (`Sequence[str]`): the training mask families.

    :meth:`set_latent_shape` must be called before use (training and loading do it).
    """

    key = "inpaint"
    outputs = ("concat",)
    latent_derived = True

    def __init__(self, masks: Sequence[str] = INPAINT_MASKS):
        super().__init__()
        bad = [m for m in masks if m not in INPAINT_MASKS]
        if bad or not masks:
            raise ValueError(f"conditioner=inpaint: masks must be a non-empty subset of {list(INPAINT_MASKS)}, got {list(masks)}")
        self.masks = tuple(masks)
        self.latent_shape: tuple[int, ...] | None = None
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    def set_latent_shape(self, latent_shape: Sequence[int]) -> None:
        self.latent_shape = tuple(latent_shape)
        self.concat_channels = self.latent_shape[0] + 1

    def _shape(self) -> tuple[int, ...]:
        if self.latent_shape is None:
            raise RuntimeError(f"inpainting conditioner '{self.key}': set_latent_shape() was not called")
        return self.latent_shape

    def forward(self, cond: Mapping[str, Any], batch_size: int) -> Conditioning:
        if self.key not in cond:
            return self.null(batch_size)
        value = torch.as_tensor(cond[self.key]).to(device=self.anchor.device, dtype=torch.float32)
        expected = (batch_size, self._shape()[0] + 1, *self._shape()[1:])
        if tuple(value.shape) != expected:
            raise ValueError(f"cond['{self.key}'] has shape {tuple(value.shape)}, expected {list(expected)}: the masked "
                             "latent and the mask (1 = generate) on the latent grid (mmldm.editing.inpaint_condition)")
        return Conditioning(concat=value)

    def null(self, batch_size: int) -> Conditioning:
        c, *spatial = self._shape()
        value = torch.zeros(batch_size, c + 1, *spatial, device=self.anchor.device)
        value[:, c] = 1.0
        return Conditioning(concat=value)

    def from_latents(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mask = random_masks((z.shape[0], *z.shape[2:]), self.masks, generator, z.device)
        return inpaint_condition(z, mask)


def build_inpaint_conditioner(cfg: InpaintConditionerConfig, *, modality: Modality | None = None) -> InpaintConditioner:
    """Factory of ``conditioner=inpaint``."""
    return apply_options(InpaintConditioner(tuple(cfg.masks)), cfg)
