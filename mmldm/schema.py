"""Structured-config schemas of the core groups (``trainer``, ``data``, ``diffusion``, ``stage``, ...).

YAML options in ``configs/<group>/`` extend these schemas (``defaults: [base_<group>]``),
so a typo in a key or a value of the wrong type fails when the config is
composed, before any work starts. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` shared by both phases.

    Args:
        max_steps: an upper bound on the optimizer steps of every phase (``trainer=quick``
            sets 300); None: each phase runs its own ``phase1.max_steps`` /
            ``diffusion.max_steps`` (or its ``max_minutes``).
        max_minutes: an upper bound on the wall-clock minutes of every phase (``trainer=quick`` sets 4;
            a phase's own ``max_minutes`` applies when smaller); the learning-rate schedule is fitted to
            the steps that fit (:class:`~mmldm.training.callbacks.TimeBudget`). None: no time limit.
        accelerator, devices, num_nodes, strategy, precision: as in Lightning;
            ``strategy: ddp`` on CPU uses the gloo backend. ``precision: auto`` (the default) is
            ``bf16-mixed`` on hardware with native bf16 and ``32-true`` elsewhere
            (:func:`~mmldm.training.trainer.resolve_precision`).
        log_every_n_steps, val_check_interval: Lightning's logging/validation cadence.
        checkpoint_every_n_steps: how often ``last.ckpt`` is refreshed (written to a temporary
            file, then renamed: a kill while saving leaves the previous one intact).
        nonfinite: what a NaN/Inf loss or gradient does: ``error`` stops the run with a message naming
            the step and the loss term; ``skip`` drops that step's update (no weight changes, counted
            in ``train/skipped_steps``) and goes on.
    """

    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    log_every_n_steps: int = 10
    val_check_interval: Optional[int] = None  # steps between validations; None = end of epoch
    limit_val_batches: Optional[int] = 8
    checkpoint_every_n_steps: int = 500
    gradient_clip_val: Optional[float] = 1.0
    enable_progress_bar: bool = True
    deterministic: bool = False
    nonfinite: str = "error"  # error | skip


@dataclass
class DataConfig:
    """Data loading shared by both phases (the modality decides what the data is)."""

    batch_size: int = 16
    num_workers: int = 0
    # batches used to measure the latent statistics after phase 1
    stats_batches: int = 20
    # how phase 2 normalizes latents: per_channel (measured mean/std per channel, the default) |
    # global (one measured mean/std for all channels, as Stable Diffusion's scale factor) | none
    latent_scale: str = "per_channel"


@dataclass
class StageConfig:
    """Which phases a ``train`` run executes."""

    autoencoder: bool = True
    diffusion: bool = True


@dataclass
class AutoencoderTrainingConfig:
    """Phase 1: optimizer and step budget. The loss comes with the autoencoder's config
    (``autoencoder.loss``), since it depends on the autoencoder plugin."""

    lr: float = 1.0e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # LDM uses (0.5, 0.9) with the GAN on
    disc_lr: Optional[float] = None  # None: lr
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "cosine"  # constant | cosine (to 0 at the last step)
    max_steps: int = 2000  # optimizer steps of phase 1 (trainer.max_steps caps them)
    # wall-clock budget of phase 1 (max_steps still ends it earlier); the cosine schedule is
    # fitted to the time from the measured step rate
    max_minutes: Optional[float] = None
    # an exported autoencoder folder to reuse instead of training phase 1
    checkpoint: Optional[str] = None


@dataclass
class DiffusionConfig:
    """Phase 2: the noising process, the loss and the optimizer.

    Args:
        schedule: "linear", "scaled_linear" or "cosine".
        zero_terminal_snr: rescale the schedule to zero SNR at t=T (Lin et al. 2023).
        parameterization: what the denoiser predicts: "eps", "v" or "x0".
        weighting: "uniform" or "min_snr" (Hang et al. 2023, with ``min_snr_gamma``).
        cond_dropout: probability of replacing a condition by the null condition
            in training, for classifier-free guidance.
        ema_decay: decay of the EMA of the denoiser weights used for sampling and export.
        batch_size: batch of phase 2; None takes ``data.batch_size`` (latents are small, so
            phase 2 can afford larger batches than the autoencoder).
    """

    num_timesteps: int = 1000
    schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False
    parameterization: str = "eps"
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    cond_dropout: float = 0.1
    lr: float = 2.0e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    max_steps: int = 2000  # optimizer steps of phase 2 (trainer.max_steps caps them)
    max_minutes: Optional[float] = None  # wall-clock budget of phase 2 (max_steps still ends it earlier)
    # cache latents of the training set once (the phase-2 default)
    latent_cache: bool = True
    batch_size: Optional[int] = None  # None: data.batch_size


@dataclass
class SamplingConfig:
    """What a run samples at its end (the sampler and its steps are the ``sampler`` group)."""

    num_samples: int = 16
    guidance: float = 3.0  # classifier-free guidance weight (1: none)
    seed: int = 0


@dataclass
class RunConfig:
    """The primary ``train`` config (groups are filled by the defaults list)."""

    modality: Any = MISSING
    stage: StageConfig = field(default_factory=StageConfig)
    autoencoder: Any = MISSING
    regularizer: Any = MISSING
    denoiser: Any = MISSING
    conditioner: Any = MISSING
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    phase1: AutoencoderTrainingConfig = field(default_factory=AutoencoderTrainingConfig)
    sample: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0
    # resume from <run dir>/.../last.ckpt when it exists
    resume: bool = True


#: (group, schema) pairs stored as ``base_<group>`` so YAML options can extend them.
SCHEMAS: dict[str, type] = {
    "trainer": TrainerConfig,
    "data": DataConfig,
    "stage": StageConfig,
    "diffusion": DiffusionConfig,
}
