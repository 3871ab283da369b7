"""Configuration of the voxel modality (torch-free: the CLI validates it before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmldm.config import ComponentConfig


@dataclass
class VoxelConfig(ComponentConfig):
    """Settings of :class:`mmldm_voxel.modality.VoxelModality`.

    Samples are grids ``[1, R, R, R]`` over the unit cube ``[-0.5, 0.5]^3``.
    ``representation="occupancy"`` stores solid occupancy in ``{0, 1}`` (kept as
    float, not mapped to [-1, 1]: the autoencoder reconstructs it with
    BCE-with-logits); ``"sdf"`` stores a truncated signed distance divided by
    ``sdf_truncation``, in ``[-1, 1]``, negative inside.

    ``layout="2d"`` folds the first grid axis into channels: samples become
    ``[R, R, R]`` 2D images with R channels, and the 2D autoencoder and U-Net
    run on them (the "2D or 3D latent?" comparison); outputs and metrics are
    the same 3D ones.
    """

    resolution: int = 32  # R; 16 for quick runs
    num_shapes: int = 2000  # procedural shapes made when `root` is None
    seed: int = 0  # seeds procedural shapes and the train/val split
    root: Optional[str] = None  # folder of meshes / point clouds / .binvox / .npy; None: procedural shapes
    representation: str = "occupancy"  # "occupancy" or "sdf"
    sdf_truncation: float = 0.1  # in unit-cube units (about 3 voxels at R=32)
    occupancy_rays: int = 3  # odd; rays voted per voxel for inside/outside of closed folder meshes
    val_fraction: float = 0.1
    layout: str = "3d"  # "3d": [1, R, R, R]; "2d": [R, R, R] (depth as channels)
    cache_dir: Optional[str] = None  # None: $MMLDM_CACHE/voxel or ~/.cache/mmldm/voxel
    mesh_format: str = "ply"  # meshes that `save` writes: "ply" or "obj"
