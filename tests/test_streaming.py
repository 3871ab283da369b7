"""Streaming shards (litdata): `mmldm prepare`, streamed items, seeded order and mid-epoch resume, training
from shards through `mmldm train`, and two "nodes" on the loopback interface sharing one epoch.

Datasets are tiny (a few dozen 16^3 grids); the larger-than-memory measurement is benchmarks/streaming.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from mmldm.build import build_modality
from mmldm.configuration import compose
from mmldm.data import SkippedFiles
from mmldm.streaming import MANIFEST, REPORT, ShardDataset, StreamLoader, item_seed, open_split, prepare
from mmldm.training.order import _reseed, preserved_rng
from mmldm.training.data import collate, make_loader, split_dataset
from mmldm.training.preflight import PreflightError

from .conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
VOXEL = ["modality=voxel", "modality.resolution=16", "modality.num_shapes=40"]


def _voxel(cache: Path):
    os.environ["MMLDM_CACHE"] = str(cache)
    cfg = compose(VOXEL)
    return build_modality(cfg.modality), dict(cfg.modality)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("shards")
    modality, mcfg = _voxel(base / "cache")
    prepare(modality, mcfg, base / "out", workers=2, chunk_mb=0.05, progress=False)  # several chunks
    return base / "out"


def _by_index(directory: Path) -> dict[int, dict]:
    ds = ShardDataset(str(directory), keep_index=True)
    return {int(item["index"]): item for item in (ds[i] for i in range(len(ds)))}


def _memory_item(dataset, split: str, i: int, seed: int = 0) -> dict:
    """Item ``i`` as prepare reads it: its random augmentations seeded by its key."""
    with preserved_rng():
        _reseed(item_seed(seed, split, i))
        return dataset[i]


@pytest.mark.parametrize("name", ["voxel", "image"])
def test_streamed_items_equal_the_in_memory_items(name, shards, tmp_path):
    if name == "voxel":
        modality, _ = _voxel(shards.parent / "cache")
    else:  # 8-bit pictures in [-1, 1] with random flips in the training split
        cfg = compose(["modality=image", "modality.num_samples=24", "modality.flip=true"])
        modality, shards = build_modality(cfg.modality), tmp_path / "image"
        prepare(modality, dict(cfg.modality), shards, workers=1, progress=False)
    for split in ("train", "val"):
        memory = modality.dataset(split)
        streamed = _by_index(shards / split)
        assert sorted(streamed) == list(range(len(memory)))
        for i, item in streamed.items():
            expected = _memory_item(memory, split, i)
            assert item["x"].dtype == expected["x"].dtype == torch.float32
            assert torch.equal(item["x"], expected["x"])
            assert {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in item["cond"].items()} == \
                {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in expected["cond"].items()}
    report = json.loads((shards / REPORT).read_text())
    assert report["items"] == {"train": len(modality.dataset("train")), "val": len(modality.dataset("val"))}
    assert report["skipped"] == 0
    # occupancy, 8-bit pictures and segmentation maps are stored as bytes (float32 would be 4x the numel)
    numel = torch.Size(modality.sample_shape).numel()
    assert report["bytes"] < sum(report["items"].values()) * numel * (1.5 if name == "voxel" else 2)


def test_prepare_is_idempotent_resumes_a_missing_split_and_refuses_other_settings(shards, tmp_path):
    modality, mcfg = _voxel(shards.parent / "cache")
    out = tmp_path / "out"
    prepare(modality, mcfg, out, workers=1, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.bin")}
    prepare(modality, mcfg, out, workers=1, progress=False)  # same settings: nothing written
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.bin")} == stamp
    # an interrupted prepare (val not written, no manifest) continues: train is kept, val is written
    for p in (out / "val").iterdir():
        p.unlink()
    (out / "val").rmdir()
    (out / MANIFEST).unlink()
    prepare(modality, mcfg, out, workers=1, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items() if p.parent.name == "train")
    assert _by_index(out / "val").keys() == _by_index(shards / "val").keys()
    other = {**mcfg, "num_shapes": 41}
    with pytest.raises(ValueError, match="num_shapes: 40 -> 41"):
        prepare(modality, other, out, workers=1, progress=False)


class _Flaky(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i == 2:
            raise OSError("truncated file")
        return {"x": torch.full((1, 4), float(i) / 10), "cond": {"class": i % 2}}


class _FlakyModality:
    """What prepare reads of a modality: name, sample_shape, dataset(split) (whose reader skips a file)."""

    name, sample_shape = "flaky", (1, 4)

    def state_dict(self) -> dict:
        return {}

    def dataset(self, split: str) -> Dataset:
        skipped = SkippedFiles()
        skipped.add("a/broken.png", "not a regular file (FIFO)")
        skipped.warn(logging.getLogger("test"), f"{split} folder")
        return _Flaky(6 if split == "train" else 3)


def test_prepare_reports_skipped_files_and_unreadable_items_by_reason(tmp_path):
    report = prepare(_FlakyModality(), {"name": "flaky"}, tmp_path / "out", workers=2, progress=False)
    assert report["items"] == {"train": 5, "val": 2}
    assert report["skipped"] == 4
    assert report["skipped_by_reason"] == {"not a regular file": 2, "OSError": 2}
    assert {"path": "train item 2", "reason": "OSError: truncated file"} in report["skipped_files"]
    assert json.loads((tmp_path / "out" / REPORT).read_text()) == report
    x = _by_index(tmp_path / "out" / "train")[3]["x"]
    assert x.dtype == torch.float32 and torch.allclose(x, torch.full((1, 4), 0.3))  # not 8-bit: kept as float


def _indices(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_resumed_mid_epoch_sees_the_same_batches(shards, workers):
    def loader():
        ds = ShardDataset(str(shards / "train"), shuffle=True, seed=3, keep_index=True)
        return StreamLoader(ds, batch_size=4, shuffle=True, num_workers=workers, drop_last=True, collate_fn=collate)

    reference = loader()
    epochs = [_indices(reference) for _ in range(3)]
    per_epoch = len(epochs[0])
    assert per_epoch == len(reference) and epochs[0] != epochs[1]  # reshuffled every epoch
    assert sorted(sum(epochs[0], [])) == sorted(set(sum(epochs[0], [])))  # no item twice in an epoch
    flat = sum(epochs, [])
    for done in (3, per_epoch, per_epoch + 2):
        resumed = loader()
        resumed.resume(done)
        rest = _indices(resumed)
        rest += _indices(resumed)
        assert rest == flat[done: done + len(rest)] and len(rest) >= per_epoch


def test_make_loader_streams_a_shard_dataset_and_refuses_a_batch_larger_than_the_data(shards):
    ds = open_split(shards, "train", shuffle=True)
    loader = make_loader(ds, 4, True, drop_last=True, distributed=True)
    assert isinstance(loader, StreamLoader)
    batch = next(iter(loader))
    assert batch["x"].shape == (4, 1, 16, 16, 16) and batch["x"].dtype == torch.float32
    assert set(batch["cond"]) == {"class", "text"}
    with pytest.raises(ValueError, match="data.batch_size=999 leaves no full batch"):
        make_loader(ds, 999, True, drop_last=True)


def fit_run(shards: str, out: str, steps: int, world: int = 1) -> dict:
    """Fit a one-parameter model on streamed shards through :func:`make_trainer` (checkpoint every step,
    resuming from ``out``'s last one) and return, and write to ``out/rank<r>.json``, the batches it saw."""
    import lightning as L

    from mmldm.training.trainer import last_checkpoint, make_trainer

    class Record(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list = []

        def training_step(self, batch, _):
            self.seen.append(batch["index"].tolist())
            return (self.w - batch["x"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    extra = ["trainer=ddp", "trainer.devices=1", f"trainer.num_nodes={world}"] if world > 1 else []
    cfg = compose([*extra, "trainer.accelerator=cpu", f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
                   "trainer.checkpoint_every_n_steps=1"])
    data = ShardDataset(shards, shuffle=True, seed=7, keep_index=True)
    loader = make_loader(data, 2, True, drop_last=True, seed=7, distributed=True)
    trainer = make_trainer(cfg.trainer, Path(out), loader=loader, limit_val_batches=0)
    module = Record()
    trainer.fit(module, loader, ckpt_path=last_checkpoint(Path(out)))
    result = {"seen": module.seen, "world": trainer.world_size, "per_epoch": len(loader)}
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    return result


def _node(shards: Path, out: Path, steps: int, env: dict) -> subprocess.Popen:
    code = f"from tests.test_streaming import fit_run; fit_run({str(shards)!r}, {str(out)!r}, {steps}, world=2)"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]


def test_training_resumed_from_a_mid_epoch_checkpoint_sees_the_same_batches(shards, tmp_path):
    """Through Lightning: the checkpoint's batch count, not litdata's state (which counts the batch Lightning
    prefetched), positions the stream."""
    train = str(shards / "train")
    whole = fit_run(train, str(tmp_path / "whole"), 24)
    assert 24 > whole["per_epoch"] > 5  # the run crosses an epoch boundary; the cut below is mid-epoch
    fit_run(train, str(tmp_path / "cut"), 5)
    resumed = fit_run(train, str(tmp_path / "cut"), 24)
    assert resumed["seen"] == whole["seen"][5:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_see_every_item_once_per_epoch(shards, tmp_path):
    """Two "nodes" of one process each (Lightning's multi-node environment variables, gloo) stream the same
    shards: within each epoch their items are disjoint, and together they are the epoch (litdata drops the
    remainder that would leave one rank a batch short)."""
    n = len(ShardDataset(str(shards / "train")))
    per_epoch = n // (2 * 2)  # per process: 2 nodes, batch 2
    port = str(_free_port())
    procs = [_node(shards / "train", tmp_path / "nodes", 2 * per_epoch, env={
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank), "LOCAL_RANK": "0",
        "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    for proc in procs:
        _wait(proc)
    ranks = [json.loads((tmp_path / "nodes" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["per_epoch"] == ranks[1]["per_epoch"] == per_epoch
    assert [len(r["seen"]) for r in ranks] == [2 * per_epoch] * 2
    for epoch in range(2):
        seen = [i for r in ranks for batch in r["seen"][epoch * per_epoch: (epoch + 1) * per_epoch] for i in batch]
        assert len(seen) == len(set(seen)) == 2 * per_epoch * 2
        assert set(seen) <= set(range(n)) and len(seen) >= n - 2 * 2  # all but less than one global batch


def test_a_streamed_run_takes_the_data_statistics_of_the_shards(tmp_path):
    """Audio normalizes log-mels with statistics measured on its data: a streamed run takes the prepared data's,
    whatever folder its own modality config names."""
    cfg = compose(["modality=audio", "modality.num_samples=12"])
    modality = build_modality(cfg.modality)
    prepare(modality, dict(cfg.modality), tmp_path / "audio", workers=1, progress=False)
    other = compose(["modality=audio", "modality.num_samples=16", "data.source=stream", f"data.root={tmp_path / 'audio'}"])
    streamed = build_modality(other.modality)
    data = split_dataset(other, streamed, "train")
    assert streamed.state_dict()["stats"] == modality.state_dict()["stats"]
    assert torch.equal(data[0]["x"], _memory_item(modality.dataset("train"), "train", 0)["x"])
    assert build_modality(other.modality).state_dict()["stats"] != modality.state_dict()["stats"]


TINY_TRAIN = ["preset=voxel_quick", "trainer.max_steps=3", "diffusion.max_steps=3", "trainer.enable_progress_bar=false",
              "trainer.limit_val_batches=1", "data.batch_size=4", "data.stats_batches=2", "sample.num_samples=2",
              "sampler.steps=3"]


def test_prepare_then_train_both_phases_from_shards_through_the_cli(shards, tmp_path, capsys):
    from mmldm.cli import main

    out = tmp_path / "shards"
    assert main(["prepare", "--help"]) == 0 and "usage: mmldm prepare" in capsys.readouterr().out
    assert main(["prepare", *VOXEL, f"out={out}", "workers=1"]) == 0
    assert "data.source=stream" in capsys.readouterr().out
    assert main(["prepare", "modality=voxel", "out=" + str(out), "workers=0"]) == 2  # a bad option fails first
    run = tmp_path / "run"
    env = {"MMLDM_CACHE": str(tmp_path / "empty-cache")}  # the run reads the shards, not the modality's data
    proc = run_cli("train", *VOXEL, *TINY_TRAIN, "data.source=stream", f"data.root={out}", f"hydra.run.dir={run}",
                   env_extra=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diffusion"]["steps"] == 3 and "generation" in metrics["diffusion"]
    assert (run / "latents" / "index.json").is_file()  # the latent cache of streamed data is shards too
    assert not (tmp_path / "empty-cache").exists()
    # shards of another modality or sample shape are refused before any training, naming both
    cfg = compose(["modality=voxel", "modality.resolution=32", "data.source=stream", f"data.root={out}"])
    with pytest.raises(PreflightError, match=r"shape \(1, 16, 16, 16\).*shape \(1, 32, 32, 32\)"):
        split_dataset(cfg, build_modality(cfg.modality), "train")
    cfg = compose(["modality=voxel", "data.source=stream", f"data.root={tmp_path / 'nothing'}"])
    with pytest.raises(PreflightError, match="mmldm prepare"):
        split_dataset(cfg, build_modality(cfg.modality), "train")
