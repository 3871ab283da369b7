"""Config directory of the conditioners plugin (Hydra search path: pkg://mmldm_conditioners.conf)."""
