"""Phase-2 training throughput with and without the latent cache, measured in one run.

Without the cache every training item is encoded by the frozen autoencoder
when it is read (:class:`mmldm.training.data.EncodingDataset`); with it, the
dataset is encoded once and phase 2 reads memory-mapped posterior moments
(:class:`mmldm.training.data.LatentCacheDataset`). The two are timed in
alternating rounds of the same number of steps; the report gives the
median steps/s of each and their ratio, plus the one-off encoding time.

    python -m benchmarks.latent_cache                       # voxel 32^3, f=4
    python -m benchmarks.latent_cache --set modality=image --steps 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]


def _steps_per_second(cfg: Any, phase1: Any, dataset: Any, steps: int) -> float:
    """Fit a fresh phase-2 module for ``steps`` steps on ``dataset``; steps/s after the first batch."""
    import lightning as L

    from mmldm.build import build_conditioners, build_denoiser
    from mmldm.training.data import make_loader
    from mmldm.training.phase2 import DiffusionModule

    conditioners = build_conditioners(cfg.conditioner, phase1.modality, phase1.latent_shape)
    denoiser = build_denoiser(cfg.denoiser, phase1.latent_shape, conditioners)
    module = DiffusionModule.from_config(denoiser, conditioners, phase1.latent_shape, cfg.diffusion)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter())

    trainer = L.Trainer(max_steps=steps + 1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
    trainer.fit(module, make_loader(dataset, cfg.data.batch_size, True, drop_last=True, seed=cfg.seed))
    return steps / (times[-1] - times[0])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latent_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed phase-2 steps per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of each variant")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latent_cache")
    args = p.parse_args(argv)

    from mmldm.build import build_autoencoder, build_modality
    from mmldm.configuration import compose
    from mmldm.latents import LatentStats
    from mmldm.pipeline import LatentDiffusion
    from mmldm.training.data import EncodingDataset, LatentCacheDataset, encode_dataset, make_loader

    cfg = compose(["modality=voxel", "trainer=cpu", *args.set])
    modality = build_modality(cfg.modality)
    # throughput does not depend on the weights: a freshly initialized autoencoder stands in for a trained one
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality).eval()
    train = modality.dataset("train")
    stats = LatentStats.measure(autoencoder, make_loader(train, cfg.data.batch_size, False), max_batches=4)
    phase1 = LatentDiffusion(modality, autoencoder, stats, {})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = LatentCacheDataset(encode_dataset(autoencoder, train, Path(tmp), cfg.data.batch_size), stats)
        encode_seconds = time.perf_counter() - start
        uncached = EncodingDataset(train, autoencoder, stats)
        rates: dict[str, list[float]] = {"cache": [], "no_cache": []}
        for _ in range(args.rounds):  # interleaved: the machine's load hits both alike
            rates["no_cache"].append(_steps_per_second(cfg, phase1, uncached, args.steps))
            rates["cache"].append(_steps_per_second(cfg, phase1, cache, args.steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "overrides": ["modality=voxel", *args.set], "items": len(train), "latent_shape": list(phase1.latent_shape),
        "batch_size": cfg.data.batch_size, "steps_per_round": args.steps, "rounds": rates,
        "steps_per_second": med, "ratio_cache_over_no_cache": med["cache"] / med["no_cache"],
        "encode_once_seconds": encode_seconds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    md = (
        "# Latent cache: phase-2 throughput\n\n| variant | steps/s (median) |\n| --- | --- |\n"
        f"| with cache | {med['cache']:.3f} |\n| without cache | {med['no_cache']:.3f} |\n\n"
        f"Ratio with/without: **{result['ratio_cache_over_no_cache']:.1f}x** (target >= 1.5x); "
        f"encoding the {len(train)} training items once took {encode_seconds:.1f} s. "
        f"Latents {phase1.latent_shape}, batch {cfg.data.batch_size}, {args.rounds} interleaved rounds of "
        f"{args.steps} steps. Overrides: `{' '.join(result['overrides'])}`\n"
    )
    (args.out / "results.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
