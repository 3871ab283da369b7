"""Configuration of the time-series modality (torch-free: mmldm validates it before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

from mmldm.config import ComponentConfig


@dataclass
class TimeSeriesConfig(ComponentConfig):
    """Synthetic series ``[channels, length]``: a sum of sinusoids plus Gaussian noise.

    Class ``k`` of ``num_classes`` draws its frequencies from the ``k``-th of
    equal bands between ``min_cycles`` and ``max_cycles`` (cycles per series).

    Args:
        length (`int`): ``T``, a multiple of the autoencoder's downsampling factor.
        channels (`int`): ``C``; the channels of a series share its frequencies, each with its own phase.
        num_samples (`int`): series made (train + val); class ``i % num_classes`` for series ``i``.
        components (`int`): sinusoids summed per series.
        noise (`float`): standard deviation of the added Gaussian noise.
        val_fraction (`float`): the last series held out as "val".
    """

    length: int = 64
    channels: int = 1
    num_samples: int = 1000
    num_classes: int = 4
    components: int = 2
    min_cycles: float = 1.0
    max_cycles: float = 16.0  # below length / 2 (Nyquist) with room to spare
    noise: float = 0.05
    seed: int = 0
    val_fraction: float = 0.1
