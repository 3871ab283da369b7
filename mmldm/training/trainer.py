"""Building a ``lightning.Trainer`` from the ``trainer`` config group, and its checkpoint files.

Checkpoints are written atomically (a temporary file in the same folder,
flushed to disk, then ``os.replace``), so a run killed while saving keeps its
previous ``last.ckpt``. They are read with ``torch.load(weights_only=True)``:
a checkpoint holds tensors and plain Python values only, and a file that
would run code when unpickled is refused with :class:`CheckpointError`
naming it.
"""

from __future__ import annotations

import functools
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

LAST = "last.ckpt"


class CheckpointError(RuntimeError):
    """A training checkpoint cannot be used (the message names the file and what to do)."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves and ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while saving
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, "cpu" if map_location is None else map_location)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    ``mmap`` maps the tensors from the file instead of reading them (to look at a few keys).
    Raises :class:`CheckpointError` for a missing, truncated or corrupted file
    and for one holding objects other than tensors and plain values (a pickle
    that would import or call code is refused, never executed).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain values, which could run "
            f"code when unpickled ({str(e).splitlines()[0]}); mmldm checkpoints never do. Delete the file or "
            "start the run with resume=false"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupted: {type(e).__name__}: {str(e).splitlines()[0]}); "
            "delete it to restart the phase, or start the run with resume=false"
        ) from None


def resolve_precision(precision: str, accelerator: str = "auto", dims: int | None = None) -> str:
    """``trainer.precision``: ``auto`` becomes ``bf16-mixed`` where the hardware computes in bf16 natively
    (CUDA GPUs that support it; CPUs with AVX512-BF16 or AMX), else ``32-true``; other values pass through.

    bf16 keeps float32's exponent range, so unlike ``16-mixed`` it needs no loss scaling; weights,
    optimizer state, norms and losses stay float32 under autocast. On the CPU, ``auto`` also checks
    that bf16 convolutions of ``dims`` spatial dims get the right weight gradients
    (:func:`bf16_conv_gradients_ok`): with torch 2.11's oneDNN, 3D convolutions on 2^3 grids (the
    bottom of a voxel U-Net) got non-finite or 100%-off gradients under bf16, so such runs stay
    float32. ``dims=None`` (a caller that does not know its model) takes bf16 only if 1, 2 and 3 all pass.
    ``python -m benchmarks.precision`` measures both the speed and this check.
    """
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if accelerator in ("cpu", "auto"):
        # torch.cpu's capability probes (no public API answers "native bf16 on this CPU")
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
            getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        checked = (1, 2, 3) if dims is None else (dims,)
        return "bf16-mixed" if native and all(bf16_conv_gradients_ok(d) for d in checked) else "32-true"
    return "32-true"


@functools.lru_cache(maxsize=None)
def bf16_conv_gradients_ok(dims: int, tolerance: float = 0.05) -> bool:
    """Whether bf16 autocast gives a ``dims``-d convolution's weight gradient within ``tolerance``
    (relative to its largest entry) of float32's on this CPU, on the grid sizes a U-Net's bottom
    levels have (:func:`bf16_conv_gradient_errors`). Under a second; cached per process.

    A check rather than a list of known-bad versions: the kernels differ by torch version and CPU.
    """
    return all(err <= tolerance for err in bf16_conv_gradient_errors(dims).values())


def bf16_conv_gradient_errors(dims: int, sides: tuple[int, ...] = (2, 4, 8)) -> dict[int, float]:
    """``{side: error}``: the largest deviation of a bf16-autocast weight gradient from float32's, relative
    to the float32 gradient's largest entry (``inf`` when not finite), over the two convolutions a U-Net
    runs on ``side`` cells per axis (128 -> 128 channels, batch 4): a 3-conv, and the transposed
    convolution :func:`mmldm.nn.upsample_conv` computes nearest x2 + 3-conv as. bf16 rounding alone gives
    about 0.004."""
    import torch

    from mmldm.nn import upsample_conv

    conv_cls = getattr(torch.nn, f"Conv{dims}d")
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        conv = conv_cls(128, 128, 3, padding=1)
    ops = ((conv, 1), (lambda x: upsample_conv(x, conv.weight, conv.bias, "transposed"), 2))  # (op, output scale)
    errors = {}
    for side in sides:
        x = torch.randn(4, 128, *[side] * dims, generator=gen)
        for op, scale in ops:
            grad_out = torch.randn(4, 128, *[side * scale] * dims, generator=gen)
            grads = []
            for bf16 in (False, True):
                conv.zero_grad(set_to_none=True)
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16, cache_enabled=False):
                    y = op(x)
                y.float().backward(grad_out)
                grads.append(conv.weight.grad.clone())
            reference, got = grads
            err = float((got - reference).abs().max() / reference.abs().max()) if torch.isfinite(got).all() \
                else float("inf")
            errors[side] = max(errors.get(side, 0.0), err)
    return errors


def trainer_kwargs(cfg: Any, max_steps: int | None = None, dims: int | None = None) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments from a :class:`mmldm.schema.TrainerConfig` node; ``dims``: spatial dims
    of the model's convolutions, for ``precision: auto`` (:func:`resolve_precision`)."""
    t = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(vars(cfg))
    return {
        "max_steps": next((m for m in (max_steps, t["max_steps"]) if m is not None), -1),  # -1: no limit
        "accelerator": t["accelerator"],
        "devices": t["devices"],
        "num_nodes": t["num_nodes"],
        "strategy": t["strategy"],
        "precision": resolve_precision(t["precision"], t["accelerator"], dims),
        "log_every_n_steps": t["log_every_n_steps"],
        "val_check_interval": t["val_check_interval"],
        "check_val_every_n_epoch": None if t["val_check_interval"] else 1,
        "limit_val_batches": t["limit_val_batches"],
        "gradient_clip_val": t["gradient_clip_val"],
        "enable_progress_bar": t["enable_progress_bar"],
        # the run logs a one-line model summary (console.describe_model) instead of Lightning's table
        "enable_model_summary": False,
        "deterministic": t["deterministic"],
    }


def make_trainer(cfg: Any, root: Path, max_steps: int | None = None, callbacks: list | None = None,
                 loader: Any = None, dims: int | None = None, identity: dict[str, Any] | None = None,
                 **overrides: Any):
    """A Trainer writing checkpoints (``checkpoints/last.ckpt``) and CSV logs under ``root``.

    Args:
        cfg: the ``trainer`` config node.
        root (`Path`): the phase's directory inside the run directory.
        max_steps (`int`, *optional*): the phase's steps (else ``cfg.max_steps``, else unlimited).
        callbacks (`list`, *optional*): extra Lightning callbacks.
        loader (`DataLoader`, *optional*): the training loader from
            :func:`~mmldm.training.data.make_loader`; checkpoints then record its position
            (:class:`~mmldm.training.callbacks.ResumeState`), so a resumed run continues the data order.
        dims (`int`, *optional*): spatial dims of the model's convolutions (``precision: auto`` checks them).
        identity (`dict`, *optional*): what produced the phase's checkpoints, recorded in each
            (:class:`~mmldm.training.callbacks.RunIdentity`).

    SIGTERM and SIGINT during ``fit`` save ``last.ckpt`` at the current step and stop training
    (:class:`~mmldm.training.callbacks.Preemption`; find it with :func:`preemption`).

    Lightning's distributed sampler injection is off: :func:`~mmldm.training.data.make_loader`
    shards the training data over the ranks itself; evaluation loaders read all items on every rank.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .callbacks import NonFiniteGuard, Preemption, ResumeState, RunIdentity
    from .data import data_position

    root = Path(root)
    kwargs = trainer_kwargs(cfg, max_steps, dims)
    every = _get(cfg, "checkpoint_every_n_steps", 500)
    checkpoint = ModelCheckpoint(
        dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=every,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    guards = [NonFiniteGuard(_get(cfg, "nonfinite", "error"), cfg.nonfinite_max_share),
              ResumeState(data_position(loader))]
    if identity is not None:
        guards.append(RunIdentity(identity))
    kwargs.update(overrides)
    if kwargs.get("enable_progress_bar"):
        from .console import StepProgressBar

        callbacks = [*(callbacks or []), StepProgressBar(root.name)]
    return L.Trainer(
        default_root_dir=str(root),
        logger=CSVLogger(str(root), name="logs", version=""),
        # Preemption last: its checkpoint holds the other callbacks' state after this step
        callbacks=[checkpoint, *guards, *(callbacks or []), Preemption(root / "checkpoints" / LAST)],
        plugins=[SafeCheckpointIO()],
        use_distributed_sampler=False,
        **kwargs,
    )


def preemption(trainer: Any) -> Any:
    """The :class:`~mmldm.training.callbacks.Preemption` callback of a :func:`make_trainer` trainer."""
    from .callbacks import Preemption

    return next(c for c in trainer.callbacks if isinstance(c, Preemption))


def _get(cfg: Any, key: str, default: Any) -> Any:
    return cfg.get(key, default) if isinstance(cfg, (dict, DictConfig)) else getattr(cfg, key, default)


def last_checkpoint(root: Path) -> str | None:
    """``<root>/checkpoints/last.ckpt`` if a previous run of this phase left one (Lightning then reads
    it through :class:`SafeCheckpointIO`: a damaged or unsafe file stops the run with :class:`CheckpointError`)."""
    path = Path(root) / "checkpoints" / LAST
    return str(path) if path.is_file() else None
