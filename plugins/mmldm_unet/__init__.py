"""mmldm built-in plugin: unet (under construction)."""
