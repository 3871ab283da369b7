"""Structured-config schemas of the core groups (``trainer``, ``data``, ``diffusion``, ``stage``, ...)
and the declarative value constraints every schema (plugins' too) uses.

YAML options in ``configs/<group>/`` extend these schemas (``defaults: [base_<group>]``),
so a typo in a key or a value of the wrong type fails when the config is
composed, before any work starts. Values are range-checked at the same time: a
field declares its constraint with :func:`checked` (or a shorthand such as
:func:`positive`, :func:`unit_interval`, :func:`one_of`), and
:func:`mmldm.configuration.validate` checks every composed value against the
schema that typed its node. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: The key of a field's ``metadata`` that holds its :class:`Check`.
CHECK = "mmldm_check"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Check:
    """A constraint on one config value, kept in its dataclass field's metadata.

    ``None`` passes every check (whether a key may be null is the field's type: ``Optional``).
    NaN never passes a numeric check, and Inf only where ``finite=False``.

    Args:
        gt, ge, lt, le: bounds (``>``, ``>=``, ``<``, ``<=``).
        choices: the values allowed (strings compare as given).
        finite: refuse NaN and +-Inf (numbers only).
        multiple_of: an integer the value must be a multiple of.
        odd: the value must be an odd integer.
        each: the value is a list and the constraint applies to every element.
        nonempty: (with ``each``) the list must have at least one element.
        length: (with ``each``) the list must have exactly this many elements.
    """

    gt: Optional[float] = None
    ge: Optional[float] = None
    lt: Optional[float] = None
    le: Optional[float] = None
    choices: Optional[tuple] = None
    finite: bool = True
    multiple_of: Optional[int] = None
    odd: bool = False
    each: bool = False
    nonempty: bool = False
    length: Optional[int] = None

    def _numeric(self) -> bool:
        return any(b is not None for b in (self.gt, self.ge, self.lt, self.le, self.multiple_of)) or self.odd

    def _one(self) -> str:
        """What one value must be, e.g. ``> 0``, ``in [0, 1)``, ``one of: a, b``."""
        if self.choices is not None:
            return "one of: " + ", ".join(str(c) for c in self.choices)
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        high = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None else None
        if low and high:
            text = f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        elif low or high:
            op = {"(": ">", "[": ">=", ")": "<", "]": "<="}[(low or high)[0]]
            text = f"{op} {_num((low or high)[1])}"
        else:
            text = "a finite number" if self.finite else "a number"
        if self.multiple_of is not None:
            text += f" and a multiple of {self.multiple_of}"
        if self.odd:
            text += " and odd"
        return text

    def expected(self, value: Any = None) -> str:
        """What the value must be, as an error message says it (about ``value``, when given)."""
        if not self.each:
            text = self._one()
            bad_float = isinstance(value, float) and not math.isfinite(value)
            return f"a finite number {text}" if bad_float and self._numeric() else text
        what = (f"a list of {self.length} values" if self.length is not None
                else "a non-empty list of values" if self.nonempty else "a list of values")
        return f"{what}, each {self._one()}"

    def _bad_one(self, v: Any) -> bool:
        if v is None:
            return False
        if self.choices is not None:
            return v not in self.choices and str(v) not in {str(c) for c in self.choices}
        if not self._numeric() and not self.finite:
            return False
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return self._numeric()
        if isinstance(v, float) and (math.isnan(v) or (self.finite and math.isinf(v))):
            return True
        bounds = ((self.gt, lambda b: v > b), (self.ge, lambda b: v >= b),
                  (self.lt, lambda b: v < b), (self.le, lambda b: v <= b))
        if not all(ok(b) for b, ok in bounds if b is not None):
            return True
        if self.multiple_of is not None and v % self.multiple_of:
            return True
        return self.odd and v % 2 != 1

    def fails(self, value: Any) -> bool:
        """Whether ``value`` breaks the constraint."""
        if not self.each or value is None:
            return self._bad_one(value)
        if not isinstance(value, (list, tuple, ListConfig)):
            return True
        if (self.nonempty and not len(value)) or (self.length is not None and len(value) != self.length):
            return True
        return any(self._bad_one(v) for v in value)


def checked(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **check: Any) -> Any:
    """A dataclass field with a :class:`Check`: ``checked(16, ge=1)``; a list:
    ``checked(factory=lambda: [1, 2], each=True, ge=1)``."""
    meta = {CHECK: Check(**check)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def positive(default: Any, **kw: Any) -> Any:
    """A number ``> 0`` (and finite)."""
    return checked(default, gt=0, **kw)


def at_least(low: float, default: Any, **kw: Any) -> Any:
    """A number ``>= low``."""
    return checked(default, ge=low, **kw)


def non_negative(default: Any, **kw: Any) -> Any:
    """A number ``>= 0``."""
    return checked(default, ge=0, **kw)


def unit_interval(default: Any, *, open_high: bool = False) -> Any:
    """A probability or decay in ``[0, 1]`` (``[0, 1)`` with ``open_high``)."""
    return checked(default, ge=0, **({"lt": 1} if open_high else {"le": 1}))


def one_of(default: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    return checked(default, choices=tuple(choices))


def finite(default: Any) -> Any:
    """Any finite number (no NaN, no Inf)."""
    return checked(default, finite=True)


#: A seed numpy, torch and Lightning all accept.
SEED_MAX = 2**32 - 1


def seed(default: int = 0) -> Any:
    """A random seed in ``[0, 2**32 - 1]``."""
    return checked(default, ge=0, le=SEED_MAX)


@dataclass(frozen=True)
class Problem:
    """A value that breaks its field's :class:`Check`."""

    key: str
    value: Any
    expected: str


_ABSENT = object()


def _value(node: Any, name: str) -> Any:
    if isinstance(node, DictConfig):
        if name not in node or OmegaConf.is_missing(node, name):
            return _ABSENT
        try:
            return node[name]
        except OmegaConfBaseException:  # an interpolation that does not resolve: Hydra reports it
            return _ABSENT
    return getattr(node, name, _ABSENT)


def _node_type(node: Any) -> type | None:
    if isinstance(node, DictConfig):
        kind = OmegaConf.get_type(node)
        return kind if dataclasses.is_dataclass(kind) else None
    return type(node) if dataclasses.is_dataclass(node) and not isinstance(node, type) else None


def problems(node: Any, schema: type | None = None, path: str = "",
             entry_type: Callable[[str, Any], type | None] | None = None) -> Iterator[Problem]:
    """Every value of ``node`` (a DictConfig or a dataclass instance) that breaks a :class:`Check` of ``schema``.

    Nested nodes are checked against the schema that typed them (a structured
    node's own type: Hydra's ConfigStore types every group's node). Entries of a list node
    whose key is a component kind (``conditioner: [...]``) are typed by
    ``entry_type(kind, entry)``. Any float NaN is a problem, checked or not.
    """
    schema = schema or _node_type(node)
    if schema is None:
        return
    for f in dataclasses.fields(schema):
        value = _value(node, f.name)
        if value is _ABSENT:
            continue
        key = f"{path}{f.name}"
        check: Check | None = f.metadata.get(CHECK)
        if check is not None and check.fails(value):
            yield Problem(key, value, check.expected(value))
        elif isinstance(value, float) and math.isnan(value):
            yield Problem(key, value, "a number (not NaN)")
        if isinstance(value, DictConfig) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            yield from problems(value, None, f"{key}.", entry_type)
        elif isinstance(value, (ListConfig, list)) and entry_type is not None:
            for i, entry in enumerate(value):
                kind = entry_type(f.name, entry) if isinstance(entry, DictConfig) else None
                if kind is not None:
                    yield from problems(entry, kind, f"{key}.{i}.", entry_type)


def show(value: Any) -> str:
    """A config value as a message quotes it (``-1`` rather than ``-1.0``)."""
    if isinstance(value, float) and not math.isnan(value) and not math.isinf(value) and value == int(value):
        return str(int(value))
    if isinstance(value, (ListConfig, DictConfig)):
        return str(OmegaConf.to_container(value))
    return str(value)


def check_fields(obj: Any, owner: str) -> None:
    """Raise ``ValueError`` for the first value of the dataclass ``obj`` that breaks its :class:`Check`
    (for configs built in Python; composed configs are checked by :func:`mmldm.configuration.validate`)."""
    for p in problems(obj):
        raise ValueError(f"invalid value '{show(p.value)}' for config key '{owner}.{p.key}': expected {p.expected}")


# ------------------------------------------------------------------------------------------ choices
#: ``trainer.precision``: ``auto`` (:func:`~mmldm.training.trainer.resolve_precision`) or one of Lightning's.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
              "transformer-engine", "transformer-engine-float16", "32", "16", "bf16", "64")
#: ``trainer.nonfinite`` (:class:`~mmldm.training.callbacks.NonFiniteGuard`).
NONFINITE = ("error", "skip")
#: ``data.latent_scale`` (:data:`mmldm.latents.LATENT_SCALES`).
LATENT_SCALES = ("per_channel", "global", "none")
#: Values of ``data.source``: the modality's in-memory readers, or litdata shards (:mod:`mmldm.streaming`).
DATA_SOURCES = ("memory", "stream")
#: ``phase1.schedule`` and ``diffusion.lr_schedule`` (the learning-rate schedules of both phases' training).
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` shared by both phases.

    Args:
        max_steps: an upper bound (>= 1) on the optimizer steps of every phase (``trainer=quick``
            sets 300); None: each phase runs its own ``phase1.max_steps`` /
            ``diffusion.max_steps`` (or its ``max_minutes``).
        max_minutes: an upper bound (> 0) on the wall-clock minutes of every phase (``trainer=quick`` sets 4;
            a phase's own ``max_minutes`` applies when smaller); the learning-rate schedule is fitted to
            the steps that fit (:class:`~mmldm.training.callbacks.TimeBudget`). None: no time limit.
        accelerator, devices, num_nodes, strategy, precision: as in Lightning;
            ``strategy: ddp`` on CPU uses the gloo backend. ``precision: auto`` (the default) is
            ``bf16-mixed`` on hardware with native bf16 and ``32-true`` elsewhere
            (:func:`~mmldm.training.trainer.resolve_precision`); other values: :data:`PRECISIONS`.
        log_every_n_steps, val_check_interval: Lightning's logging/validation cadence.
        checkpoint_every_n_steps: how often ``last.ckpt`` is refreshed (written to a temporary
            file, then renamed: a kill while saving leaves the previous one intact).
        nonfinite: what a NaN/Inf loss or gradient does: ``error`` stops the run with a message naming
            the step and the loss term; ``skip`` drops that step's update (no weight changes, counted
            in ``train/skipped_steps``) and goes on.
        nonfinite_max_share: with ``skip``, the share of a phase's steps that may be skipped; a phase that
            skipped more (or 20 steps in a row) fails instead of exporting weights that did not train.
    """

    max_steps: Optional[int] = at_least(1, None)
    max_minutes: Optional[float] = positive(None)
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = at_least(1, 1)
    strategy: str = "auto"
    precision: str = one_of("auto", PRECISIONS)
    log_every_n_steps: int = at_least(1, 10)
    val_check_interval: Optional[int] = at_least(1, None)  # steps between validations; None = end of epoch
    limit_val_batches: Optional[int] = non_negative(8)  # 0: no validation
    checkpoint_every_n_steps: int = at_least(1, 500)
    gradient_clip_val: Optional[float] = non_negative(1.0)  # 0 or None: no clipping
    enable_progress_bar: bool = True
    deterministic: bool = False
    nonfinite: str = one_of("error", NONFINITE)  # error | skip
    nonfinite_max_share: float = unit_interval(0.05, open_high=True)


@dataclass
class DataConfig:
    """Data loading shared by both phases (the modality decides what the data is)."""

    batch_size: int = at_least(1, 16)
    num_workers: int = non_negative(0)
    # batches used to measure the latent statistics after phase 1
    stats_batches: int = at_least(1, 20)
    # how phase 2 normalizes latents: per_channel (measured mean/std per channel, the default) |
    # global (one measured mean/std for all channels, as Stable Diffusion's scale factor) | none
    latent_scale: str = one_of("per_channel", LATENT_SCALES)
    # where the items come from: memory (the modality reads its folder into memory; the default, best for
    # data that fits) | stream (litdata shards written by `mmldm prepare`, read from `root`: data larger
    # than memory, sharded over processes and nodes; see docs/distributed.md)
    source: str = one_of("memory", DATA_SOURCES)
    # with source=stream: the folder `mmldm prepare out=...` wrote (or its object-storage URL)
    root: Optional[str] = None


@dataclass
class StageConfig:
    """Which phases a ``train`` run executes."""

    autoencoder: bool = True
    diffusion: bool = True


@dataclass
class AutoencoderTrainingConfig:
    """Phase 1: optimizer and step budget. The loss comes with the autoencoder's config
    (``autoencoder.loss``), since it depends on the autoencoder plugin."""

    lr: float = positive(1.0e-3)
    # LDM uses (0.5, 0.9) with the GAN on
    betas: list[float] = checked(factory=lambda: [0.9, 0.999], each=True, length=2, ge=0, lt=1)
    disc_lr: Optional[float] = positive(None)  # None: lr
    weight_decay: float = non_negative(0.0)
    warmup_steps: int = non_negative(100)
    schedule: str = one_of("cosine", LR_SCHEDULES)  # constant | cosine (to 0 at the last step)
    max_steps: int = at_least(1, 2000)  # optimizer steps of phase 1 (trainer.max_steps caps them)
    # wall-clock budget of phase 1 (max_steps still ends it earlier); the cosine schedule is
    # fitted to the time from the measured step rate
    max_minutes: Optional[float] = positive(None)
    # an exported autoencoder folder to reuse instead of training phase 1
    checkpoint: Optional[str] = None


@dataclass
class DiffusionConfig:
    """Phase 2: the diffusion process, condition dropout and the optimizer.

    Args:
        process: the diffusion process (what the network predicts, the noise schedule, the training
            time distribution and loss weight, the sampling grid): the ``process`` group, stored here
            (``process=flow`` selects one, ``diffusion.process.<key>=...`` sets its keys; see
            :mod:`mmldm.diffusion.config`).
        cond_dropout: probability in [0, 1] of replacing a condition by the null condition
            in training, for classifier-free guidance.
        ema_decay: decay in [0, 1) of the EMA of the denoiser weights used for sampling and export.
        warmup_steps, lr_schedule: linear learning-rate warm-up, then ``constant`` (the default) or
            ``cosine`` decay to 0 at the last step; with ``max_minutes`` the decay is fitted to the
            steps that fit in the time (:class:`~mmldm.training.callbacks.TimeBudget`), so a
            wall-clock budget ends at a low learning rate.
        batch_size: batch of phase 2; None takes ``data.batch_size`` (latents are small, so
            phase 2 can afford larger batches than the autoencoder).
    """

    process: Any = MISSING  # the ``process`` group (package diffusion.process)
    cond_dropout: float = unit_interval(0.1)
    lr: float = positive(2.0e-4)
    weight_decay: float = non_negative(0.0)
    ema_decay: float = unit_interval(0.999, open_high=True)
    warmup_steps: int = non_negative(0)
    # not `schedule`: diffusion.schedule was the beta schedule before it moved to diffusion.process.schedule
    lr_schedule: str = one_of("constant", LR_SCHEDULES)  # constant | cosine (to 0 at the last step)
    max_steps: int = at_least(1, 2000)  # optimizer steps of phase 2 (trainer.max_steps caps them)
    # wall-clock budget of phase 2 (max_steps still ends it earlier)
    max_minutes: Optional[float] = positive(None)
    # cache latents of the training set once (the phase-2 default)
    latent_cache: bool = True
    batch_size: Optional[int] = at_least(1, None)  # None: data.batch_size


@dataclass
class SamplingConfig:
    """What a run samples at its end (the sampler and its steps are the ``sampler`` group)."""

    num_samples: int = at_least(1, 16)
    guidance: float = finite(3.0)  # classifier-free guidance weight (1: none)
    seed: int = seed(0)


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
    # the vocoder `mmldm train-vocoder` trains (it adds +vocoder=<name>); unused by the other verbs
    vocoder: Any = None
    seed: int = seed(0)
    # resume from <run dir>/.../last.ckpt when it exists
    resume: bool = True


#: (group, schema) pairs stored as ``base_<group>`` so YAML options can extend them.
SCHEMAS: dict[str, type] = {
    "trainer": TrainerConfig,
    "data": DataConfig,
    "stage": StageConfig,
    "diffusion": DiffusionConfig,
}
