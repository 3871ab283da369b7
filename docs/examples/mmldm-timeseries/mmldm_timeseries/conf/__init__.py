"""Hydra config directory of the timeseries plugin (presets under ``preset/``)."""
