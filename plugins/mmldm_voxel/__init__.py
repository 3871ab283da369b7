"""mmldm built-in plugin: the voxel modality (3D occupancy or truncated SDF grids).

Registers modality ``voxel``. Kept free of torch at import time; the
modality itself loads lazily from :mod:`mmldm_voxel.modality`.
"""

from mmldm import hookimpl

from .config import VoxelConfig

__all__ = ["VoxelConfig"]


@hookimpl
def mmldm_register_components(registry):  # type: ignore[no-untyped-def]
    registry.add(
        "modality",
        "voxel",
        "mmldm_voxel.modality:VoxelModality",
        config=VoxelConfig,
        description="3D grids [B,1,R,R,R]: solid occupancy or truncated SDF; procedural shapes or a mesh folder",
    )


@hookimpl
def mmldm_config_dirs():  # type: ignore[no-untyped-def]
    return ["pkg://mmldm_voxel.conf"]
