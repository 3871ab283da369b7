"""Data larger than memory: a modality's items as litdata shards, streamed in training.

``mmldm prepare`` (:func:`prepare`) iterates the modality's own datasets (``"train"`` and ``"val"``), so
whatever a modality reads it can shard, and writes each split with litdata's (Lightning's streaming-data
library) ``optimize`` in parallel workers::

    <out>/train/   index.json, chunk-*.bin     items {"index": i, "x": Tensor[C, *s], "cond": {...}}
    <out>/val/     the same for the held-out split
    <out>/prepare_report.json                  items per split, skipped files counted by reason
    <out>/mmldm_shards.json                    what produced the shards (written last: marks a finished prepare)

Training then streams them (``data.source=stream data.root=<out>``): :class:`ShardDataset` reads a split from
local disk, a shared file system or object storage (any location litdata reads), :class:`StreamLoader`
shards every epoch over the processes of all nodes (litdata: by chunks) and continues mid-epoch from the
number of batches a checkpoint recorded. The order of a streamed epoch is a function of the seed, the epoch,
the number of processes and ``data.num_workers``; a run resumed with the same ones sees the same batches.

Random augmentations of a modality's dataset (an image flip, an audio crop) are drawn once, when the shards
are written (seeded per item by ``seed``): a streamed epoch sees the same augmentation of an item every epoch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # litdata may ask its package index otherwise

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize
from litdata.utilities.env import _DistributedEnv

from .data import SPLITS, collect_skipped
from .training.order import _reseed, preserved_rng

log = logging.getLogger("mmldm")
if logging.getLogger("litdata").level == logging.NOTSET:  # one INFO line per dataset opened, otherwise
    logging.getLogger("litdata").setLevel(logging.WARNING)

MANIFEST = "mmldm_shards.json"  #: at the top of a prepared folder, written last
SPLIT_RECORD = "mmldm_split.json"  #: in each split folder, written when the split is complete
REPORT = "prepare_report.json"
STARTED = ".mmldm_prepare.json"  #: what an unfinished prepare is writing
FORMAT = 1  #: version of the item layout in the shards
_FAILURES = ".failures"


def item_seed(seed: int, split: str, index: int) -> int:
    """Seed of item ``index``'s randomness when the shards are written (a function of the key only)."""
    return int(np.random.default_rng([seed, SPLITS.index(split), index]).integers(0, 2**63 - 1))


class _WriteItem:
    """``optimize``'s ``fn``: item ``i`` of a modality dataset as stored, or ``None`` (left out) when reading it
    fails; the failure is appended to ``<failures>/<split>-<pid>.jsonl``. Workers inherit it by fork."""

    def __init__(self, dataset: Any, split: str, seed: int, failures: Path):
        self.dataset, self.split, self.seed, self.failures = dataset, split, seed, failures
        self.pid = os.getpid()

    def __call__(self, index: int) -> dict[str, Any] | None:
        if self.pid != os.getpid():  # first item in a forked worker: one torch thread, as DataLoader workers do
            # (an OpenMP pool inherited by fork from a parent that ran torch ops deadlocks on its next parallel region)
            torch.set_num_threads(1)
            self.pid = os.getpid()
        try:
            with preserved_rng():
                _reseed(item_seed(self.seed, self.split, index))
                item = self.dataset[index]
            return _pack(item, index)
        except Exception as e:  # noqa: BLE001 - one unreadable item must not end a day-long prepare
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            with open(self.failures / f"{self.split}-{os.getpid()}.jsonl", "a") as f:
                f.write(json.dumps({"path": f"{self.split} item {index}", "reason": reason}) + "\n")
            return None


#: ``x = u / divisor + offset`` for bytes ``u``: 0/1 occupancy and 0..255 values; 8-bit pictures mapped to
#: [-1, 1]; 8-bit pictures mapped to [0, 1]. A float item stored as bytes is a quarter of float32.
BYTE_MAPS = ((1.0, 0.0), (127.5, -1.0), (255.0, 0.0))


def expand(u: torch.Tensor, meta: Any) -> torch.Tensor:
    """The inverse of :func:`compact`: ``meta`` is ``[divisor, offset, dtype]``."""
    divisor, offset, dtype = float(meta[0]), float(meta[1]), getattr(torch, meta[2])
    if divisor == 0:
        return u
    return u.to(dtype) / divisor + offset if dtype.is_floating_point else u.to(dtype)


def compact(x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """``(bytes, [divisor, offset, dtype])`` when one of :data:`BYTE_MAPS` (floats) or a plain cast (integers,
    e.g. segmentation maps) gives ``x`` back bit for bit (checked), else ``(x, [0, 0, dtype])``."""
    dtype = str(x.dtype).removeprefix("torch.")
    if x.numel() and x.dtype not in (torch.bool, torch.uint8):
        maps = BYTE_MAPS if x.is_floating_point() else ((1.0, 0.0),)
        for divisor, offset in maps:
            u = ((x - offset) * divisor).round() if x.is_floating_point() else x
            if u.min() >= 0 and u.max() <= 255:
                meta = [divisor, offset, dtype]
                if torch.equal(expand(u.to(torch.uint8), meta), x):
                    return u.to(torch.uint8), meta
    return x, [0.0, 0.0, dtype]


def _pack(item: dict[str, Any], index: int) -> dict[str, Any]:
    """A dataset item as stored: tensors compacted (:func:`compact`), their layouts under ``"meta"``."""
    x, meta = compact(item["x"].contiguous())
    cond, cond_meta = {}, {}
    for key, value in dict(item.get("cond", {})).items():
        if isinstance(value, torch.Tensor):
            value, cond_meta[key] = compact(value.contiguous())
        cond[key] = value
    return {"index": index, "x": x, "cond": cond, "meta": {"x": meta, "cond": cond_meta}}


def _unpack(item: dict[str, Any]) -> dict[str, Any]:
    meta = item["meta"]
    cond = {k: expand(v, meta["cond"][k]) if k in meta["cond"] else v for k, v in item["cond"].items()}
    return {"index": item["index"], "x": expand(item["x"], meta["x"]), "cond": cond}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _kind(reason: str) -> str:
    """A reason without its specifics (``"OSError: [Errno 2] ..."`` -> ``"OSError"``), to count by."""
    for sep in (":", " ("):
        reason = reason.split(sep, 1)[0]
    return reason.strip() or "unknown"


def prepare(modality: Any, modality_cfg: Mapping[str, Any], out: str | Path, workers: int = 1, seed: int = 0,
            chunk_mb: float = 64.0, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the modality's ``"train"`` and ``"val"`` items into litdata shards under ``out``; returns the report.

    Idempotent: a folder whose manifest records the same producer (modality config, seed, format) is left
    as is. Resumable: a split whose record matches is kept; a split interrupted mid-way continues from
    litdata's checkpoints (``optimize(use_checkpoint=True)``). Shards of other settings are refused (naming
    the difference) unless ``overwrite``.

    Args:
        modality: a built modality (its ``dataset(split)`` is read once per split).
        modality_cfg (`Mapping`): its config (recorded, and compared on a re-run).
        out (`Path`): the output folder (local).
        workers (`int`): processes writing shards (forked; each item is read by one).
        seed (`int`): seed of the items' random augmentations.
        chunk_mb (`float`): target size of a chunk file in MB.
        overwrite (`bool`): replace shards written with other settings.
    """
    out = Path(out)
    producer = {"format": FORMAT, "modality": dict(modality_cfg), "seed": int(seed)}
    producer = json.loads(json.dumps(producer, default=str))  # as read back from the manifest
    manifest = _read_json(out / MANIFEST)
    if manifest is not None and manifest.get("producer") == producer:
        log.info("%s already holds these shards; nothing to do", out)
        return _read_json(out / REPORT) or {}
    started = _read_json(out / STARTED)
    if manifest is not None or started is not None or any((out / s).exists() for s in SPLITS):
        recorded = (manifest or {}).get("producer") or (started or {}).get("producer") or {}
        if recorded != producer and not overwrite:
            from .provenance import differences

            changed = differences(recorded, producer, limit=4) or ["no record of what wrote them"]
            raise ValueError(f"{out} holds shards written with other settings ({'; '.join(changed)}): "
                             "use another out=<dir>, or overwrite=true to replace them")
        if recorded != producer:
            for s in SPLITS:
                shutil.rmtree(out / s, ignore_errors=True)
            shutil.rmtree(out / _FAILURES, ignore_errors=True)
            (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / STARTED, {"producer": producer})  # an interrupted prepare resumes only with these settings
    start = time.perf_counter()
    with collect_skipped() as read_skips:
        datasets = {split: modality.dataset(split) for split in SPLITS}
    (out / _FAILURES).mkdir(exist_ok=True)
    for split, dataset in datasets.items():
        _write_split(dataset, split, out, producer, workers, seed, chunk_mb, progress)
    report = _report(out, read_skips, time.perf_counter() - start, tuple(modality.sample_shape))
    _write_json(out / REPORT, report)
    # statistics the modality measured on the data (audio: log-mel normalization), for runs that stream
    _write_json(out / MANIFEST, {"producer": producer, "modality": modality.name, "state": modality.state_dict(),
                                 "sample_shape": list(modality.sample_shape), "items": report["items"]})
    return report


def _write_split(dataset: Any, split: str, out: Path, producer: dict, workers: int, seed: int, chunk_mb: float,
                 progress: bool) -> None:
    folder = out / split
    if _read_json(folder / SPLIT_RECORD) == producer and (folder / "index.json").is_file():
        log.info("%s: already written, kept", folder)
        return
    if (folder / "index.json").is_file():  # complete but without our record: written by something else
        shutil.rmtree(folder)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"the modality's '{split}' split is empty: nothing to prepare")
    workers = max(1, min(workers, n))
    interrupted = _read_json(folder / ".checkpoints" / "config.json")
    if interrupted is not None and interrupted.get("num_workers", workers) != workers:
        log.info("%s: resuming with the %d workers it was started with", folder, interrupted["num_workers"])
        workers = int(interrupted["num_workers"])  # litdata's checkpoints resume with the same split of the work
    optimize(_WriteItem(dataset, split, seed, out / _FAILURES), list(range(n)), str(folder),
             num_workers=workers, chunk_bytes=int(chunk_mb * 2**20), use_checkpoint=True,
             start_method="fork", reorder_files=False, verbose=progress)
    _write_json(folder / SPLIT_RECORD, producer)


def _report(out: Path, read_skips: list, seconds: float, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    files = [{"path": path, "reason": reason, "where": what} for what, skipped in read_skips
             for path, reason in skipped.items]
    for path in sorted((out / _FAILURES).glob("*.jsonl")):  # an item retried after an interruption counts once
        files += [f for f in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
                  if f not in files]
    items = {split: _index_items(out / split) for split in SPLITS}
    return {"items": items, "sample_shape": list(sample_shape), "skipped": len(files),
            "skipped_by_reason": dict(Counter(_kind(f["reason"]) for f in files).most_common()),
            "skipped_files": files, "seconds": round(seconds, 2),
            "bytes": sum(p.stat().st_size for s in SPLITS for p in (out / s).glob("*.bin"))}


def _index_items(folder: Path) -> int:
    index = _read_json(folder / "index.json") or {}
    return int(sum(c.get("chunk_size", 0) for c in index.get("chunks", [])))


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared local folder (``None`` when there is none, or ``root`` is remote)."""
    return _read_json(Path(root) / MANIFEST) if "://" not in str(root) else None


# ---------------------------------------------------------------------------- reading
ONE_PROCESS = _DistributedEnv(1, 0, 1)


def split_dir(root: str | Path, split: str) -> str:
    """Where ``split`` of the shards under ``root`` (a folder or an object-storage URL) lies."""
    return f"{str(root).rstrip('/')}/{split}"


class ShardDataset(StreamingDataset):
    """A prepared split: items ``{"x": Tensor[C, *s], "cond": {...}}`` as the modality's dataset returns them.

    Args:
        directory (`str`): the split folder (``<out>/train``) or its object-storage URL.
        shuffle (`bool`): litdata's shuffle (chunk order, then items within a chunk) seeded by ``seed`` and the epoch.
        seed (`int`): seed of the shuffle.
        keep_index (`bool`): keep ``item["index"]``, the item's position in the modality's split.
        cache_dir (`str`, *optional*): local cache of remote chunks (litdata's default when ``None``).
    """

    def __init__(self, directory: str, shuffle: bool = False, seed: int = 0, keep_index: bool = False,
                 cache_dir: str | None = None):
        super().__init__(str(directory), shuffle=shuffle, seed=seed, cache_dir=cache_dir)
        self.distributed_env = ONE_PROCESS  # len() counts every item; a distributed StreamLoader shards it
        self.keep_index = keep_index

    def __getitem__(self, index: Any) -> Any:
        item = _unpack(super().__getitem__(index))
        if not self.keep_index:
            item.pop("index")
        return item


class StreamLoader(StreamingDataLoader):
    """litdata's loader, sharding each epoch over all processes of a distributed run, resumable by batch count.

    The process group is read when an epoch starts (a loader built before ``Trainer.fit`` initializes it
    shards all the same); ``distributed=False`` pins one process's view (every item, e.g. the latent
    cache rank 0 encodes). :meth:`resume` moves it to any batch from the count that
    :class:`~mmldm.training.callbacks.ResumeState` checkpoints: exact, where litdata's own state would
    count the batch Lightning has prefetched, so Lightning is handed none (:meth:`state_dict` is empty).
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                 drop_last: bool = False, distributed: bool = False, collate_fn: Any = None):
        self.distributed = distributed
        self._resumed = False  # an epoch started from a resume() position has been begun
        self._pin_world(dataset)
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle,
                         drop_last=drop_last, collate_fn=collate_fn)

    def _pin_world(self, dataset: StreamingDataset) -> None:
        world = _DistributedEnv.detect() if self.distributed else ONE_PROCESS
        if dataset.distributed_env != world:
            dataset.distributed_env = world
            dataset.shuffler = None  # rebuilt for the new world
            if world.world_size > 1:
                dataset.drop_last = True  # every rank the same number of batches (collectives stay in step)

    def __len__(self) -> int:
        self._pin_world(self.dataset)
        return super().__len__()

    def __iter__(self) -> Any:
        self._pin_world(self.dataset)
        if self._resumed:  # the resumed epoch has run: Lightning may stop it at its known length, before
            self.restore = False  # litdata's generator ends and clears the flag, which would replay it
        self._resumed = self.restore
        return super().__iter__()

    def resume(self, batches: int) -> None:
        """Continue after ``batches`` consumed batches in total (over all epochs)."""
        per_epoch = len(self)
        epoch, skip = divmod(batches, per_epoch) if per_epoch else (0, 0)
        self._resumed = self.restore = False
        self.current_epoch = epoch  # litdata counts epochs from 1: the next __iter__ starts epoch + 1
        if skip:
            yielded = skip * self.batch_size
            self.dataset.current_epoch = epoch + 1
            state = self.dataset.state_dict(yielded, self.num_workers, self.batch_size)
            super().load_state_dict({"dataset": state, "current_epoch": epoch + 1, "num_samples_yielded": yielded,
                                     "latest_worker_idx": (skip - 1) % max(1, self.num_workers)})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        if obj:
            super().load_state_dict(obj)


def open_split(root: str | Path, split: str, shuffle: bool = False, seed: int = 0,
               cache_dir: str | None = None) -> ShardDataset:
    """The shards of ``split`` under ``root``; raises ``FileNotFoundError`` naming the folder when there are none."""
    where = split_dir(root, split)
    if "://" not in where and not (Path(where) / "index.json").is_file():
        raise FileNotFoundError(f"no shards at {where} (index.json missing): run `mmldm prepare modality=<m> "
                                f"out={root}` first")
    return ShardDataset(where, shuffle=shuffle, seed=seed, cache_dir=cache_dir)


def check_shards(root: str | Path, modality: Any) -> None:
    """Refuse shards of another modality or sample shape than the run's (``ValueError`` naming both), and give
    the modality the statistics it measured on the prepared data (:meth:`Modality.load_state_dict`: e.g. audio's
    log-mel normalization), so it never reads its folder. A remote ``root`` is checked when read."""
    manifest = read_manifest(root)
    if "://" in str(root):
        return
    if manifest is None:
        raise FileNotFoundError(f"data.root={root} holds no finished prepare ({MANIFEST} missing): run "
                                f"`mmldm prepare modality={modality.name} out={root}` (again: it resumes)")
    if manifest["modality"] != modality.name or tuple(manifest["sample_shape"]) != tuple(modality.sample_shape):
        raise ValueError(f"data.root={root} holds {manifest['modality']} items of shape "
                         f"{tuple(manifest['sample_shape'])}, "
                         f"but this run's modality is {modality.name} with shape {tuple(modality.sample_shape)}: "
                         "prepare the shards with this run's modality settings")
    if manifest.get("state"):
        modality.load_state_dict(manifest["state"])


# ---------------------------------------------------------------------------- latent shards
class LatentShards(StreamingDataset):
    """The latent cache of streamed data: items ``{"z": normalized latent, "cond": {...}}``.

    A stochastic posterior's sample ``mean + std * eps`` draws ``eps`` from a generator seeded by
    ``(seed, epoch, item)``, so it does not depend on the loader's workers or a restart.
    ``cond`` holds the scalar and string conditions of every item (for :meth:`Conditioner.fit`).
    """

    def __init__(self, directory: str | Path, stats: Any, sample: bool = True, seed: int = 0, shuffle: bool = True):
        super().__init__(str(directory), shuffle=shuffle, seed=seed)
        self.distributed_env = ONE_PROCESS
        record = _read_json(Path(directory) / LATENT_MANIFEST) or {}
        self.sample = sample and bool(record.get("stochastic", True))
        self.stats, self.latent_seed = stats, seed
        self.cond: dict[str, list] = record.get("conditions", {})

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        z = torch.as_tensor(np.asarray(item["mean"]))
        if self.sample:
            seed = item_seed(self.latent_seed + self.current_epoch, "train", int(item["index"]))
            g = torch.Generator().manual_seed(seed)
            z = z + torch.as_tensor(np.asarray(item["std"])) * torch.randn(z.shape, generator=g)
        return {"z": self.stats.normalize(z[None])[0], "cond": item["cond"]}


LATENT_MANIFEST = "mmldm_latents.json"


@torch.no_grad()
def encode_shards(autoencoder: torch.nn.Module, dataset: StreamingDataset, directory: Path, batch_size: int,
                  producer: Mapping[str, Any], chunk_mb: float = 64.0, progress: bool = True) -> Path:
    """Encode every item of ``dataset`` (a :class:`ShardDataset`) into latent shards under ``directory``:
    ``{"index", "mean", "std", "cond"}`` per item, and :data:`LATENT_MANIFEST` (written last) with the
    producer, whether the posterior is stochastic and the small conditions (class labels, captions)."""
    from litdata.streaming.writer import BinaryWriter
    from tqdm.auto import tqdm

    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    reader = ShardDataset(dataset.input_dir.url or dataset.input_dir.path, keep_index=True)
    loader = StreamLoader(reader, batch_size, shuffle=False)
    writer = BinaryWriter(str(directory), chunk_bytes=int(chunk_mb * 2**20))
    conditions: dict[str, list] = {}
    stochastic, n = False, 0
    for batch in tqdm(loader, desc="encoding latents (shards)", disable=not progress, leave=False):
        posterior = autoencoder.encode(batch["x"].to(device))
        mean, std = posterior.mode().float().cpu(), posterior.std.float().cpu()
        stochastic = stochastic or bool(posterior.is_stochastic)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("encode_shards: the autoencoder returned NaN/Inf latents in items "
                             f"{batch['index'][:10].tolist()}")
        for j, index in enumerate(batch["index"].tolist()):
            cond = {k: (v[j] if isinstance(v, (list, tuple)) else v[j].clone()) for k, v in batch["cond"].items()}
            writer.add_item(n, {"index": index, "mean": mean[j].numpy(), "std": std[j].numpy(), "cond": cond})
            for k, v in cond.items():
                if isinstance(v, str) or (isinstance(v, torch.Tensor) and v.numel() == 1):
                    conditions.setdefault(k, []).append(v if isinstance(v, str) else v.item())
            n += 1
    writer.done()
    writer.merge()
    _write_json(directory / LATENT_MANIFEST, {"items": n, "stochastic": stochastic, "producer": dict(producer),
                                              "conditions": conditions})
    return directory


def latent_shards_stale(directory: Path, producer: Mapping[str, Any]) -> bool:
    record = _read_json(Path(directory) / LATENT_MANIFEST)
    return record is None or record.get("producer") != json.loads(json.dumps(dict(producer), default=str))
