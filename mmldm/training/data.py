"""Data for both phases: loaders and the latent cache of phase 2.

The latent cache encodes a dataset once with the frozen autoencoder and keeps
the posterior mean and standard deviation as ``.npy`` files that are opened
memory-mapped, so phase 2 samples ``z = mean + std * eps`` without running
the encoder (for a KL posterior; ``std`` is zero for AE/VQ latents).
Conditions are kept beside them: tensors as ``.npy``, strings as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from ..latents import LatentStats
from .order import EpochBatchSampler, SeededItems

try:  # litdata is a dependency; without it only the in-memory data path exists
    from litdata import StreamingDataset
except ImportError:  # pragma: no cover
    StreamingDataset = ()  # type: ignore[assignment,misc]

MANIFEST = "manifest.json"


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, drop_last: bool = False,
                seed: int = 0, distributed: bool = False, key: str = "data.batch_size") -> DataLoader:
    """A DataLoader whose order and item randomness are functions of ``(seed, epoch, position)``.

    Batches come from an :class:`~mmldm.training.order.EpochBatchSampler` (``loader.batch_sampler``)
    over :class:`~mmldm.training.order.SeededItems`, so a run resumed from a checkpoint (which
    stores the batches consumed) sees the same batches and augmentations as an uninterrupted
    one, whatever ``num_workers``. With ``distributed`` each rank reads its shard of every epoch
    (the training loaders of both phases; Lightning's own sampler injection is off, see
    :func:`~mmldm.training.trainer.make_trainer`).

    A streamed dataset (litdata shards, :mod:`mmldm.streaming`) gets a
    :class:`~mmldm.streaming.StreamLoader` instead: litdata shards each epoch over the processes of all
    nodes by chunks, and a resumed run continues at the checkpointed batch count.

    Raises:
        ValueError: with ``drop_last``, when the data (per rank) fills no batch; ``key`` is the
            config key named in the message.
    """
    from ..streaming import StreamLoader

    if isinstance(dataset, StreamingDataset):  # shards (mmldm.streaming): litdata orders and shards the epochs
        loader = StreamLoader(dataset, batch_size, shuffle, num_workers, drop_last, distributed, collate_fn=collate)
        if drop_last and len(loader) == 0:
            raise ValueError(f"{key}={batch_size} leaves no full batch of the {len(dataset)} streamed training items "
                             f"in a process; lower {key} or add data")
        return loader
    size = len(dataset)  # type: ignore[arg-type]
    sampler = EpochBatchSampler(size, batch_size, shuffle, drop_last, seed, distributed)
    if drop_last and len(sampler) == 0:
        raise ValueError(f"{key}={batch_size} is larger than the {sampler._per_rank()} training items per process: "
                         f"no full batch; lower {key} or add data")
    return DataLoader(
        SeededItems(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0,
    )


def data_position(loader: Any) -> Any:
    """What :class:`~mmldm.training.callbacks.ResumeState` moves to the checkpointed batch count: the
    :class:`~mmldm.training.order.EpochBatchSampler` of a :func:`make_loader` loader, or a
    :class:`~mmldm.streaming.StreamLoader` itself (``None`` for other loaders)."""
    if loader is None:
        return None
    if isinstance(getattr(loader, "batch_sampler", None), EpochBatchSampler):
        return loader.batch_sampler
    from ..streaming import StreamLoader

    return loader if isinstance(loader, StreamLoader) else None


def split_dataset(cfg: Any, modality: Any, split: str) -> Dataset:
    """The items of ``split`` that a run trains or measures on: the modality's dataset (``data.source=memory``)
    or the shards that ``mmldm prepare`` wrote under ``data.root`` (``data.source=stream``, checked against
    the modality: :func:`~mmldm.streaming.check_shards`; the training split shuffled with ``cfg.seed``)."""
    data_cfg = cfg.data
    if data_cfg.get("source", "memory") != "stream":
        return modality.dataset(split)
    from ..streaming import check_shards, open_split

    from .preflight import PreflightError

    if not data_cfg.root:
        raise PreflightError("data.source=stream needs data.root=<the folder `mmldm prepare` wrote>")
    try:
        check_shards(data_cfg.root, modality)
    except (ValueError, FileNotFoundError) as e:
        raise PreflightError(str(e)) from None
    return open_split(data_cfg.root, split, shuffle=split == "train", seed=int(cfg.seed))


def _cond_arrays(cond: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in cond.items():
        out[key] = value.cpu().numpy() if isinstance(value, Tensor) else list(value)
    return out


@torch.no_grad()
def encode_dataset(autoencoder: torch.nn.Module, dataset: Dataset, directory: Path, batch_size: int = 32,
                   progress: bool = True, seed: int = 0, producer: Mapping[str, Any] | None = None) -> Path:
    """Encode ``dataset`` into ``directory``: ``mean.npy``, ``std.npy``, conditions and a manifest.

    Returns ``directory``. The manifest is written last and atomically, so a
    folder with a manifest is complete (a run killed while encoding encodes
    again). Item randomness (augmentations) is seeded by ``seed`` and the
    position, so the cache does not depend on the global RNG. ``producer`` (JSON values) is recorded
    in the manifest as what the latents were made from (``mmldm train`` records the autoencoder's
    weight digest, the modality config, the item count and the seed, and encodes again when they
    change: :func:`mmldm.training.run.latent_dataset`). Raises
    ``ValueError`` naming the items when the encoder returns NaN or Inf.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    if n == 0:
        raise ValueError("encode_dataset: the dataset is empty, nothing to encode")
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    (directory / MANIFEST).unlink(missing_ok=True)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=seed)
    mean_mm = std_mm = None
    conds: dict[str, list] = {}
    start = 0
    for batch in tqdm(loader, desc="encoding latents", disable=not progress, leave=False):
        posterior = autoencoder.encode(batch["x"].to(device))
        mean = posterior.mode().float().cpu().numpy()
        std = posterior.std.float().cpu().numpy()  # LatentDistribution.std: zeros for a point mass
        stochastic = posterior.is_stochastic
        _check_finite(mean, std, start)
        if mean_mm is None:
            shape = (n, *mean.shape[1:])
            mean_mm = np.lib.format.open_memmap(directory / "mean.npy", mode="w+", dtype=np.float32, shape=shape)
            std_mm = np.lib.format.open_memmap(directory / "std.npy", mode="w+", dtype=np.float32, shape=shape)
        end = start + mean.shape[0]
        mean_mm[start:end], std_mm[start:end] = mean, std
        for key, value in _cond_arrays(batch.get("cond", {})).items():
            conds.setdefault(key, []).append(value)
        start = end
    mean_mm.flush()
    std_mm.flush()
    cond_files = {}
    for key, parts in conds.items():
        if isinstance(parts[0], np.ndarray):
            np.save(directory / f"cond_{key}.npy", np.concatenate(parts))
            cond_files[key] = f"cond_{key}.npy"
        else:
            (directory / f"cond_{key}.json").write_text(json.dumps([v for p in parts for v in p]))
            cond_files[key] = f"cond_{key}.json"
    manifest = {"items": n, "latent_shape": list(mean_mm.shape[1:]), "cond": cond_files, "stochastic": stochastic,
                "producer": dict(producer) if producer is not None else None}
    tmp = directory / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(directory / MANIFEST)
    return directory


def _check_finite(mean: np.ndarray, std: np.ndarray, start: int) -> None:
    bad = ~(np.isfinite(mean).reshape(len(mean), -1).all(1) & np.isfinite(std).reshape(len(std), -1).all(1))
    if bad.any():
        items = (np.flatnonzero(bad) + start).tolist()
        raise ValueError(f"encode_dataset: the autoencoder returned NaN/Inf latents for dataset item(s) {items[:10]}"
                         f"{' ...' if len(items) > 10 else ''}; check those inputs for non-finite values")


class LatentCacheDataset(Dataset):
    """Items ``{"z": normalized latent [c, *s], "cond": {...}}`` from an :func:`encode_dataset` folder.

    Args:
        directory (`Path`): the cache folder.
        stats (`LatentStats`): normalization applied to every latent.
        sample (`bool`): draw ``mean + std * eps`` each time when the encoder's posterior was stochastic
            (the manifest's ``stochastic``: :attr:`~mmldm.interfaces.LatentDistribution.is_stochastic`); else the mean.
    """

    def __init__(self, directory: Path, stats: LatentStats, sample: bool = True):
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no latent cache at {directory} ({MANIFEST} missing); run `mmldm encode` first")
        self.manifest = json.loads(manifest_path.read_text())
        self.mean = np.load(directory / "mean.npy", mmap_mode="r")
        self.std = np.load(directory / "std.npy", mmap_mode="r")
        stochastic = self.manifest.get("stochastic")  # absent in caches of older versions: judge from the stds
        self.sample = sample and bool(np.any(self.std[: min(len(self.std), 8)]) if stochastic is None else stochastic)
        self.stats = stats
        self.cond: dict[str, Any] = {}
        for key, name in self.manifest["cond"].items():
            path = directory / name
            self.cond[key] = np.load(path, mmap_mode="r") if name.endswith(".npy") else json.loads(path.read_text())

    def __len__(self) -> int:
        return int(self.manifest["items"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        z = torch.from_numpy(np.array(self.mean[i]))
        if self.sample:
            z = z + torch.from_numpy(np.array(self.std[i])) * torch.randn_like(z)
        z = self.stats.normalize(z[None])[0]
        cond = {k: (torch.from_numpy(np.array(v[i])) if isinstance(v, np.ndarray) else v[i]) for k, v in self.cond.items()}
        return {"z": z, "cond": cond}


class EncodingDataset(Dataset):
    """The uncached path: encode each item with the frozen autoencoder when it is read (a posterior
    sample, which is the mode for a point-mass posterior, unless ``sample`` is false)."""

    def __init__(self, dataset: Dataset, autoencoder: torch.nn.Module, stats: LatentStats, sample: bool = True):
        self.dataset, self.autoencoder, self.stats, self.sample = dataset, autoencoder.eval(), stats, sample

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        posterior = self.autoencoder.encode(item["x"][None])
        z = posterior.sample() if self.sample else posterior.mode()
        return {"z": self.stats.normalize(z)[0], "cond": item.get("cond", {})}


class _ConditionView(Sequence):
    """``dataset[i]["cond"].get(key)`` for every item, read only when indexed."""

    def __init__(self, dataset: Dataset, key: str):
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.dataset[i].get("cond", {}).get(self.key)


def condition_values(dataset: Dataset, key: str) -> Sequence[Any]:
    """The values of ``cond[key]`` over a phase-2 dataset (for :meth:`Conditioner.fit`).

    A latent cache hands its stored list/array (empty when it has no such key);
    otherwise a lazy view reads the raw items only when indexed (``None`` where missing).
    """
    from ..streaming import LatentShards

    if isinstance(dataset, (LatentCacheDataset, LatentShards)):
        return dataset.cond.get(key, [])
    return _ConditionView(dataset.dataset if isinstance(dataset, EncodingDataset) else dataset, key)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` (kept as a named function so loaders pickle for worker processes)."""
    return default_collate(items)
