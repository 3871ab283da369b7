"""What ``mmldm train|encode|evaluate`` do with a composed config.

A ``train`` run leaves in its directory::

    autoencoder/   checkpoints/last.ckpt, logs/, export/ (autoencoder + latent statistics),
                   reconstructions/ (inputs beside reconstructions), diagnostics.{json,md}
    latents/       the latent cache of phase 2
    diffusion/     checkpoints/last.ckpt, logs/
    export/        the exported model (LatentDiffusion.from_pretrained)
    samples/       generated samples as the modality's files
    metrics.json   every measured figure

Artifacts that a later stage consumes record what produced them
(:mod:`mmldm.provenance`) and are checked before use: each ``last.ckpt``
holds the config values that shape its phase (and phase 2's the digest of
the autoencoder whose latents it trains on), a resumed run whose settings
differ stops naming the keys; the latent cache's manifest names the
autoencoder, modality config and seed that encoded it and is encoded again
when they change; exports hold ``provenance.json`` with their weights'
digests. ``.mmldm.lock`` keeps a second process out of the directory
(:class:`~mmldm.training.rundir.RunLock`), and SIGTERM/SIGINT save the
current step and exit ``128 + signal``
(:class:`~mmldm.training.callbacks.Preemption`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..build import build_autoencoder, build_conditioners, build_denoiser, build_modality
from ..diagnostics import autoencoder_diagnostics, write_diagnostics
from ..export import ExportError
from ..interfaces import Modality
from ..latents import LatentStats
from ..pipeline import LatentDiffusion, sample_conditions
from ..plugins import plugins
from ..provenance import differences, read_provenance, weights_digest, write_provenance
from .callbacks import NonFiniteGuard, Preempted, RunIdentity
from .data import (MANIFEST, EncodingDataset, LatentCacheDataset, StreamingDataset, condition_values, encode_dataset,
                   make_loader, split_dataset)
from .preflight import PreflightError, check_run
from .rundir import RunLock, is_launcher_rank_zero
from .trainer import CheckpointError, last_checkpoint, load_checkpoint, make_trainer, preemption

log = logging.getLogger("mmldm")


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


PHASE1_KEYS = ("modality", "autoencoder", "regularizer")
PHASE2_KEYS = ("denoiser", "conditioner", "diffusion", "sampler")


def _component_configs(cfg: DictConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}


#: Keys of a phase's training config that a resumed run may change: the budget (a finished run can
#: be extended), where phase 1 comes from, whether latents are cached.
BUDGET_KEYS = ("max_steps", "max_minutes", "checkpoint", "latent_cache")
#: Optimizer keys added after checkpoints recorded their identity, with the value that behaves as before:
#: left out of the identity at that value, so a checkpoint written before the key existed still resumes.
LATER_KEYS = {"diffusion": {"warmup_steps": 0, "lr_schedule": "constant"}}


def phase_identity(cfg: DictConfig, phase: str, phase1: LatentDiffusion | None = None) -> dict[str, Any]:
    """The settings that shape what ``phase`` (``"autoencoder"`` or ``"diffusion"``) trains: its component
    configs, its optimizer settings (not its budget, :data:`BUDGET_KEYS`), the batch size and seed, and for
    phase 2 the digest and statistics of the autoencoder whose latents it learns (``phase1``)."""
    if phase == "autoencoder":
        keys, training, batch = PHASE1_KEYS, "phase1", cfg.data.batch_size
    else:
        keys, training = ("denoiser", "conditioner"), "diffusion"
        batch = cfg.diffusion.batch_size or cfg.data.batch_size
    config = _component_configs(cfg, keys)
    later = LATER_KEYS.get(training, {})
    config[training] = {k: v for k, v in OmegaConf.to_container(cfg[training], resolve=True).items()
                        if k not in BUDGET_KEYS and not (k in later and v == later[k])}
    config["batch_size"], config["seed"] = int(batch), int(cfg.seed)
    identity: dict[str, Any] = {"phase": phase, "config": config}
    if phase1 is not None:
        identity["autoencoder"] = weights_digest(phase1.autoencoder)
        identity["latent_stats"] = phase1.stats.to_dict()
    return identity


def check_resumable(root: Path, identity: dict[str, Any]) -> str | None:
    """The phase's ``last.ckpt`` under ``root`` when the run resumes from it, after checking that it was
    written with the same :func:`phase_identity`; raises :class:`CheckpointError` naming the file and the
    keys that changed otherwise (a checkpoint from an older mmldm, without the record, is used as is)."""
    path = last_checkpoint(root)
    if path is None:
        return None
    recorded = load_checkpoint(path, mmap=True).get(RunIdentity.KEY)
    if recorded is None:
        return path
    if recorded.get("autoencoder", identity.get("autoencoder")) != identity.get("autoencoder"):
        raise CheckpointError(
            f"{path} trained on the latents of autoencoder {recorded['autoencoder']}, but this run's autoencoder "
            f"is {identity['autoencoder']} (phase 1 was retrained or phase1.checkpoint changed): resuming would pair "
            "the new autoencoder with a denoiser of the old one's latents. Start phase 2 afresh with resume=false, "
            "or use another hydra.run.dir"
        )
    changed = differences(recorded.get("config", {}), identity["config"])
    if changed:
        raise CheckpointError(
            f"{path} was written with other settings than this run's: {'; '.join(changed)}. Rerun with the "
            "checkpoint's settings to resume it, or start afresh with resume=false (its checkpoints are "
            "overwritten) or another hydra.run.dir"
        )
    return path


def _fit(trainer: Any, module: Any, *loaders: Any, ckpt_path: str | None, phase: str) -> None:
    """``trainer.fit``, then :class:`Preempted` when SIGTERM/SIGINT stopped it. A checkpoint from an older
    mmldm that does not fit the model (no identity record to check first) fails in one line naming it."""
    from .console import describe_model

    log.info("%s: %s", phase, describe_model(module))
    try:
        trainer.fit(module, *loaders, ckpt_path=ckpt_path, weights_only=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if ckpt_path and ("size mismatch" in str(e) or "Missing key(s)" in str(e) or "Unexpected key(s)" in str(e)):
            raise CheckpointError(
                f"{ckpt_path} does not fit this run's model ({first}): it was written with other settings. "
                "Rerun with those settings, or start afresh with resume=false or another hydra.run.dir"
            ) from None
        raise
    preemption(trainer).raise_if_stopped(phase)


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
    dataset = split_dataset(cfg, modality, "train")
    train = make_loader(dataset, cfg.data.batch_size, True, cfg.data.num_workers, drop_last=True, seed=cfg.seed,
                        distributed=True)
    val = make_loader(split_dataset(cfg, modality, "val"), cfg.data.batch_size, False, cfg.data.num_workers, seed=cfg.seed)
    steps, budget = _budget(cfg.phase1, cfg)
    identity = phase_identity(cfg, "autoencoder")
    trainer = make_trainer(cfg.trainer, root, steps, loader=train, dims=modality.dims, identity=identity, **budget)
    _fit(trainer, module, train, val, ckpt_path=check_resumable(root, identity) if cfg.resume else None,
         phase="phase 1 (autoencoder)")
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
        _update_metrics(run_dir, {"autoencoder": diag, "precision": str(trainer.precision),
                                  "autoencoder_skipped_steps": _skipped(trainer)})
        # provenance first: config.yaml, written last by save_pretrained, marks a complete export
        write_provenance(root / "export", {"autoencoder": weights_digest(autoencoder), "phase1": identity,
                                           "stats_settings": _stats_settings(cfg)})
        pipe.save_pretrained(root / "export")
    return pipe


def _skipped(trainer: Any) -> int:
    """Steps the phase skipped for a non-finite loss or gradient (``trainer.nonfinite=skip``)."""
    return next((c.skipped for c in trainer.callbacks if isinstance(c, NonFiniteGuard)), 0)


def _log_fit(phase: str, trainer: Any) -> None:
    log.info("%s: %d steps on %s, rank %d of %d process(es), precision %s", phase, trainer.global_step,
             type(trainer.accelerator).__name__.removesuffix("Accelerator").lower() or "cpu",
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
    """Phase 1 of an earlier, interrupted invocation of this run (``resume=true``), when it finished.

    Raises :class:`CheckpointError` naming the keys when the export was trained with other phase-1
    settings than this run's (its ``provenance.json``; component configs for an export without one)."""
    export = run_dir / "autoencoder" / "export"
    if not (cfg.resume and (export / "config.yaml").is_file()):
        return None
    record = read_provenance(export)
    if record is not None and "phase1" in record:
        changed = differences(record["phase1"].get("config", {}), phase_identity(cfg, "autoencoder")["config"])
        # the export's latent statistics were measured with these; a changed data.latent_scale must not reuse them
        changed += differences(record.get("stats_settings", {}), _stats_settings(cfg))
    else:
        changed = differences(_component_configs(OmegaConf.create(_export_config(export)), PHASE1_KEYS),
                              _component_configs(cfg, PHASE1_KEYS))
    if changed:
        raise CheckpointError(
            f"{export} holds the phase 1 of a run with other settings than this one's: {'; '.join(changed)}. "
            "Rerun with those settings to resume, or retrain phase 1 with resume=false (overwrites this run "
            "directory) or use another hydra.run.dir"
        )
    log.info("phase 1 already finished in %s; loading it (resume=false retrains)", export)
    return load_export(export)


def _stats_settings(cfg: DictConfig) -> dict[str, Any]:
    """How a phase-1 export's latent statistics were measured (:func:`_measure_stats`)."""
    return {"data": {"latent_scale": cfg.data.get("latent_scale", "per_channel"),
                     "stats_batches": int(cfg.data.stats_batches)}}


def _export_config(export: Path) -> dict[str, Any]:
    from ..export import load_config

    cfg = load_config(export)
    return {k: cfg[k] for k in PHASE1_KEYS if k in cfg}


def load_export(export: Path) -> LatentDiffusion:
    """``LatentDiffusion.from_pretrained(export)``, checking the weights against the digests its
    ``provenance.json`` records (when it has one): a weights file replaced after the export was written
    (another run's autoencoder copied in) is refused, naming the file."""
    pipe = LatentDiffusion.from_pretrained(export)
    record = read_provenance(export) or {}
    parts = {"autoencoder": pipe.autoencoder, "denoiser": pipe.denoiser}
    for name, module in parts.items():
        if name not in record or module is None:
            continue
        if (digest := weights_digest(module)) != record[name]:
            raise CheckpointError(
                f"{Path(export) / f'{name}.safetensors'} holds weights with digest {digest}, but "
                f"{Path(export) / 'provenance.json'} records {record[name]}: the file was replaced after the export "
                "was written; export the model again"
            )
    return pipe


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
    return load_export(where)


# ---------------------------------------------------------------------------- phase 2
def latent_dataset(cfg: DictConfig, phase1: LatentDiffusion, run_dir: Path, digest: str | None = None):
    """Training latents: the on-disk cache (default) or encoding on the fly. ``digest``: the autoencoder's
    :func:`~mmldm.provenance.weights_digest` when the caller has it (else it is computed)."""
    # posterior samples where the posterior is stochastic (LatentDistribution.is_stochastic), the mode otherwise
    train = split_dataset(cfg, phase1.modality, "train")
    streamed = isinstance(train, StreamingDataset)
    if streamed and not cfg.diffusion.latent_cache:
        raise PreflightError("data.source=stream trains phase 2 on latent shards: set diffusion.latent_cache=true")
    if not cfg.diffusion.latent_cache:
        return EncodingDataset(train, phase1.autoencoder, phase1.stats, sample=True)
    cache = run_dir / "latents"
    if streamed:  # the latent cache of streamed data is written as shards too
        return _latent_shards(cfg, phase1, train, cache, digest)
    if _is_rank_zero():
        producer = latent_producer(phase1, len(train), cfg.seed, digest)
        stale = _stale_cache(cache, producer)
        if stale is not None:
            if stale:
                log.warning("latent cache %s is stale (%s): encoding it again", cache, stale)
            log.info("caching the latents of %d training items in %s (rank 0)", len(train), cache)
            encode_dataset(phase1.autoencoder, train, cache, batch_size=cfg.data.batch_size, seed=cfg.seed,
                           producer=producer)
    _barrier()
    return LatentCacheDataset(cache, phase1.stats, sample=True)


def _latent_shards(cfg: DictConfig, phase1: LatentDiffusion, train: Any, cache: Path, digest: str | None):
    """Phase 2's latents of streamed data: encoded by rank 0 into litdata shards (again when the
    autoencoder, modality config, shards or seed changed), then streamed like the data."""
    from ..streaming import LatentShards, encode_shards, latent_shards_stale, read_manifest

    if _is_rank_zero():
        producer = latent_producer(phase1, len(train), cfg.seed, digest)
        producer["shards"] = (read_manifest(cfg.data.root) or {}).get("producer") or str(cfg.data.root)
        if latent_shards_stale(cache, producer):
            log.info("caching the latents of %d streamed training items as shards in %s (rank 0)", len(train), cache)
            encode_shards(phase1.autoencoder, train, cache, batch_size=cfg.data.batch_size, producer=producer)
    _barrier()
    return LatentShards(cache, phase1.stats, sample=True, seed=cfg.seed)


def latent_producer(phase1: LatentDiffusion, items: int, seed: int, digest: str | None = None) -> dict[str, Any]:
    """What a latent cache's contents depend on: the autoencoder's weights (``digest``, computed when not
    given), the modality config (the data and its preprocessing), the item count and the seed of the items'
    augmentations."""
    return {"autoencoder": digest or weights_digest(phase1.autoencoder), "modality": phase1.config["modality"],
            "items": int(items), "seed": int(seed)}


def _stale_cache(cache: Path, producer: dict[str, Any]) -> str | None:
    """``None`` when ``cache`` holds latents of ``producer``; else why not (``""``: there is no cache)."""
    path = cache / MANIFEST
    if not path.is_file():
        return ""
    try:
        recorded = json.loads(path.read_text()).get("producer")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"{path} is damaged"
    if recorded is None:
        return f"{path} does not record which autoencoder encoded it"
    if recorded.get("autoencoder") != producer["autoencoder"]:
        return f"encoded by autoencoder {recorded.get('autoencoder')}, this run's is {producer['autoencoder']}"
    changed = differences(recorded, producer, limit=4)
    return f"encoded with other settings: {'; '.join(changed)}" if changed else None


def _barrier() -> None:
    """Wait for every rank (when ``torch.distributed`` runs: Lightning's process group outlives ``fit``,
    so the ranks meet here between the phases; its timeout, 30 minutes by default, bounds rank 0's work)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def train_diffusion(cfg: DictConfig, phase1: LatentDiffusion, run_dir: Path,
                    callbacks: Sequence[Any] = ()) -> LatentDiffusion:
    """Phase 2: fit the denoiser on normalized latents, export, sample, measure. ``callbacks``: extra
    Lightning callbacks of the phase-2 trainer (e.g. :class:`~mmldm.training.callbacks.WeightSnapshots`)."""
    from .phase2 import DiffusionModule

    import lightning as L

    modality = phase1.modality
    root = run_dir / "diffusion"
    # phase 2 starts from the seeded RNG state whatever ran before it in this process, so a run stopped
    # between the phases (phase 1 exported, no phase-2 checkpoint yet) sets phase 2 up exactly alike
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    identity = phase_identity(cfg, "diffusion", phase1)  # digests the autoencoder once for the cache and checkpoints
    conditioners = build_conditioners(cfg.conditioner, modality, phase1.latent_shape)
    data = latent_dataset(cfg, phase1, run_dir, identity["autoencoder"])
    for c in conditioners:  # before the optimizer and the EMA copy exist
        c.fit(condition_values(data, c.key))  # e.g. a tokenizer learns the training captions
    denoiser = build_denoiser(cfg.denoiser, phase1.latent_shape, conditioners)
    module = DiffusionModule.from_config(denoiser, conditioners, phase1.latent_shape, cfg.diffusion)
    loader = make_loader(data, cfg.diffusion.batch_size or cfg.data.batch_size, True, cfg.data.num_workers,
                         drop_last=True, seed=cfg.seed, distributed=True,
                         key="diffusion.batch_size" if cfg.diffusion.batch_size else "data.batch_size")
    steps, budget = _budget(cfg.diffusion, cfg)
    budget["callbacks"] = [*budget.get("callbacks", []), *callbacks]
    trainer = make_trainer(cfg.trainer, root, steps, loader=loader, limit_val_batches=0,
                           dims=len(phase1.latent_shape) - 1, identity=identity, **budget)
    start = time.perf_counter()
    _fit(trainer, module, loader, ckpt_path=check_resumable(root, identity) if cfg.resume else None,
         phase="phase 2 (diffusion)")
    seconds = time.perf_counter() - start
    _log_fit("phase 2 (diffusion)", trainer)
    configs = {**phase1.config, **_component_configs(cfg, PHASE2_KEYS)}
    ema = module.sampling_model().cpu().eval()  # EMA weights of denoiser and conditioners
    pipe = LatentDiffusion(modality, phase1.autoencoder, phase1.stats, configs, ema["denoiser"], list(ema["conditioners"]))
    if _is_rank_zero():
        log.info("exporting to %s, sampling and measuring (rank 0)", run_dir / "export")
        write_provenance(run_dir / "export", {
            "autoencoder": identity["autoencoder"], "denoiser": weights_digest(pipe.denoiser),
            "phase1": (read_provenance(run_dir / "autoencoder" / "export") or {}).get("phase1"), "phase2": identity})
        pipe.save_pretrained(run_dir / "export")
        metrics = sample_and_measure(pipe, cfg, run_dir / "samples")
        metrics["train_seconds"] = seconds
        metrics["steps"] = int(trainer.global_step)
        metrics["skipped_steps"] = _skipped(trainer)
        metrics["precision"] = str(trainer.precision)
        _update_metrics(run_dir, {"diffusion": metrics})
    return pipe


def sample_and_measure(pipe: LatentDiffusion, cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Sample ``cfg.sample.num_samples`` (see :func:`sample_conditions`), save them with their conditions
    (``conditions.json``: classes and captions; the preview grid titled with them), and measure them
    against held-out data."""
    from ..preview import save_samples

    n = cfg.sample.num_samples
    val = split_dataset(cfg, pipe.modality, "val")
    cond = sample_conditions(pipe, val, n)
    samples = pipe.sample(n, cond=cond, guidance=cfg.sample.guidance, seed=cfg.sample.seed)
    save_samples(pipe.modality, samples, out, cond=cond)  # the grid titled with each sample's condition
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
    """Merge ``new`` into ``<run dir>/metrics.json`` (written via a temporary file and rename). A file that
    does not parse (truncated by a kill or a full disk) is kept as ``metrics.json.damaged`` with a warning
    naming it, and a new one is started."""
    path = Path(run_dir) / "metrics.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"holds {type(data).__name__}, expected a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            damaged = path.with_name("metrics.json.damaged")
            path.replace(damaged)
            log.warning("%s could not be read (%s); kept as %s, starting a new one", path, e, damaged)
            data = {}
    data.update(new)
    tmp = path.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------- verbs
def train(cfg: DictConfig, run_dir: Path, diffusion_callbacks: Sequence[Any] = ()) -> None:
    """Both phases (or the one ``stage`` selects); ``diffusion_callbacks``: extra Lightning callbacks of
    phase 2 (:func:`train_diffusion`)."""
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
        train_diffusion(cfg, phase1, run_dir, diffusion_callbacks)
    if _is_rank_zero():
        log.info("run directory: %s", run_dir)
        print(f"mmldm: done; results in {run_dir} (metrics.json, export/, samples/)")


def encode(cfg: DictConfig, run_dir: Path) -> None:
    """Cache the training set's latents under ``<run dir>/latents``."""
    phase1 = load_autoencoder(cfg)
    dataset = split_dataset(cfg, phase1.modality, "train")
    if isinstance(dataset, StreamingDataset):
        print(f"mmldm: latents written to {_latent_shards(cfg, phase1, dataset, run_dir / 'latents', None)}")
        return
    path = encode_dataset(phase1.autoencoder, dataset, run_dir / "latents", cfg.data.batch_size, seed=cfg.seed,
                          producer=latent_producer(phase1, len(dataset), cfg.seed))
    print(f"mmldm: latents written to {path}")


def evaluate(cfg: DictConfig, run_dir: Path) -> None:
    """Autoencoder diagnostics on held-out data (and generation metrics for a full model)."""
    phase1 = load_autoencoder(cfg)
    val = make_loader(split_dataset(cfg, phase1.modality, "val"), cfg.data.batch_size, False, seed=cfg.seed)
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
    """Dispatch a CLI verb, holding the run directory's lock (:class:`~mmldm.training.rundir.RunLock`; the
    DDP processes of ranks above 0 share rank 0's).

    Raises:
        SystemExit: ``128 + signal`` when SIGTERM/SIGINT stopped training (the checkpoint was saved first)
            or SIGINT interrupted other work (130); 2 when another process holds the directory, a checkpoint or
            export does not fit the run, or the config does not fit together (one line on stderr and in the log).
    """
    from .console import quiet_console
    from .rundir import RunDirectoryBusy

    quiet_console()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir, " ".join(["mmldm", verb, *sys.argv[1:]])) if is_launcher_rank_zero() else None
    try:
        with lock or contextlib.nullcontext(), _relaunchable_argv(verb):
            {"train": train, "encode": encode, "evaluate": evaluate}[verb](cfg, run_dir)
    except (RunDirectoryBusy, CheckpointError, PreflightError, ExportError) as e:
        # the run cannot start or go on as configured: one line naming the file or key, exit 2 (as a bad override)
        log.error("%s", e)
        print(f"mmldm {verb}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Preempted as e:
        log.warning("%s", e.message)
        print(f"mmldm {verb}: {e.message}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print(f"mmldm {verb}: interrupted (SIGINT) outside training; nothing was saved since the last "
              "checkpoint", file=sys.stderr)
        raise SystemExit(130) from None
