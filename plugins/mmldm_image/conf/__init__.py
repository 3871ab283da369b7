"""Config directory of the image plugin (Hydra search path: pkg://mmldm_image.conf)."""
