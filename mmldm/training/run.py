"""What ``mmldm train|encode|evaluate`` do with a composed config.

A ``train`` run leaves in its directory::

    autoencoder/   checkpoints/last.ckpt, logs/, export/ (autoencoder + latent statistics),
                   reconstructions/ (inputs beside reconstructions), diagnostics.{json,md}
    latents/       the latent cache of phase 2
    diffusion/     checkpoints/last.ckpt, logs/
    export/        the exported model (LatentDiffusion.from_pretrained)
    samples/       generated samples as the modality's files
    metrics.json   every measured figure
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..build import build_autoencoder, build_conditioners, build_denoiser, build_modality
from ..diagnostics import autoencoder_diagnostics, write_diagnostics
from ..interfaces import Modality
from ..latents import LatentStats
from ..pipeline import LatentDiffusion, sample_conditions
from ..plugins import plugins
from .data import EncodingDataset, LatentCacheDataset, condition_values, encode_dataset, make_loader
from .preflight import check_run
from .trainer import last_checkpoint, make_trainer

log = logging.getLogger("mmldm")


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


PHASE1_KEYS = ("modality", "autoencoder", "regularizer")
PHASE2_KEYS = ("denoiser", "conditioner", "diffusion", "sampler")


def _component_configs(cfg: DictConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}


def _budget(phase: DictConfig, cfg: DictConfig) -> tuple[int, dict[str, Any]]:
    """``max_steps`` and extra ``make_trainer`` arguments of a phase.

    The phase runs its own ``max_steps``, capped by ``trainer.max_steps`` when
    that is set. With ``max_minutes`` (the phase's or ``trainer.max_minutes``,
    whichever is smaller) it stops after that long if the steps are
    not done first: Lightning's ``max_time`` is the hard stop and
    :class:`~mmldm.training.callbacks.TimeBudget` fits ``max_steps``, and with it
    the learning-rate schedule, to the measured step rate.
    """
    steps = int(phase.max_steps)
    if cfg.trainer.max_steps is not None:
        steps = min(steps, int(cfg.trainer.max_steps))
    limits = [m for m in (phase.get("max_minutes"), cfg.trainer.get("max_minutes")) if m is not None]
    if not limits:
        return steps, {}
    minutes = min(limits)
    if minutes <= 0:
        raise ValueError(f"max_minutes must be positive, got {minutes} (phase1/diffusion.max_minutes, trainer.max_minutes)")
    from datetime import timedelta

    from .callbacks import TimeBudget

    return steps, {"callbacks": [TimeBudget(60.0 * minutes, limit=steps)], "max_time": timedelta(minutes=minutes)}


# ---------------------------------------------------------------------------- phase 1
def train_autoencoder(cfg: DictConfig, modality: Modality, run_dir: Path) -> LatentDiffusion:
    """Phase 1: fit the autoencoder, measure latent statistics, diagnose, export (the export is
    written last: ``autoencoder/export/config.yaml`` marks a finished phase 1)."""
    from .phase1 import AutoencoderModule

    root = run_dir / "autoencoder"
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    module = AutoencoderModule.from_config(autoencoder, cfg.phase1, modality.reconstruction_loss)
    dataset = modality.dataset("train")
    train = make_loader(dataset, cfg.data.batch_size, True, cfg.data.num_workers, drop_last=True, seed=cfg.seed,
                        distributed=True)
    val = make_loader(modality.dataset("val"), cfg.data.batch_size, False, cfg.data.num_workers, seed=cfg.seed)
    steps, budget = _budget(cfg.phase1, cfg)
    trainer = make_trainer(cfg.trainer, root, steps, loader=train, dims=modality.dims, **budget)
    trainer.fit(module, train, val, ckpt_path=last_checkpoint(root) if cfg.resume else None, weights_only=True)
    _log_fit("phase 1 (autoencoder)", trainer)
    autoencoder = module.autoencoder.cpu().eval()
    stats = _measure_stats(autoencoder, dataset, cfg)
    pipe = LatentDiffusion(modality, autoencoder, stats, _component_configs(cfg, PHASE1_KEYS))
    if _is_rank_zero():
        diag = autoencoder_diagnostics(autoencoder, stats, modality, val, max_batches=8, seed=cfg.seed)
        write_diagnostics(diag, root)
        batch = next(iter(val))
        with torch.no_grad():
            recon = modality.postprocess(autoencoder(batch["x"][:8]).reconstruction)
        modality.save_reconstructions(batch["x"][:8], recon, root / "reconstructions")
        _update_metrics(run_dir, {"autoencoder": diag, "precision": str(trainer.precision)})
        pipe.save_pretrained(root / "export")
    return pipe


def _log_fit(phase: str, trainer: Any) -> None:
    log.info("%s: %d steps on rank %d of %d process(es), precision %s", phase, trainer.global_step,
             trainer.global_rank, trainer.world_size, trainer.precision)


def _measure_stats(autoencoder: torch.nn.Module, dataset: Any, cfg: DictConfig) -> LatentStats:
    """Latent statistics (``data.latent_scale``: per channel, pooled over channels, or none) from the whole training set's first batches (not a rank's shard), with seeded
    posterior samples: every rank of a multi-process run measures the same numbers."""
    scale = cfg.data.get("latent_scale", "per_channel")  # checked before training (preflight)
    if scale == "none":
        return LatentStats.identity(autoencoder.latent_shape(tuple(dataset[0]["x"].shape))[0])
    loader = make_loader(dataset, cfg.data.batch_size, True, cfg.data.num_workers, drop_last=True, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    return LatentStats.measure(autoencoder, loader, max_batches=cfg.data.stats_batches, generator=generator,
                               global_scale=scale == "global")


def finished_autoencoder(cfg: DictConfig, run_dir: Path) -> LatentDiffusion | None:
    """Phase 1 of an earlier, interrupted invocation of this run (``resume=true``), when it finished."""
    export = run_dir / "autoencoder" / "export"
    if not (cfg.resume and (export / "config.yaml").is_file()):
        return None
    log.info("phase 1 already finished in %s; loading it (resume=false retrains)", export)
    return LatentDiffusion.from_pretrained(export)


def load_autoencoder(cfg: DictConfig) -> LatentDiffusion:
    """Phase 1 from ``phase1.checkpoint`` (an exported folder)."""
    if not cfg.phase1.checkpoint:
        raise ValueError(
            "stage=diffusion (and encode/evaluate) need a trained autoencoder: set "
            "phase1.checkpoint=<run dir>/autoencoder/export (or a full model export)"
        )
    where = Path(cfg.phase1.checkpoint)
    if not (where / "config.yaml").is_file():  # not an mmldm export: a plugin may read its format
        phase1 = plugins().manager.hook.mmldm_load_phase1(path=str(where), modality_cfg=cfg.modality)
        if phase1 is not None:
            return phase1
    return LatentDiffusion.from_pretrained(where)


# ---------------------------------------------------------------------------- phase 2
def latent_dataset(cfg: DictConfig, phase1: LatentDiffusion, run_dir: Path):
    """Training latents: the on-disk cache (default) or encoding on the fly."""
    sample = phase1.config["regularizer"]["name"] == "kl"  # the export's regularizer, not the run config's
    train = phase1.modality.dataset("train")
    if not cfg.diffusion.latent_cache:
        return EncodingDataset(train, phase1.autoencoder, phase1.stats, sample=sample)
    cache = run_dir / "latents"
    if _is_rank_zero() and not (cache / "manifest.json").is_file():
        log.info("caching the latents of %d training items in %s (rank 0)", len(train), cache)
        encode_dataset(phase1.autoencoder, train, cache, batch_size=cfg.data.batch_size, seed=cfg.seed)
    _barrier()
    return LatentCacheDataset(cache, phase1.stats, sample=sample)


def _barrier() -> None:
    """Wait for every rank (when ``torch.distributed`` runs: Lightning's process group outlives ``fit``,
    so the ranks meet here between the phases; its timeout, 30 minutes by default, bounds rank 0's work)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def train_diffusion(cfg: DictConfig, phase1: LatentDiffusion, run_dir: Path) -> LatentDiffusion:
    """Phase 2: fit the denoiser on normalized latents, export, sample, measure."""
    from .phase2 import DiffusionModule

    modality = phase1.modality
    root = run_dir / "diffusion"
    conditioners = build_conditioners(cfg.conditioner, modality, phase1.latent_shape)
    data = latent_dataset(cfg, phase1, run_dir)
    for c in conditioners:  # before the optimizer and the EMA copy exist
        c.fit(condition_values(data, c.key))  # e.g. a tokenizer learns the training captions
    denoiser = build_denoiser(cfg.denoiser, phase1.latent_shape, conditioners)
    module = DiffusionModule.from_config(denoiser, conditioners, phase1.latent_shape, cfg.diffusion)
    loader = make_loader(data, cfg.diffusion.batch_size or cfg.data.batch_size, True, cfg.data.num_workers,
                         drop_last=True, seed=cfg.seed, distributed=True,
                         key="diffusion.batch_size" if cfg.diffusion.batch_size else "data.batch_size")
    steps, budget = _budget(cfg.diffusion, cfg)
    trainer = make_trainer(cfg.trainer, root, steps, loader=loader, limit_val_batches=0,
                           dims=len(phase1.latent_shape) - 1, **budget)
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=last_checkpoint(root) if cfg.resume else None, weights_only=True)
    seconds = time.perf_counter() - start
    _log_fit("phase 2 (diffusion)", trainer)
    configs = {**phase1.config, **_component_configs(cfg, PHASE2_KEYS)}
    ema = module.sampling_model().cpu().eval()  # EMA weights of denoiser and conditioners
    pipe = LatentDiffusion(modality, phase1.autoencoder, phase1.stats, configs, ema["denoiser"], list(ema["conditioners"]))
    if _is_rank_zero():
        log.info("exporting to %s, sampling and measuring (rank 0)", run_dir / "export")
        pipe.save_pretrained(run_dir / "export")
        metrics = sample_and_measure(pipe, cfg, run_dir / "samples")
        metrics["train_seconds"] = seconds
        metrics["steps"] = int(trainer.global_step)
        metrics["precision"] = str(trainer.precision)
        _update_metrics(run_dir, {"diffusion": metrics})
    return pipe


def sample_and_measure(pipe: LatentDiffusion, cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Sample ``cfg.sample.num_samples`` (see :func:`sample_conditions`), save them with their conditions
    (``conditions.json``: classes and captions), and measure them against held-out data."""
    n = cfg.sample.num_samples
    val = pipe.modality.dataset("val")
    cond = sample_conditions(pipe, val, n)
    samples = pipe.sample(n, cond=cond, guidance=cfg.sample.guidance, seed=cfg.sample.seed)
    pipe.modality.save(samples, out, prefix="sample")
    if cond:
        readable = {k: v.tolist() if k == "class" else v for k, v in cond.items() if k in ("class", "text")}
        (Path(out) / "conditions.json").write_text(json.dumps(readable, indent=1))
    labels = cond.get("class") if cond else None
    return {"num_samples": n, **measure_sets(pipe.modality, val, samples, labels, seed=cfg.sample.seed)}


def measure_sets(modality: Modality, val: Any, samples: torch.Tensor, labels: torch.Tensor | None,
                 seed: int = 0) -> dict[str, Any]:
    """The modality's set metrics of ``samples`` against held-out items, at equal sizes with a null.

    Up to ``2 * len(samples)`` held-out items are the real pool, so that two disjoint real subsets of
    the sample count exist (:func:`mmldm.evaluation.generation.modality_set_metrics`: 5 repeated subsets,
    and the same metrics of real vs real, what a perfect generator scores at this size). A smaller
    held-out set lowers the size to half of it, noted in ``generation_note``; below 2 items no null
    exists and the metrics compare all samples with the one real item, as the note says.

    Returns:
        ``{"generation": {metric: mean over repeats}, "generation_sets": {...}}`` (and ``generation_note``).
    """
    from ..evaluation.generation import modality_set_metrics
    from ..evaluation.stats import equal_set_size, means

    n = len(samples)
    items = [val[i] for i in range(min(2 * n, len(val)))]
    real = torch.stack([it["x"] for it in items])
    size = equal_set_size(n, len(real))
    if size < 1:
        return {"generation": modality.generation_metrics(real, samples, labels),
                "generation_note": f"{len(val)} held-out item(s): no real-vs-real null; {n} samples vs {len(real)} real"}
    classes = [it.get("cond", {}).get("class") for it in items]
    real_labels = torch.tensor(classes) if labels is not None and None not in classes else None
    sets = modality_set_metrics(modality, real, samples, labels, real_labels=real_labels, seed=seed)
    out = {"generation": means(sets["generated"]), "generation_sets": sets}
    if size < n:
        out["generation_note"] = (f"the held-out set ({len(val)} items) holds two disjoint subsets of {size} at most: "
                                  f"set metrics compare {size} of the {n} samples with {size} real items")
    return out


def _update_metrics(run_dir: Path, new: dict[str, Any]) -> Path:
    path = Path(run_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(new)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


# ---------------------------------------------------------------------------- verbs
def train(cfg: DictConfig, run_dir: Path) -> None:
    """Both phases (or the one ``stage`` selects)."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    modality = build_modality(cfg.modality)
    check_run(cfg, modality)
    if not cfg.stage.autoencoder:
        phase1 = load_autoencoder(cfg)
    elif (finished := finished_autoencoder(cfg, run_dir)) is not None:
        phase1 = finished
    else:
        phase1 = train_autoencoder(cfg, modality, run_dir)
    if cfg.stage.diffusion:
        train_diffusion(cfg, phase1, run_dir)
    if _is_rank_zero():
        log.info("run directory: %s", run_dir)
        print(f"mmldm: done; results in {run_dir} (metrics.json, export/, samples/)")


def encode(cfg: DictConfig, run_dir: Path) -> None:
    """Cache the training set's latents under ``<run dir>/latents``."""
    phase1 = load_autoencoder(cfg)
    dataset = phase1.modality.dataset("train")
    path = encode_dataset(phase1.autoencoder, dataset, run_dir / "latents", cfg.data.batch_size, seed=cfg.seed)
    print(f"mmldm: latents written to {path}")


def evaluate(cfg: DictConfig, run_dir: Path) -> None:
    """Autoencoder diagnostics on held-out data (and generation metrics for a full model)."""
    phase1 = load_autoencoder(cfg)
    val = make_loader(phase1.modality.dataset("val"), cfg.data.batch_size, False, seed=cfg.seed)
    diag = autoencoder_diagnostics(phase1.autoencoder, phase1.stats, phase1.modality, val, seed=cfg.seed)
    js, md = write_diagnostics(diag, run_dir)
    metrics = {"autoencoder": diag}
    if phase1.denoiser is not None and cfg.stage.diffusion:
        metrics["diffusion"] = sample_and_measure(phase1, cfg, run_dir / "samples")
    _update_metrics(run_dir, metrics)
    print(md.read_text())


@contextlib.contextmanager
def _relaunchable_argv(verb: str) -> Iterator[None]:
    """``sys.argv`` as ``mmldm <verb> <overrides>`` while the verb runs.

    Lightning's DDP launcher starts ranks 1.. by re-running ``sys.argv`` (with
    ``python -m <module>`` or the script path, plus ``hydra.run.dir``); the CLI
    hands Hydra the overrides without the verb, so the verb is put back here.
    """
    import __main__

    saved = sys.argv
    script = getattr(__main__, "__file__", None) if __main__.__spec__ is None else saved[0]
    sys.argv = [script or saved[0], verb, *saved[1:]]
    try:
        yield
    finally:
        sys.argv = saved


def run(verb: str, cfg: DictConfig, run_dir: str | Path) -> None:
    """Dispatch a CLI verb."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _relaunchable_argv(verb):
        {"train": train, "encode": encode, "evaluate": evaluate}[verb](cfg, run_dir)
