"""A person's own files as voxel samples (:meth:`VoxelModality.load`) and the half-space regions.

Arrays (``.npz`` as :meth:`VoxelModality.save` writes them, key ``grid``, or ``.npy``) are read by value: a
grid with negative values is a truncated SDF (negative inside), any other one occupancy or occupancy
probabilities (inside above 0.5). Meshes, point clouds and binvox files go through the data folder's reader
(:func:`.readers.load_grid`: normalized into the unit cube, voxelized to a solid).

Half-spaces follow the grid convention of :mod:`.voxelize`: index ``[i, j, k]`` is the point ``(x, y, z)``,
y up (as in OBJ, ShapeNet, binvox and the renders). ``x-`` holds the voxels with ``x < 0`` (``i < R/2``),
``x+`` those with ``x > 0``, and so on for y and z.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from mmldm.regions import box_mask

from .readers import SUFFIXES, check_declared_sizes, load_grid, read_array
from .voxelize import resize_grid, to_representation

#: The half-space regions: name -> (grid axis, lower or upper half).
HALF_SPACES = {f"{axis}{side}": (i, side) for i, axis in enumerate("xyz") for side in "-+"}


def read_sample(path: Path, resolution: int, representation: str, sdf_truncation: float, rays: int) -> np.ndarray:
    """``path`` as a grid ``[R, R, R]`` in ``representation``: arrays by value (see the module's docstring),
    other files as the data folder reads them. ``ValueError`` naming the file for anything unusable
    (including a grid with nothing inside)."""
    if path.suffix.lower() not in (".npz", ".npy"):
        return load_grid(path, resolution, representation, sdf_truncation, rays)
    try:
        check_declared_sizes(path)
        grid = np.asarray(read_array(path), dtype=np.float32)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, npy and pickle refusals raise many types
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: cannot read ({type(e).__name__}: {e})") from e
    if not np.isfinite(grid).all():
        raise ValueError(f"{path}: grid holds NaN or Inf values")
    signed = bool(grid.min() < 0)
    inside = grid < 0 if signed else grid > 0.5
    if not inside.any():
        raise ValueError(f"{path}: the grid is empty (no value {'below 0' if signed else 'above 0.5'})")
    if signed and representation == "sdf" and grid.shape == (resolution,) * 3:
        return np.clip(grid, -1.0, 1.0)  # a signed distance of this grid, kept as it is
    return to_representation(resize_grid(inside, resolution), representation, sdf_truncation)


def half_space(name: str, resolution: int, folded: bool) -> Tensor:
    """The mask of half-space ``name`` (``x-`` ... ``z+``): ``[1, R, R, R]``, or with ``folded`` (layout 2d:
    grid axis x is the channels) ``[R, R, R]`` for ``x-``/``x+`` and ``[1, R, R]`` for the others."""
    axis, side = HALF_SPACES[name]
    half = (0.0, 0.5) if side == "-" else (0.5, 1.0)
    ranges = [half if a == axis else (0.0, 1.0) for a in range(3)]
    full = box_mask(ranges, (resolution,) * 3)  # (1, R, R, R): [x, y, z]
    if not folded:
        return full
    return full[0] if axis == 0 else full[:, 0]  # (R, R, R) by channel, or (1, R, R)

