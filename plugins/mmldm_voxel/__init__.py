"""mmldm built-in plugin: voxel (under construction)."""
