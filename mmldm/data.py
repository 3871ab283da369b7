"""Data helpers shared by modality plugins: the train/val split and the report of skipped files.

Torch-free (numpy only), so a plugin's data code can use it anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")


def split_indices(n: int, val_fraction: float, split: str, seed: int = 0, shuffle: bool = True) -> np.ndarray:
    """Indices (int64) of ``split`` (``"train"`` or ``"val"``) among ``n`` items.

    The convention every modality shares:

    * the items are ordered by a permutation drawn from ``numpy.random.default_rng(seed)``
      (``shuffle=True``, so e.g. class folders mix across splits) or kept in their own
      order (``shuffle=False``: val is then the tail of the data, in file order);
    * val is the **last** ``n_val = round(n * val_fraction)`` items of that order, train
      the others; both keep that order (neither is sorted);
    * ``n_val`` is at least 1 when ``val_fraction > 0`` and ``n > 1``, and at most ``n - 1``
      (train is never empty); with ``n <= 1`` or ``val_fraction == 0`` val is empty;
    * the result depends only on ``(n, val_fraction, seed, shuffle)``: the same call
      always returns the same indices, and the two splits partition ``range(n)``.

    Args:
        n (`int`): number of items.
        val_fraction (`float`): fraction of the items held out for validation, in [0, 1).
        split (`str`): ``"train"`` or ``"val"``.
        seed (`int`, defaults to 0): seed of the permutation.
        shuffle (`bool`, defaults to `True`): permute before splitting.
    """
    check_split(split)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    n_val = min(n - 1, max(1, round(n * val_fraction))) if val_fraction > 0 and n > 1 else 0
    return order[n - n_val :] if split == "val" else order[: n - n_val]


@dataclass
class SkippedFiles:
    """Files a data reader could not use, each with the reason, reported in one warning.

    Usage::

        skipped = SkippedFiles()
        for path in files:
            try:
                ...
            except OSError as e:
                skipped.add(path.relative_to(root), e)
        skipped.warn(logger, f"image folder {root}")
    """

    items: list[tuple[str, str]] = field(default_factory=list)  #: ``(path, reason)`` pairs

    def add(self, path: str | Path, reason: str | BaseException) -> None:
        """Record ``path``; an exception becomes ``"<ExceptionType>: <message>"``."""
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        self.items.append((str(path), reason))

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.items]

    def message(self, what: str) -> str:
        """``"<what>: skipped <count> unreadable file(s): <path> (<reason>); ..."``."""
        listed = "; ".join(f"{path} ({reason})" if reason else path for path, reason in self.items)
        return f"{what}: skipped {self.count} unreadable file(s): {listed}"

    def warn(self, logger: logging.Logger, what: str) -> None:
        """Log one warning on ``logger`` naming every skipped file and the count (nothing when none)."""
        if self.items:
            logger.warning(self.message(what))
