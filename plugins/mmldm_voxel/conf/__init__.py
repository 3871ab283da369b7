"""Hydra presets shipped by the voxel plugin (``preset/voxel.yaml``)."""
