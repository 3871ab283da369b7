"""mmldm built-in plugin: image (under construction)."""
