"""Building a ``lightning.Trainer`` from the ``trainer`` config group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def trainer_kwargs(cfg: Any, max_steps: int | None = None) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments from a :class:`mmldm.schema.TrainerConfig` node."""
    t = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(vars(cfg))
    return {
        "max_steps": next((m for m in (max_steps, t["max_steps"]) if m is not None), -1),  # -1: no limit
        "accelerator": t["accelerator"],
        "devices": t["devices"],
        "num_nodes": t["num_nodes"],
        "strategy": t["strategy"],
        "precision": t["precision"],
        "log_every_n_steps": t["log_every_n_steps"],
        "val_check_interval": t["val_check_interval"],
        "check_val_every_n_epoch": None if t["val_check_interval"] else 1,
        "limit_val_batches": t["limit_val_batches"],
        "gradient_clip_val": t["gradient_clip_val"],
        "enable_progress_bar": t["enable_progress_bar"],
        "deterministic": t["deterministic"],
    }


def make_trainer(cfg: Any, root: Path, max_steps: int | None = None, callbacks: list | None = None, **overrides: Any):
    """A Trainer writing checkpoints (``checkpoints/last.ckpt``) and CSV logs under ``root``.

    Args:
        cfg: the ``trainer`` config node.
        root (`Path`): the phase's directory inside the run directory.
        max_steps (`int`, *optional*): the phase's steps (else ``cfg.max_steps``, else unlimited).
        callbacks (`list`, *optional*): extra Lightning callbacks.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    root = Path(root)
    kwargs = trainer_kwargs(cfg, max_steps)
    every = cfg.checkpoint_every_n_steps if hasattr(cfg, "checkpoint_every_n_steps") else cfg["checkpoint_every_n_steps"]
    checkpoint = ModelCheckpoint(
        dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=every, save_on_train_epoch_end=True
    )
    kwargs.update(overrides)
    return L.Trainer(
        default_root_dir=str(root),
        logger=CSVLogger(str(root), name="logs", version=""),
        callbacks=[checkpoint, *(callbacks or [])],
        **kwargs,
    )


def last_checkpoint(root: Path) -> str | None:
    """``<root>/checkpoints/last.ckpt`` if a previous run of this phase left one."""
    path = Path(root) / "checkpoints" / "last.ckpt"
    return str(path) if path.is_file() else None
