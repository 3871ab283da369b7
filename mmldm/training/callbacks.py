"""Lightning callbacks of mmldm's training runs."""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from mmldm.schema import LR_SCHEDULES as SCHEDULES  # one list: the schema validates the same names at composition


def check_schedule(schedule: str) -> None:
    """Raise a ValueError naming the choices when ``schedule`` is not one of :data:`SCHEDULES`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not valid; choose one of: {', '.join(SCHEDULES)}")


def lr_factor(module: L.LightningModule, step: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier of ``step`` (a ``LambdaLR`` factor): linear warm-up over
    ``warmup_steps``, then constant, or cosine decay to 0 at the trainer's last stepping batch.

    The last step is read from the trainer at each call, so a :class:`TimeBudget` that refits
    ``max_steps`` to the measured step rate also refits the decay: a wall-clock budget ends
    with the learning rate near 0, as a step budget does.
    """
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "cosine":
        total = module.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("schedule='cosine' needs a finite run: set trainer max_steps or max_epochs")
        progress = min(1.0, max(0, step - warmup_steps) / max(1, total - warmup_steps))
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def fused_ok(module: L.LightningModule) -> bool:
    """Whether ``module``'s optimizer may be a fused one: fused optimizers unscale gradients
    themselves, so Lightning refuses them under mixed precision (with gradient clipping)."""
    trainer = getattr(module, "_trainer", None)
    return trainer is None or str(trainer.precision).startswith(("32", "64"))


class TimeBudget(L.Callback):
    """Fit ``max_steps`` to a time budget from the measured seconds per step.

    The plan is made at step ``calibrate`` and refreshed at each share of the
    budget in ``checkpoints`` and whenever the run reaches its planned end with
    time left (the machine got faster), each time from the rate since the
    previous refresh, so a run whose speed changes (a shared machine) still
    ends its schedule when its time is up.

    Args:
        seconds (`float`): the training budget (from the start of training).
        skip (`int`): first steps left out of the rate (start-up costs); also the
            fewest steps a refresh measures its rate over.
        calibrate (`int`): step at which ``max_steps`` is first set.
        checkpoints (`tuple[float, ...]`): shares of the budget at which the
            estimate is refreshed (it then includes periodic evaluations).
        margin (`float`): share of the remaining time planned for, so the
            schedule ends before ``max_time`` cuts the run.
        limit (`int`, *optional*): ``max_steps`` is never set above this.
    """

    def __init__(self, seconds: float, skip: int = 5, calibrate: int = 25,
                 checkpoints: tuple[float, ...] = tuple(i / 10 for i in range(1, 10)), margin: float = 0.97,
                 limit: int | None = None) -> None:
        if calibrate <= skip:
            raise ValueError(f"TimeBudget: calibrate={calibrate} must exceed skip={skip}")
        self.seconds, self.skip, self.calibrate, self.margin, self.limit = seconds, skip, calibrate, margin, limit
        self.pending = sorted(checkpoints)
        self.start = self.t_skip = 0.0
        self.mark: tuple[int, float] = (skip, 0.0)  # (step, time) of the last rate measurement
        self.seconds_per_step: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if step == self.skip:
            self.t_skip, self.mark = now, (step, now)
        if step < self.calibrate:
            return
        elapsed = now - self.start
        ended_early = step >= trainer.fit_loop.epoch_loop.max_steps - 1 and elapsed < self.margin * self.seconds
        due = step == self.calibrate or ended_early or (self.pending and elapsed >= self.pending[0] * self.seconds)
        if not due or (self.limit and step >= self.limit - 1):
            return
        while self.pending and elapsed >= self.pending[0] * self.seconds:
            self.pending.pop(0)
        last_step, last_time = self.mark
        if step - last_step >= self.skip:
            self.seconds_per_step = (now - last_time) / (step - last_step)
            self.mark = (step, now)
        elif self.seconds_per_step is None:
            self.seconds_per_step = (now - self.t_skip) / max(1, step - self.skip)
        remaining = max(0.0, self.seconds - elapsed) * self.margin
        planned = step + max(1, int(remaining / self.seconds_per_step))
        trainer.fit_loop.epoch_loop.max_steps = min(planned, self.limit) if self.limit else planned


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python as tensors and plain types
    (so a checkpoint holding them loads with ``torch.load(weights_only=True)``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": [version, list(state), gauss_next],
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))


class ResumeState(L.Callback):
    """Checkpoints what Lightning does not: the data position and the global RNG states.

    With it a run killed at any step and resumed from ``last.ckpt`` continues
    exactly as the uninterrupted run would: the loader's
    :class:`~mmldm.training.order.EpochBatchSampler` is moved to the next unseen
    batch, and the RNG states (noise, timesteps, posterior samples, condition
    dropout) are those the run had after the checkpointed step; they are put
    back when training starts, after Lightning's own restore.

    Args:
        sampler (`EpochBatchSampler`, *optional*): ``loader.batch_sampler`` of the training
            loader (:func:`~mmldm.training.data.make_loader`); without it only the RNG is restored.
    """

    def __init__(self, sampler: Any = None) -> None:
        self.sampler = sampler
        self.batches = 0  # training batches consumed, over all epochs
        self._pending: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])
        self._pending = state_dict.get("rng")
        if self.sampler is not None:
            self.sampler.resume(self.batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


NONFINITE = ("error", "skip")


class NonFiniteLossError(FloatingPointError):
    """A training loss or gradient became NaN/Inf (the message names the step and the loss term)."""


class NonFiniteGuard(L.Callback):
    """Stop (``error``) or skip (``skip``) an optimizer step whose loss or gradients are not finite.

    The loss is checked before the backward pass; the loss terms come from the
    module's ``loss_terms`` dict (set in ``training_step``) so the message names
    the term that broke (``rec``, ``kl``, ``g_loss``, ...). The gradients are
    checked after the backward pass (so, under DDP, after their all-reduce:
    every rank decides alike). A skipped step drops all gradients before the
    optimizer runs, so no weight, moment or EMA moves toward NaN; it still
    counts as a step (``global_step`` and the learning-rate schedule advance)
    and is logged as ``train/skipped_steps``. With ``16-mixed`` precision the
    gradient check is left to the grad scaler, which skips overflowing steps itself.

    Args:
        mode (`str`): ``"error"`` or ``"skip"`` (``trainer.nonfinite``).
    """

    def __init__(self, mode: str = "error", max_skipped_share: float = 0.05, max_consecutive: int = 20) -> None:
        if mode not in NONFINITE:
            raise ValueError(f"trainer.nonfinite={mode!r} is not valid; choose one of: {', '.join(NONFINITE)}")
        if not 0.0 <= max_skipped_share < 1.0:
            raise ValueError(f"trainer.nonfinite_max_share={max_skipped_share!r} is not valid: expected a share "
                             "in [0, 1)")
        self.mode = mode
        self.max_skipped_share, self.max_consecutive = max_skipped_share, max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._bad: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A phase that skipped more than ``max_skipped_share`` of its steps has not trained the model it
        reports: it fails here, before anything is exported."""
        steps = max(1, trainer.global_step)
        if self.skipped > self.max_skipped_share * steps:
            raise NonFiniteLossError(
                f"{self.skipped} of {steps} steps ({self.skipped / steps:.0%}) had a non-finite loss or gradient "
                f"and were skipped, more than trainer.nonfinite_max_share={self.max_skipped_share:g}: the weights "
                "did not train as the run reports; lower the learning rate or check the data"
            )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        terms = {k: float(v) for k, v in (getattr(pl_module, "loss_terms", None) or {}).items()}
        bad = [f"{k}={v}" for k, v in terms.items() if k != "total" and not math.isfinite(v)]
        bad = bad or [f"total={float(loss)}"]
        self._bad = f"non-finite loss at step {trainer.global_step}: {', '.join(bad)}"
        if self.mode == "error":
            raise NonFiniteLossError(
                f"{self._bad} (all terms: {terms or 'n/a'}); lower the learning rate, check the data, or set "
                "trainer.nonfinite=skip to skip such steps"
            )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self._bad is None and params and "16-mixed" not in str(trainer.precision).replace("bf16", ""):
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if not torch.isfinite(norm):
                grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
                names = [n for n, g in grads if not torch.isfinite(g).all()]
                if names:
                    where = f" in {len(names)} parameter(s), first {', '.join(names[:3])}"
                else:  # finite entries whose norm overflows float32
                    name, g = max(grads, key=lambda item: float(item[1].abs().max()))
                    where = f" (norm overflows; largest entry {float(g.abs().max()):.3g} in {name})"
                self._bad = f"non-finite gradients at step {trainer.global_step}{where} (loss was finite)"
                if self.mode == "error":
                    raise NonFiniteLossError(f"{self._bad}; lower the learning rate or set trainer.nonfinite=skip")
        if self._bad is not None:
            for p in params:
                p.grad = None
            self.skipped += 1
            self.consecutive += 1
            rank_zero_warn(f"{self._bad}; step skipped ({self.skipped} so far)")
            if self.consecutive >= self.max_consecutive:
                raise NonFiniteLossError(
                    f"{self._bad}: the last {self.consecutive} steps were all skipped (trainer.nonfinite=skip gives "
                    f"up after {self.max_consecutive} in a row); the model no longer trains: lower the learning "
                    "rate or check the data"
                )
            self._bad = None
        else:
            self.consecutive = 0
        if self.mode == "skip":
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)


class Preempted(SystemExit):
    """A phase stopped by SIGTERM or SIGINT after saving its checkpoint; the exit status is
    ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), the shell's convention for a signalled process."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.message = int(signum), message


class Preemption(L.Callback):
    """SIGTERM and SIGINT stop training at the end of the current step with a checkpoint saved.

    A scheduler that preempts a job (SLURM at its time limit or on ``scancel``, Kubernetes on
    eviction) sends SIGTERM and kills the process some seconds later. While a phase trains,
    this callback takes both signals over: the step in progress finishes, ``last.ckpt`` is
    written at that step (the same point in the step as the periodic checkpoints, so the
    resumed run continues bit-identically) and training stops; the caller then exits with
    ``128 + signal`` (:class:`Preempted`) instead of going on to export. A second Ctrl+C
    aborts at once without saving. Under DDP the ranks agree on stopping (one boolean
    all-reduce per step), so a signal to any rank stops all of them at the same step.

    Args:
        path (`Path`): the checkpoint to write (the phase's ``checkpoints/last.ckpt``).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.received: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in self.SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or self.saved_step is not None:
            return
        self.received = self.received or signal.SIGTERM  # another rank was signalled
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def raise_if_stopped(self, phase: str) -> None:
        """Raise :class:`Preempted` when a signal stopped the phase."""
        if self.received is None:
            return
        name = signal.Signals(self.received).name
        where = (f"checkpoint saved at step {self.saved_step} to {self.path}" if self.saved_step is not None
                 else "no step had finished since the signal, the last periodic checkpoint stands")
        raise Preempted(self.received, f"{phase} stopped by {name}: {where}; run the same command again "
                                       "(same hydra.run.dir, resume=true) to continue")


class RunIdentity(L.Callback):
    """Records what produced a checkpoint (``checkpoint["mmldm_identity"]``): the config values that
    shape the phase and, for phase 2, the digest of the autoencoder whose latents it trains on.
    :func:`mmldm.training.run.check_resumable` compares it with the run that would resume."""

    KEY = "mmldm_identity"

    def __init__(self, identity: Mapping[str, Any]) -> None:
        self.identity = dict(identity)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.KEY] = self.identity


class Periodic(L.Callback):
    """Calls :meth:`record` at the first step after each multiple of ``every`` seconds since training started
    (skipped, not queued, when steps are slower), and once more when training ends unless the last record was
    at the last step. Subclasses keep what they record in :attr:`rows` (each with a ``"step"``)."""

    def __init__(self, every: float) -> None:
        if not every > 0:
            raise ValueError(f"{type(self).__name__}: every must be > 0 seconds, got {every}")
        self.every = float(every)
        self.rows: list[dict[str, Any]] = []
        self.start = self.next = 0.0

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> None:
        raise NotImplementedError

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        self.next = self.start + self.every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if now >= self.next:
            self.record(trainer, pl_module, now)
            self.next = self.start + self.every * (math.floor((now - self.start) / self.every) + 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:
            self.record(trainer, pl_module, time.perf_counter())


class WeightSnapshots(Periodic):
    """Save the weights a phase would export every ``every`` seconds of training, to follow quality over time.

    Phase 2 exports the EMA copy of denoiser and conditioners
    (:meth:`~mmldm.training.phase2.DiffusionModule.sampling_model`); this saves its
    ``state_dict`` to ``out/step_<N>.pt`` at the first step after each multiple of
    ``every`` seconds since training started, and once more when training ends.
    :attr:`rows` (also ``out/index.json``) lists ``{"step", "seconds", "time", "file"}``:
    ``seconds`` since the start of training, ``time`` the wall clock (``time.time()``)
    so a caller can add what ran before training (phase 1, the latent cache). With
    constant learning rate (phase 2's), the snapshot at step N equals the export
    of a run stopped at step N. Written on rank zero only.

    Args:
        every (`float`): seconds of training between snapshots (> 0).
        out (`Path`): the folder the snapshots go to.
        weights (`Callable`, *optional*): ``pl_module -> nn.Module`` whose state is saved
            (default: ``pl_module.sampling_model()``).
    """

    def __init__(self, every: float, out: str | Path, weights: Any = None) -> None:
        super().__init__(every)
        self.out = Path(out)
        self.weights = weights or (lambda module: module.sampling_model())

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> None:
        if not trainer.is_global_zero:
            return
        import json

        self.out.mkdir(parents=True, exist_ok=True)
        name = f"step_{trainer.global_step}.pt"
        state = {k: v.detach().cpu().clone() for k, v in self.weights(pl_module).state_dict().items()}
        torch.save(state, self.out / name)
        self.rows.append({"step": int(trainer.global_step), "seconds": round(now - self.start, 3),
                          "time": time.time(), "file": name})
        (self.out / "index.json").write_text(json.dumps(self.rows, indent=1))
