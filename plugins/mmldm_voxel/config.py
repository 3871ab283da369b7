"""Configuration of the voxel modality (torch-free: the CLI validates it before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from mmldm.config import ComponentConfig
from mmldm.schema import at_least, checked, one_of, positive, seed, unit_interval


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

    resolution: int = at_least(8, 32)  # R; 16 for quick runs
    num_shapes: int = positive(2000)  # procedural shapes made when `root` is None
    seed: int = seed(0)  # seeds procedural shapes and the train/val split
    root: Optional[str] = None  # folder of meshes / point clouds / .binvox / .npy; None: procedural shapes
    representation: str = one_of("occupancy", ("occupancy", "sdf"))
    sdf_truncation: float = positive(0.1)  # in unit-cube units (about 3 voxels at R=32)
    # rays voted per voxel for inside/outside of closed folder meshes
    occupancy_rays: int = checked(3, ge=1, odd=True)
    val_fraction: float = unit_interval(0.1, open_high=True)
    layout: str = one_of("3d", ("3d", "2d"))  # "3d": [1, R, R, R]; "2d": [R, R, R] (depth as channels)
    cache_dir: Optional[str] = None  # None: $MMLDM_CACHE/voxel or ~/.cache/mmldm/voxel
    mesh_format: str = one_of("ply", ("ply", "obj"))  # meshes that `save` writes

    #: the key that sets :attr:`sample_dims` (named when a denoiser's dims disagree)
    dims_key: ClassVar[str] = "layout"

    @property
    def sample_dims(self) -> int:
        """Spatial dimensions of a sample: 3, or 2 with ``layout="2d"``."""
        return 2 if self.layout == "2d" else 3
