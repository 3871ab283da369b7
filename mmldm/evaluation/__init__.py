"""Measuring generated samples: the Frechet distance and an independent feature classifier."""

from .frechet import feature_stats, frechet_distance, frechet_distance_from_stats

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_from_stats"]
