"""mmldm built-in plugin: audio (under construction)."""
