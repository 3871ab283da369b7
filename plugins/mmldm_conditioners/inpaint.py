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
from .config import DEFAULT_INPAINT_MASKS, INPAINT_MASKS, InpaintConditionerConfig


def _cell_centres(spatial: Sequence[int]) -> Tensor:
    """The grid's cell centres ``[dims, *s]``, each axis scaled to ``(0, 1)``."""
    grids = torch.meshgrid(*[(torch.arange(n, dtype=torch.float32) + 0.5) / n for n in spatial], indexing="ij")
    return torch.stack(grids)


def stroke_mask(spatial: Sequence[int], generator: torch.Generator | None = None,
                coords: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, float]]]:
    """A ``stroke`` mask ``[*s]`` (1 = generate) and its strokes, as ``(vertices [k + 1, dims], radius)`` in
    grid coordinates (each axis scaled to ``[0, 1]``); any number of dims.

    Free-form brush strokes (the irregular masks of DeepFill v2 and LaMa): a target share of the grid is
    drawn in 15-60%, then strokes are drawn until the masked share reaches it (at most 16 strokes). A stroke
    is a polyline of 1-4 segments from a random point, each segment of a random direction and a length of
    10-40% of the grid, its vertices clamped into the box of the cell centres; its half-thickness (radius)
    is 5-15% of the grid, and at least half a cell's diagonal, so that every cell the polyline passes
    through is masked. A cell is masked when its centre lies within the radius of a segment, so at least one
    cell is masked. If the strokes cover the whole grid (grids of a few cells), the cell nearest to their
    edge (largest distance minus radius) is kept known: only a grid of one cell is masked whole. Over 200
    draws about 60% of a 1d grid is masked, 43% of a 2d grid and 25-30% of a 3d one (strokes are thin tubes
    there: the 16 strokes often run out before the target is reached).
    """
    spatial = tuple(spatial)
    dims = len(spatial)
    points = (_cell_centres(spatial) if coords is None else coords).reshape(dims, -1).T  # [N, dims]
    u = lambda *size: torch.rand(size, generator=generator)  # noqa: E731
    low = torch.tensor([0.5 / n for n in spatial])  # vertices stay within the cell centres' hull
    high = 1.0 - low
    floor = 0.5 * sum(1.0 / n ** 2 for n in spatial if n > 1) ** 0.5  # half a cell's diagonal
    target = 0.15 + 0.45 * float(u(1))
    squares = (points * points).sum(1)
    margin = torch.full((points.shape[0],), float("inf"))  # distance to the nearest stroke minus its radius
    strokes: list[tuple[Tensor, float]] = []
    while len(strokes) < 16 and float((margin <= 0).float().mean()) < target:
        segments = int(torch.randint(1, 5, (1,), generator=generator))
        radius = max(floor, 0.05 + 0.1 * float(u(1)))
        vertices = [low + (high - low) * u(dims)]
        for _ in range(segments):
            direction = torch.randn(dims, generator=generator)
            direction = direction / direction.norm().clamp_min(1e-6)
            vertices.append(torch.clamp(vertices[-1] + (0.1 + 0.3 * float(u(1))) * direction, low, high))
        a = torch.stack(vertices[:-1])  # [k, dims]: the segments a -> a + ab
        ab = torch.stack(vertices[1:]) - a
        along = points @ ab.T - (a * ab).sum(1)  # [N, k]: (p - a) . ab
        length2 = (ab * ab).sum(1).clamp_min(1e-12)
        t = (along / length2).clamp(0, 1)  # the nearest point of each segment: a + t ab
        # |p - a - t ab|^2 = |p - a|^2 - 2 t (p - a) . ab + t^2 |ab|^2, as matrix products over the grid
        gap2 = squares[:, None] - 2 * points @ a.T + (a * a).sum(1) - 2 * t * along + t * t * length2
        distance = gap2.amin(1).clamp_min(0).sqrt()  # to the nearest segment
        margin = torch.minimum(margin, distance - radius)
        strokes.append((torch.stack(vertices), radius))
    mask = margin <= 0
    if bool(mask.all()) and mask.numel() > 1:
        mask[int(margin.argmax())] = False
    return mask.reshape(spatial).float(), strokes


def scan_mask(spatial: Sequence[int], generator: torch.Generator | None = None,
              coords: Tensor | None = None) -> tuple[Tensor, int, int]:
    """A ``scan`` mask ``[*s]`` (1 = generate), the axis it was seen along and the side it was seen from
    (0: from index 0, 1: from the last index); any number of dims.

    What a depth sensor does not see: a viewing axis is drawn among the axes of at least two cells, and a
    side; a smooth depth surface over the other axes is a 4-per-axis grid of depths, each a mean depth
    drawn in 20-80% of the axis plus a relief drawn in +-15%, interpolated (linear, bilinear, trilinear) to
    the other axes' sizes (in 1 dim the surface is one depth). Every cell whose centre lies beyond the
    surface as seen from that side is masked, so along the axis the mask is 0 then 1 from the viewer, and
    50% of the grid is masked on average (the mean depth's range: 20-80% of the grid, more or less the
    relief). Depths are clamped into ``[1/n, 1 - 1/n]`` of the axis' ``n`` cells, so the nearest cell of
    every line along it stays known and the farthest is masked (only a grid of one cell is masked whole).
    """
    spatial = tuple(spatial)
    dims = len(spatial)
    coords = _cell_centres(spatial) if coords is None else coords
    axes = [k for k, n in enumerate(spatial) if n > 1] or list(range(dims))
    axis = axes[int(torch.randint(len(axes), (1,), generator=generator))]
    side = int(torch.randint(2, (1,), generator=generator))
    others = spatial[:axis] + spatial[axis + 1:]
    mean = 0.2 + 0.6 * torch.rand((), generator=generator)
    depth = mean + 0.3 * (torch.rand([4] * len(others), generator=generator) - 0.5)  # control depths
    if others:
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(others)]
        depth = torch.nn.functional.interpolate(depth[None, None], size=others, mode=mode, align_corners=True)[0, 0]
    n = spatial[axis]
    depth = depth.clamp(1.0 / n, 1.0 - 1.0 / n).unsqueeze(axis)  # [*s] with 1 along the axis
    seen = coords[axis] if side == 0 else 1.0 - coords[axis]  # depth of each cell centre from the viewer
    return (seen > depth).float(), axis, side


def random_masks(shape: Sequence[int], families: Sequence[str], generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """Masks ``[B, 1, *s]`` (1 = generate) for ``shape = (B, *s)``, each of a family drawn uniformly from
    ``families`` (:data:`~mmldm_conditioners.config.INPAINT_MASKS`); drawn on the CPU from ``generator``, in
    grid coordinates that scale each axis to ``(0, 1)``, for any number of spatial dims:

    - ``box``: an axis-aligned box of whole cells, 25-75% of each axis (at least one cell);
    - ``half``: the half-space behind a plane of random normal through a point of the central half of the grid;
    - ``slab``: a band of 10-50% of the last axis (at least one cell): a time gap for audio;
    - ``stroke``: free-form brush strokes (DeepFill v2, LaMa), random polylines of 1-4 segments and random
      thickness, added until a share of the grid drawn in 15-60% is masked (:func:`stroke_mask`): for images;
    - ``scan``: the cells beyond a smooth random depth surface seen along a random axis from a random side,
      what a depth sensor does not see, 50% of the grid on average (:func:`scan_mask`): for voxels.

    A ``stroke`` or ``scan`` mask of a grid of two cells or more masks at least one cell and keeps one known.
    """
    b, spatial = shape[0], tuple(shape[1:])
    unknown = [f for f in families if f not in INPAINT_MASKS]
    if unknown or not families:
        raise ValueError(f"unknown inpainting mask families {unknown or list(families)}; "
                         f"expected some of {list(INPAINT_MASKS)}")
    coords = _cell_centres(spatial)  # [dims, *s], cell centres in (0, 1)
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
        elif family == "slab":  # a band of 10-50% of the last axis (at least one cell)
            n = spatial[-1]
            width = max(1, round((0.1 + 0.4 * float(u(1))) * n))
            start = int(torch.randint(n - width + 1, (1,), generator=generator))
            out[i, 0, ..., start:start + width] = 1.0
        elif family == "stroke":
            out[i, 0] = stroke_mask(spatial, generator, coords)[0]
        else:  # scan
            out[i, 0] = scan_mask(spatial, generator, coords)[0]
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

    def __init__(self, masks: Sequence[str] = DEFAULT_INPAINT_MASKS):
        super().__init__()
        bad = [m for m in masks if m not in INPAINT_MASKS]
        if bad or not masks:
            raise ValueError(f"conditioner=inpaint: masks must be a non-empty subset of {list(INPAINT_MASKS)}, "
                             f"got {list(masks)}")
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
