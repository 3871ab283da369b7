"""Data order and per-item randomness as functions of ``(seed, epoch, position)``.

A resumed run must see the same batches, with the same random augmentations,
as an uninterrupted one. torch's ``RandomSampler`` draws each epoch's order
from a generator whose state is lost on a kill, and augmentations read the
global RNG in whatever order the loader prefetches. Here both are pure
functions of the seed, the epoch and the position in the epoch:

* :class:`EpochBatchSampler` yields batches of ``(index, item_seed)`` keys;
  epoch ``e``'s permutation and item seeds come from
  ``numpy.random.default_rng([seed, e])``. It counts epochs itself (each
  ``iter`` is one epoch) and :meth:`~EpochBatchSampler.resume` moves it to any
  batch, so a checkpoint only needs the number of batches consumed.
  Under ``torch.distributed`` it shards each epoch over the ranks like
  ``DistributedSampler`` (pad by wrapping, then every ``world``-th key).
* :class:`SeededItems` reads ``dataset[index]`` with torch's, numpy's and
  Python's global RNGs seeded by ``item_seed`` (and restored afterwards), so
  a random flip or crop depends on the key only, not on the loader's worker
  count, prefetching or a restart.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (index into the dataset, seed of the item's randomness)


def _world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler[list[Key]]):
    """Batches of ``(index, item_seed)`` keys whose order depends only on ``(seed, epoch)``.

    Args:
        size (`int`): number of items in the dataset.
        batch_size (`int`): keys per batch.
        shuffle (`bool`): permute every epoch (else dataset order, with the same item seeds every epoch).
        drop_last (`bool`): drop the last incomplete batch of each epoch (per rank).
        seed (`int`): seed of the permutations and item seeds.
        distributed (`bool`): shard each epoch over the ranks of ``torch.distributed`` when it is
            initialized (read at iteration time, so a sampler built before ``Trainer.fit`` works).
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, distributed: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.size, self.batch_size, self.shuffle, self.drop_last = size, batch_size, shuffle, drop_last
        self.seed, self.distributed = seed, distributed
        self.epoch = 0  # the epoch the next iteration yields
        self.skip = 0  # batches of that epoch already consumed before a restart

    def _shard(self) -> tuple[int, int]:
        return _world() if self.distributed else (0, 1)

    def _per_rank(self) -> int:
        return math.ceil(self.size / self._shard()[1]) if self.size else 0

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def keys(self, epoch: int) -> list[Key]:
        """This rank's keys of ``epoch``, in order (before batching)."""
        rng = np.random.default_rng([self.seed, epoch if self.shuffle else 0])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        seeds = rng.integers(0, 2**63 - 1, size=self.size, dtype=np.int64)
        rank, world = self._shard()
        total = self._per_rank() * world
        positions = np.resize(np.arange(self.size), total)[rank::world]  # pad by wrapping around
        return [(int(order[p]), int(seeds[p])) for p in positions]

    def resume(self, batches: int) -> None:
        """Continue after ``batches`` consumed batches in total (over all epochs)."""
        per_epoch = len(self)
        self.epoch, self.skip = (batches // per_epoch, batches % per_epoch) if per_epoch else (0, 0)

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        keys = self.keys(epoch)
        for b in range(skip, len(self)):
            yield keys[b * self.batch_size : (b + 1) * self.batch_size]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's (CPU), numpy's and Python's global RNG states when the body ends."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _reseed(seed: int) -> None:
    torch.default_generator.manual_seed(seed)  # the CPU generator only: 100x faster than torch.manual_seed
    np.random.seed(seed % 2**32)
    random.seed(seed)


class SeededItems(Dataset):
    """``dataset`` read by :class:`EpochBatchSampler` keys: item randomness seeded per key.

    ``__getitems__`` (used by ``DataLoader`` for a whole batch) saves and restores
    the global RNG states once per batch.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Key]) -> list[Any]:
        items = []
        with preserved_rng():
            for index, seed in keys:
                _reseed(seed)
                items.append(self.dataset[index])
        return items
