"""Phase 1 streamed from litdata shards against the in-memory voxel reader: peak memory and steps/s.

The acceptance line of streaming: a generated dataset of ``--grids`` voxel grids (100,000 at 32^3 by default,
about 3.3 GB as bytes) trains phase 1 from shards (``data.source=stream``) with the process's peak resident
memory under 3 GB, at >= 0.9x the steps/s of the in-memory reader on a dataset that fits
(``--memory-grids`` procedural shapes, the voxel modality's default data path).

1. The grids are written as shards the way ``mmldm prepare`` writes them (:func:`mmldm.streaming.prepare`,
   in parallel workers): synthetic solid ellipsoids, one per index, made when its worker writes it, so the
   dataset never exists in memory. Shards already in ``--shards`` with the same settings are reused.
2. Each side trains phase 1 (the composed config's autoencoder, ``data.batch_size``, ``data.num_workers``)
   in a fresh process, in rounds that alternate which side runs first; steps/s is measured after
   ``--warmup`` steps (data loading included), peak RSS is the process's ``ru_maxrss`` (data, model,
   loader workers not included: with ``--workers 0`` everything is in the measured process).

    python -m benchmarks.streaming                       # 100,000 grids at 32^3: on a quiet machine
    python -m benchmarks.streaming --grids 2000 --steps 20 --memory-grids 500    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
RSS_LIMIT_GB, RATE_FLOOR = 3.0, 0.9


class Ellipsoids:
    """Grid ``i`` of ``n``: a solid axis-aligned ellipsoid in ``[1, R, R, R]``, its centre and radii seeded by ``i``;
    class = which axis is longest. Items are made on access (the "folder" is never held in memory)."""

    def __init__(self, n: int, resolution: int):
        self.n, self.resolution = n, resolution

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        import numpy as np
        import torch

        rng = np.random.default_rng([17, i])
        axis = (np.arange(self.resolution) + 0.5) / self.resolution - 0.5
        centre, radii = rng.uniform(-0.15, 0.15, 3), rng.uniform(0.12, 0.4, 3)
        grids = np.meshgrid(axis, axis, axis, indexing="ij")
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
        return {"x": torch.from_numpy(inside[None].astype(np.float32)), "cond": {"class": int(np.argmax(radii))}}


class SyntheticVoxels:
    """What :func:`mmldm.streaming.prepare` reads of a modality: the ellipsoids as a voxel dataset (1% held out)."""

    name = "voxel"

    def __init__(self, n: int, resolution: int):
        self.n, self.resolution = n, resolution
        self.sample_shape = (1, resolution, resolution, resolution)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def dataset(self, split: str) -> Any:
        n_val = max(1, self.n // 100)
        return Ellipsoids(n_val if split == "val" else self.n - n_val, self.resolution)


def write_shards(n: int, resolution: int, out: Path, workers: int) -> dict[str, Any]:
    from mmldm.streaming import prepare

    start = time.perf_counter()
    report = prepare(SyntheticVoxels(n, resolution), {"synthetic": "ellipsoids", "grids": n, "resolution": resolution},
                     out, workers=workers)
    return {**report, "wall_seconds": round(time.perf_counter() - start, 1)}


def overrides(args: argparse.Namespace, side: str) -> list[str]:
    data = ["data.source=stream", f"data.root={args.shards}"] if side == "stream" else []
    return ["modality=voxel", f"modality.resolution={args.resolution}", f"modality.num_shapes={args.memory_grids}",
            f"data.batch_size={args.batch}", f"data.num_workers={args.workers}", "trainer.enable_progress_bar=false",
            f"trainer.accelerator={args.accelerator}", *data, *args.set]


def worker(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """Train phase 1 for ``warmup + steps`` steps in this process; steps/s after the warmup and peak RSS."""
    import lightning as L

    from mmldm.build import build_autoencoder, build_modality
    from mmldm.configuration import compose
    from mmldm.training.data import make_loader, split_dataset
    from mmldm.training.phase1 import AutoencoderModule
    from mmldm.training.trainer import make_trainer

    class Times(L.Callback):
        def __init__(self):
            self.at: list[float] = []

        def on_train_batch_end(self, *_: Any) -> None:
            self.at.append(time.perf_counter())

    cfg = compose(overrides(args, side))
    L.seed_everything(cfg.seed, verbose=False)
    modality = build_modality(cfg.modality)
    dataset = split_dataset(cfg, modality, "train")
    loader = make_loader(dataset, cfg.data.batch_size, True, cfg.data.num_workers, drop_last=True, seed=cfg.seed,
                         distributed=True)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    module = AutoencoderModule.from_config(autoencoder, cfg.phase1, modality.reconstruction_loss)
    times = Times()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg.trainer, Path(tmp), args.warmup + args.steps, callbacks=[times], loader=loader,
                               limit_val_batches=0)
        trainer.fit(module, loader)
    measured = times.at[args.warmup:]
    return {"side": side, "items": len(dataset), "steps": len(measured) - 1,
            "steps_per_s": (len(measured) - 1) / (measured[-1] - measured[0]),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def run_side(args: argparse.Namespace, side: str, argv: Sequence[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.streaming", *argv, "--worker", side], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "MMLDM_CACHE": str(args.cache)})
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, default=100_000, help="grids written as shards and streamed (default 100000)")
    p.add_argument("--memory-grids", type=int, default=4000,
                   help="procedural shapes the in-memory side reads (a dataset that fits; default 4000)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=16, help="data.batch_size of both sides")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers of both sides")
    p.add_argument("--steps", type=int, default=60, help="measured steps per side and round")
    p.add_argument("--warmup", type=int, default=5, help="steps before the measurement starts")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating which side runs first")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--prepare-workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--shards", type=Path, default=None, help="shard folder (kept and reused; default: under --work)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mmldm_streaming_benchmark",
                   help="folder of the shards and the in-memory side's voxel cache")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "streaming")
    p.add_argument("--set", action="append", default=[], help="extra config override of both sides (repeatable)")
    p.add_argument("--worker", choices=("memory", "stream"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shards = args.shards or args.work / f"shards-{args.grids}-{args.resolution}"
    args.cache = args.work / "cache"
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return {}
    shards = write_shards(args.grids, args.resolution, args.shards, args.prepare_workers)
    rows: dict[str, list] = {"memory": [], "stream": []}
    for r in range(args.rounds):
        for side in (("memory", "stream") if r % 2 == 0 else ("stream", "memory")):
            rows[side].append(run_side(args, side, argv))
            print(f"round {r + 1} {side}: {rows[side][-1]['steps_per_s']:.2f} steps/s, "
                  f"peak RSS {rows[side][-1]['peak_rss_gb']:.2f} GB", flush=True)
    rate = {s: statistics.median(x["steps_per_s"] for x in v) for s, v in rows.items()}
    rss = {s: max(x["peak_rss_gb"] for x in v) for s, v in rows.items()}
    result = {"grids": args.grids, "resolution": args.resolution, "shard_bytes": shards["bytes"],
              "prepare_seconds": shards["wall_seconds"], "memory_items": rows["memory"][0]["items"],
              "batch": args.batch, "workers": args.workers, "rounds": rows, "steps_per_s": rate, "peak_rss_gb": rss,
              "rate_ratio": rate["stream"] / rate["memory"],
              "passes": {"rss": rss["stream"] < RSS_LIMIT_GB, "rate": rate["stream"] / rate["memory"] >= RATE_FLOOR}}
    table = "\n".join([
        "| side | items | steps/s (median) | peak RSS (GB) |", "| --- | ---: | ---: | ---: |",
        f"| in memory | {result['memory_items']:,} | {rate['memory']:.2f} | {rss['memory']:.2f} |",
        f"| streamed | {args.grids:,} ({shards['bytes'] / 1e9:.2f} GB of shards) | {rate['stream']:.2f} | "
        f"{rss['stream']:.2f} |", "",
        f"streamed / in memory steps/s: {result['rate_ratio']:.2f} (acceptance >= {RATE_FLOOR}); streamed peak RSS "
        f"{rss['stream']:.2f} GB (acceptance < {RSS_LIMIT_GB} GB); prepare {shards.get('seconds')} s"])
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(table + "\n")
    return result


if __name__ == "__main__":
    main()
