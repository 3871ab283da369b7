"""Mel-axis shifts: a static augmentation for training the independent evaluation classifier.

Moving a log-mel spectrogram a few mel bins up or down approximates another
speaker's vocal tract length (the warp of VTLP, Jaitly & Hinton 2013,
"Vocal Tract Length Perturbation (VTLP) improves speech recognition"), which
is what a classifier must ignore to recognize digits of a speaker it never
heard. In the 1D layout the mel bins are channels, so the spatial shifts of
:func:`mmldm.evaluation.classifier.train_classifier` (time only) cannot do it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .features import normalize


def mel_shift(modality: Any, x: Tensor, k: int) -> Tensor:
    """Normalized features ``[B, C, *s]`` with their log-mel moved ``k`` mel bins up (``k < 0``: down).

    The shift acts on the denormalized log-mel ``[B, n_mels, T]`` (the vacated edge bins repeat the
    nearest kept bin) and the result is normalized again with the modality's statistics.
    """
    logmel = modality.to_logmel(x)  # (B, n_mels, T)
    n = logmel.shape[1]
    if abs(k) >= n:
        raise ValueError(f"mel_shift: |k|={abs(k)} must be below n_mels={n}")
    index = (torch.arange(n) - k).clamp(0, n - 1)  # bin f takes bin f - k
    return normalize(logmel[:, index], modality.stats, modality.cfg.layout).to(x.dtype)


class MelShiftDataset(Dataset):
    """Every item of ``dataset`` once per shift in ``shifts`` (``len = len(dataset) * len(shifts)``).

    Items ``{"x": [C, *s], "cond": ...}`` keep their conditions; item ``i`` is item
    ``i % len(dataset)`` shifted by ``shifts[i // len(dataset)]`` mel bins (0 keeps it as is).
    Use it as the ``train`` set of ``train_classifier`` (e.g. ``shifts=range(-3, 4)``).
    """

    def __init__(self, dataset: Any, modality: Any, shifts: Sequence[int]) -> None:
        if not shifts:
            raise ValueError("MelShiftDataset needs at least one shift (0 keeps the items unchanged)")
        self.dataset, self.modality, self.shifts = dataset, modality, [int(k) for k in shifts]

    def __len__(self) -> int:
        return len(self.dataset) * len(self.shifts)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i % len(self.dataset)]
        k = self.shifts[i // len(self.dataset)]
        x = mel_shift(self.modality, item["x"][None], k)[0] if k else item["x"]
        return {"x": x, "cond": item["cond"]}
