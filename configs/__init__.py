"""mmldm's Hydra config tree, installed as the package ``mmldm_configs``."""
