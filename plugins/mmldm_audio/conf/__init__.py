"""Config directory of the audio plugin (Hydra search path: pkg://mmldm_audio.conf)."""
