"""The voxel modality: 3D grids ``[B, 1, R, R, R]`` over the unit cube.

Data are solid occupancy in {0, 1} (kept as float; the autoencoder should
reconstruct it with BCE-with-logits, see :attr:`VoxelModality.reconstruction_loss`)
or a truncated SDF in [-1, 1] (negative inside). By default the data are
procedural shapes (:mod:`.shapes`); ``root`` points to a folder of meshes,
point clouds, binvox files or arrays instead (:mod:`.readers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mmldm.data import check_split, split_indices
from mmldm.interfaces import Modality

from . import metrics
from .config import VoxelConfig
from .data import VoxelData, VoxelDataset, default_cache_dir, folder_class_names, folder_data, list_files
from .data import procedural_data
from .output import save_grids
from .shapes import CLASS_NAMES
from .user_files import HALF_SPACES, SUFFIXES, half_space, read_sample
from .voxelize import REPRESENTATIONS

#: Values of :attr:`VoxelConfig.layout`: a 3D sample ``[1, R, R, R]`` or a 2D one ``[R, R, R]``.
LAYOUTS = ("3d", "2d")
MESH_FORMATS = ("ply", "obj")


def _check(cfg: VoxelConfig) -> None:
    problems = []
    if cfg.representation not in REPRESENTATIONS:
        problems.append(f"representation={cfg.representation!r} (expected one of {REPRESENTATIONS})")
    if cfg.resolution < 8:
        problems.append(f"resolution={cfg.resolution} (expected >= 8)")
    if cfg.occupancy_rays < 1 or cfg.occupancy_rays % 2 == 0:
        problems.append(f"occupancy_rays={cfg.occupancy_rays} (expected an odd number >= 1)")
    if not 0 <= cfg.val_fraction < 1:
        problems.append(f"val_fraction={cfg.val_fraction} (expected 0 <= val_fraction < 1)")
    if cfg.layout not in LAYOUTS:
        problems.append(f"layout={cfg.layout!r} (expected one of {LAYOUTS})")
    if cfg.mesh_format not in MESH_FORMATS:
        problems.append(f"mesh_format={cfg.mesh_format!r} (expected one of {MESH_FORMATS})")
    if cfg.sdf_truncation <= 0:
        problems.append(f"sdf_truncation={cfg.sdf_truncation} (expected > 0)")
    if cfg.root is None and cfg.num_shapes < 1:
        problems.append(f"num_shapes={cfg.num_shapes} (expected >= 1)")
    if problems:
        raise ValueError("invalid voxel modality config: " + "; ".join(problems))


class VoxelModality(Modality):
    """Voxel grids: data, PLY/PNG output and IoU/Chamfer/MMD/COV/1-NNA metrics.

    Args:
        cfg (`VoxelConfig`): see :class:`mmldm_voxel.config.VoxelConfig`.

    Attributes:
        reconstruction_loss (`str`): hint for the autoencoder: ``"bce"`` (with
            logits) for occupancy, ``"l1"`` for a truncated SDF.
        class_names (`list[str]`): names of the class labels.
        skipped (`list[str]`): folder files that could not be read (after data load).
    """

    name = "voxel"

    def __init__(self, cfg: VoxelConfig):
        _check(cfg)
        self.cfg = cfg
        self.folded = cfg.layout == "2d"
        self.dims = 2 if self.folded else 3
        self.channels = cfg.resolution if self.folded else 1
        self.reconstruction_loss = "bce" if cfg.representation == "occupancy" else "l1"
        self.cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        if cfg.root is None:
            self.class_names = list(CLASS_NAMES)
        else:
            root = Path(cfg.root).expanduser().resolve()
            self.class_names = folder_class_names(list_files(root), root)
        self.num_classes = len(self.class_names)
        self._data: VoxelData | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        r = self.cfg.resolution
        return (self.channels, r, r, r)[-(self.dims + 1):]

    # ---- data -------------------------------------------------------------
    @property
    def data(self) -> VoxelData:
        """All grids, built (or read from the cache) on first access."""
        if self._data is None:
            c = self.cfg
            common = {
                "resolution": c.resolution,
                "representation": c.representation,
                "sdf_truncation": c.sdf_truncation,
            }
            if c.root is None:
                settings = {"num_shapes": c.num_shapes, "seed": c.seed, **common}
                self._data = procedural_data(settings, self.cache_dir)
            else:
                settings = {**common, "rays": c.occupancy_rays}
                self._data = folder_data(Path(c.root).expanduser(), settings, self.cache_dir)
        return self._data

    @property
    def skipped(self) -> list[str]:
        return self.data.skipped.paths

    @property
    def num_skipped(self) -> int:
        return self.data.skipped.count

    def dataset(self, split: str) -> VoxelDataset:
        """Items ``{"x": FloatTensor [1, R, R, R], "cond": {"class": int, "text": str}}``;
        ``split`` is ``"train"`` or ``"val"`` (deterministic under ``seed``)."""
        check_split(split)
        indices = split_indices(len(self.data.grids), self.cfg.val_fraction, split, self.cfg.seed)
        return VoxelDataset(self.data, indices, fold_depth=self.folded)

    # ---- outputs ------------------------------------------------------------
    def grids(self, x: Tensor) -> np.ndarray:
        """Data-space samples (either layout) as float grids ``[B, R, R, R]``."""
        x = x.detach().float().cpu().numpy()
        return x if self.folded else x[:, 0]

    def postprocess(self, decoded: Tensor) -> Tensor:
        """Decoder output ``[B, 1, R, R, R]`` -> data space: occupancy probabilities
        (sigmoid of logits) or an SDF clamped to [-1, 1]."""
        if self.cfg.representation == "occupancy":
            return torch.sigmoid(decoded)
        return decoded.clamp(-1.0, 1.0)

    def finalize(self, samples: Tensor) -> Tensor:
        """Occupancy probabilities -> the 0/1 occupancy at the 0.5 level that meshes are extracted at and
        the generation metrics use (real grids are 0/1, so a classifier trained on them judges the shape,
        not the decoder's soft boundary); SDF samples are returned unchanged."""
        if self.cfg.representation == "occupancy":
            return (samples > 0.5).to(samples.dtype)
        return samples

    def occupancy(self, x: Tensor) -> np.ndarray:
        """Boolean occupancy ``[B, R, R, R]`` of data-space samples (occupancy > 0.5, or SDF < 0)."""
        grids = self.grids(x)
        return grids > 0.5 if self.cfg.representation == "occupancy" else grids < 0.0

    def save(self, samples: Tensor, directory: Path, prefix: str = "sample",
             titles: Sequence[str] | None = None) -> list[Path]:
        """Per sample of ``samples`` (data space, ``[B, 1, R, R, R]`` or folded ``[B, R, R, R]``) its grid
        (``.npz``, key ``grid``, readable as data again), a marching-cubes mesh (``mesh_format``: PLY or
        OBJ) and a PNG render, plus ``{prefix}_grid.png`` (renders titled with ``titles``, else their index);
        returns the written paths."""
        grids = self.grids(samples)
        occupancy = self.cfg.representation == "occupancy"
        level, outside = (0.5, 0.0) if occupancy else (0.0, 1.0)
        return save_grids(grids, Path(directory), prefix, level=level, outside=outside,
                          mesh_format=self.cfg.mesh_format, titles=titles)

    # ---- a person's files and regions (editing) ---------------------------------
    def load(self, path: str | Path) -> Tensor:
        """A voxel file as a sample (``[1, R, R, R]``, or ``[R, R, R]`` with layout 2d) in the configured
        representation, as the dataset gives it. Sample files (``.npz``, key ``grid``, as :meth:`save` writes
        them; ``.npy``) are read by value: negative values mean a truncated SDF, else occupancy (probabilities
        thresholded at 0.5), resized to ``R`` by nearest neighbour. Meshes (``.ply``, ``.obj``, ``.off``, ``.stl``),
        point clouds and ``.binvox`` files are read as the data folder reads them (:func:`.readers.load_grid`:
        a mesh's bounding box is centred and its longest side scaled to the unit cube less a one-voxel border,
        then voxelized to a solid), so a mesh :meth:`save` wrote comes back rescaled to fill the cube."""
        path = self.check_input(path, SUFFIXES, f"a voxel grid or shape ({', '.join(SUFFIXES)})")
        c = self.cfg
        grid = read_sample(path, c.resolution, c.representation, c.sdf_truncation, c.occupancy_rays)
        x = torch.from_numpy(np.asarray(grid, dtype=np.float32))
        return x if self.folded else x[None]  # (R, R, R) or (1, R, R, R)

    def load_mask(self, path: str | Path) -> Tensor:
        """The inside of the shape a file holds (read by :meth:`load`): 1 = generate, ``[1, R, R, R]`` (layout 2d:
        ``[R, R, R]``); for an SDF model too (its samples hold distances, the mask the solid)."""
        x = self.load(path)
        inside = x > 0.5 if self.cfg.representation == "occupancy" else x < 0
        return inside.float()

    def region_names(self) -> dict[str, str]:
        """Half-spaces ``x-``, ``x+``, ``y-``, ``y+``, ``z-``, ``z+`` of the unit cube (y up; x is grid axis 0,
        the channels with layout 2d)."""
        axes = {"x": "grid axis 0 (the channels with layout 2d)", "y": "grid axis 1, up", "z": "grid axis 2"}
        return {name: f"{name[0]} {'<' if name[1] == '-' else '>'} 0: half of {axes[name[0]]}"
                for name in HALF_SPACES}

    def named_region(self, name: str, argument: str | None) -> Tensor:
        """The half-space ``name`` as a mask: ``[1, R, R, R]``; with layout 2d ``[R, R, R]`` for ``x-``/``x+``
        (grid axis x is the channels) and ``[1, R, R]`` for the others."""
        return half_space(name, self.cfg.resolution, self.folded)

    def erase(self, x: Tensor, mask: Tensor) -> Tensor:
        """Empty space where ``mask`` is 1: occupancy 0, or an SDF of 1 (outside)."""
        outside = 0.0 if self.cfg.representation == "occupancy" else 1.0
        return torch.lerp(x, torch.full_like(x, outside), mask.to(x.dtype))

    # ---- metrics ------------------------------------------------------------
    def reconstruction_metrics(self, x: Tensor, x_rec: Tensor) -> dict[str, float]:
        """Mean IoU (threshold 0.5 on occupancy) and Chamfer distance of surface points."""
        return metrics.reconstruction_metrics(self.occupancy(x), self.occupancy(x_rec))

    def generation_metrics(
        self, real: Tensor, generated: Tensor, labels: Tensor | None = None
    ) -> dict[str, float]:
        """MMD-CD, COV-CD and 1-NNA-CD on surface points of the two sets and the JSD of their mean
        occupancy (labels unused; class accuracy needs a classifier, see :mod:`mmldm.evaluation.classifier`)."""
        return metrics.generation_metrics(self.occupancy(real), self.occupancy(generated))
