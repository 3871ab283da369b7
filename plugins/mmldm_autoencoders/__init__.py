"""mmldm built-in plugin: autoencoders (under construction)."""
