"""mmldm built-in plugin: conditioners (under construction)."""
