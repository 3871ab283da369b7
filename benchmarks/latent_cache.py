"""Phase-2 training with the latent cache against batched encoding in the training step, measured in one run.

Phase 2 trains on normalized latents of a frozen autoencoder. There are two honest ways to feed it:

- **with the cache** (what ``mmldm train`` does by default): :func:`~mmldm.training.data.encode_dataset`
  encodes the training set once and writes the posterior mean and std; phase 2 reads them memory-mapped
  (:class:`~mmldm.training.data.LatentCacheDataset`) and draws ``z = mean + std * eps``;
- **without it**, as a competent user would write it: the loader yields data-space batches and
  :func:`encode_in_step`'s module encodes the whole batch with the frozen autoencoder inside the training step
  (no gradients), draws ``z ~ q(z|x)`` and normalizes it with the same
  :class:`~mmldm.latents.LatentStats`: the same distribution as the cache's.

Both sides train a fresh phase-2 model (the composed config's denoiser and diffusion settings) at the
phase-2 batch size (``diffusion.batch_size``, else ``data.batch_size``), with ``data.num_workers`` loader
workers (0 unless set) and the same seed, in float32. Throughput does not depend on the weights, so a
freshly initialized autoencoder stands in for a trained one.

Measured, in rounds that alternate which side runs first (the machine's load hits both alike): steps/s
of each side after its first batch (data loading included), and the one-off cost of writing the cache
(encode + write, the way ``mmldm train`` writes it, once per round). The report gives the medians.
Computed from them: the throughput ratio; the end-to-end time of a phase 2 of the preset's length
(``diffusion.max_steps``, capped by ``trainer.max_steps``; 16,000 for the voxel preset):
``encode_once + steps / rate_cache`` with the cache, ``steps / rate_no_cache`` without, and their ratio;
and the break-even step count ``encode_once / (1 / rate_no_cache - 1 / rate_cache)`` beyond which the
cache pays off (about one epoch: the cache encodes each item once, the uncached side once per epoch).

    python -m benchmarks.latent_cache                       # voxel 32^3, f=4
    python -m benchmarks.latent_cache --set modality=image --steps 40
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BatchEncoder:
    """Data-space batch ``x [B, C, *s]`` to normalized latents ``[B, c, *s/f]``, as the cache path makes them.

    ``sample``: draw ``z ~ q(z|x)`` (KL posteriors, the cache's ``mean + std * eps``), else take the mode.
    A plain object rather than a module, so a LightningModule holding it neither trains it nor
    switches it to train mode.
    """

    autoencoder: Any  # the frozen phase-1 Autoencoder
    stats: Any  # its LatentStats
    sample: bool = True

    def __call__(self, x: Any) -> Any:
        import torch

        with torch.no_grad():
            posterior = self.autoencoder.eval().encode(x)
            z = posterior.sample() if self.sample else posterior.mode()
            return self.stats.normalize(z)


@functools.cache
def encode_in_step() -> type:
    """The phase-2 module of the uncached side: a :class:`~mmldm.training.phase2.DiffusionModule` whose
    training step encodes data-space batches ``{"x", "cond"}`` with its ``encoder`` (a :class:`BatchEncoder`)
    and then runs the ordinary step. Built on first use, so importing this module loads neither torch nor
    Lightning. Make one with ``encode_in_step().from_config(...)``, then set ``encoder``.
    """
    from mmldm.training.phase2 import DiffusionModule

    class EncodeInStep(DiffusionModule):
        encoder: BatchEncoder

        def on_fit_start(self) -> None:
            self.encoder.autoencoder.to(self.device)

        def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Any:
            z = self.encoder(batch["x"])
            return super().training_step({"z": z, "cond": batch.get("cond", {})}, batch_idx)

    return EncodeInStep


def phase2_batch_size(cfg: Any) -> int:
    """The batch size ``mmldm train`` uses in phase 2."""
    return int(cfg.diffusion.batch_size or cfg.data.batch_size)


def preset_steps(cfg: Any) -> int:
    """The optimizer steps of the configured phase 2: ``diffusion.max_steps``, capped by ``trainer.max_steps``."""
    steps = int(cfg.diffusion.max_steps)
    return steps if cfg.trainer.max_steps is None else min(steps, int(cfg.trainer.max_steps))


def _module(cfg: Any, phase1: Any, data: Any, encoder: BatchEncoder | None) -> Any:
    """A fresh phase-2 module; with ``encoder``, one that encodes data-space batches in its training step."""
    import torch

    from mmldm.build import build_conditioners, build_denoiser
    from mmldm.training.data import condition_values
    from mmldm.training.phase2 import DiffusionModule

    torch.manual_seed(cfg.seed)  # both sides start from the same weights
    conditioners = build_conditioners(cfg.conditioner, phase1.modality, phase1.latent_shape)
    for c in conditioners:  # as mmldm train does, e.g. a tokenizer learns the captions
        c.fit(condition_values(data, c.key))
    denoiser = build_denoiser(cfg.denoiser, phase1.latent_shape, conditioners)
    cls = DiffusionModule if encoder is None else encode_in_step()
    module = cls.from_config(denoiser, conditioners, phase1.latent_shape, cfg.diffusion)
    if encoder is not None:
        module.encoder = encoder
    return module


def _steps_per_second(cfg: Any, module: Any, data: Any, steps: int) -> float:
    """Fit ``module`` for ``steps + 1`` steps on ``data``; steps/s after the first batch (loading included)."""
    import lightning as L

    from mmldm.training.data import make_loader

    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter())

    loader = make_loader(data, phase2_batch_size(cfg), True, cfg.data.num_workers, drop_last=True, seed=cfg.seed)
    trainer = L.Trainer(max_steps=steps + 1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
    trainer.fit(module, loader)
    return steps / (times[-1] - times[0])


def _write_cache(cfg: Any, autoencoder: Any, train: Any, directory: Path) -> float:
    """Seconds to encode ``train`` and write its cache into ``directory``, as ``mmldm train`` does."""
    from mmldm.training.data import encode_dataset

    start = time.perf_counter()
    encode_dataset(autoencoder, train, directory, cfg.data.batch_size, progress=False, seed=cfg.seed)
    return time.perf_counter() - start


def end_to_end(encode_once: float, rates: Mapping[str, float], steps: int) -> dict[str, Any]:
    """Computed phase-2 wall time of ``steps`` steps on each side, their ratio and the break-even step count.

    ``rates`` holds steps/s under ``"cache"`` and ``"no_cache"``. The break-even count is None when the
    cache is not faster per step (it never pays off).
    """
    seconds = {"cache": encode_once + steps / rates["cache"], "no_cache": steps / rates["no_cache"]}
    saved_per_step = 1 / rates["no_cache"] - 1 / rates["cache"]
    return {
        "steps": steps, "seconds": seconds, "ratio_no_cache_over_cache": seconds["no_cache"] / seconds["cache"],
        "break_even_steps": encode_once / saved_per_step if saved_per_step > 0 else None,
    }


def _round(cfg: Any, phase1: Any, train: Any, sample: bool, steps: int, cache_first: bool) -> dict[str, float]:
    """One round: write a cache (timed: ``encode_once``), then time both sides on it, in the order given."""
    from mmldm.training.data import LatentCacheDataset

    with tempfile.TemporaryDirectory() as tmp:
        out = {"encode_once": _write_cache(cfg, phase1.autoencoder, train, Path(tmp))}
        cache = LatentCacheDataset(Path(tmp), phase1.stats, sample=sample)
        encoder = BatchEncoder(phase1.autoencoder, phase1.stats, sample)
        for side in ("cache", "no_cache") if cache_first else ("no_cache", "cache"):
            data, enc = (cache, None) if side == "cache" else (train, encoder)
            out[side] = _steps_per_second(cfg, _module(cfg, phase1, data, enc), data, steps)
    return out


def _phase1(cfg: Any) -> tuple[Any, Any]:
    """A freshly initialized autoencoder with latent statistics measured on 4 batches (throughput does not
    depend on the weights, so it stands in for a trained one), as a ``LatentDiffusion``; and the training set."""
    import torch

    from mmldm.build import build_autoencoder, build_modality
    from mmldm.latents import LatentStats
    from mmldm.pipeline import LatentDiffusion
    from mmldm.training.data import make_loader

    torch.manual_seed(cfg.seed)
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality).eval()
    train = modality.dataset("train")
    stats = LatentStats.measure(autoencoder, make_loader(train, cfg.data.batch_size, False), max_batches=4)
    return LatentDiffusion(modality, autoencoder, stats, {}), train


def report(r: Mapping[str, Any]) -> str:
    """The markdown of ``results.md``: measured figures first, then what is computed from them."""
    med, e2e = r["steps_per_second"], r["end_to_end"]
    sec, even = e2e["seconds"], e2e["break_even_steps"]
    even_text = f"{math.ceil(even):,} steps" if even is not None else "never (the cache is not faster per step)"
    return (
        "# Latent cache: phase-2 cost with the cache vs batched encoding in the training step\n\n"
        "Measured (median of the rounds):\n\n| figure | value |\n| --- | --- |\n"
        f"| steps/s with the cache | {med['cache']:.3f} |\n"
        f"| steps/s without (whole batch encoded in the training step) | {med['no_cache']:.3f} |\n"
        f"| writing the cache once (encode + write {r['items']} items), s | {r['encode_once_seconds']:.1f} |\n\n"
        f"Computed from them, for a phase 2 of {e2e['steps']:,} steps (`diffusion.max_steps`):\n\n"
        "| figure | value |\n| --- | --- |\n"
        f"| throughput ratio, with / without | **{r['ratio_cache_over_no_cache']:.2f}x** |\n"
        f"| end-to-end with the cache (encode + steps / rate), min | {sec['cache'] / 60:.1f} |\n"
        f"| end-to-end without (steps / rate), min | {sec['no_cache'] / 60:.1f} |\n"
        f"| end-to-end ratio, without / with | **{e2e['ratio_no_cache_over_cache']:.2f}x** |\n"
        f"| the cache pays off after | {even_text} |\n\n"
        f"Latents {r['latent_shape']}, batch {r['batch_size']}, {r['num_workers']} loader workers on both sides, "
        f"seed {r['seed']}, {len(r['rounds']['cache'])} alternating rounds of {r['steps_per_round']} timed steps. "
        f"Overrides: `{' '.join(r['overrides'])}`\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latent_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed phase-2 steps per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of each variant")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latent_cache")
    args = p.parse_args(argv)

    from mmldm.configuration import compose

    cfg = compose(["modality=voxel", "trainer=cpu", *args.set])
    phase1, train = _phase1(cfg)
    sample = cfg.regularizer.name == "kl"  # as mmldm train: posterior samples for KL latents, else the mode
    rounds: dict[str, list[float]] = {"encode_once": [], "cache": [], "no_cache": []}
    for i in range(args.rounds):  # the order flips every round, so neither side always runs first
        for key, value in _round(cfg, phase1, train, sample, args.steps, cache_first=i % 2 == 1).items():
            rounds[key].append(value)
    med = {k: statistics.median(rounds[k]) for k in ("cache", "no_cache")}
    encode_once = statistics.median(rounds["encode_once"])
    result = {
        "overrides": ["modality=voxel", *args.set], "items": len(train), "latent_shape": list(phase1.latent_shape),
        "batch_size": phase2_batch_size(cfg), "num_workers": int(cfg.data.num_workers), "seed": int(cfg.seed),
        "no_cache_variant": "data-space batches encoded as a whole in the training step",
        "steps_per_round": args.steps, "rounds": rounds, "steps_per_second": med, "encode_once_seconds": encode_once,
        "ratio_cache_over_no_cache": med["cache"] / med["no_cache"],
        "end_to_end": end_to_end(encode_once, med, preset_steps(cfg)),
        "computed": ["ratio_cache_over_no_cache", "end_to_end"],  # from the measured medians; the rest is measured
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    md = report(result)
    (args.out / "results.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
