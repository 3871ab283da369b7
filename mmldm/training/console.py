"""What a training run prints: one log line per event, a step progress bar per phase, no dependency noise.

* :func:`quiet_console` (called by ``mmldm train/encode/evaluate``): Lightning installs its own console
  handler on the ``lightning`` logger, so under Hydra's logging every Lightning message printed twice (once
  plain, once with Hydra's timestamp); its handlers are removed and its messages go through the root logger
  (Hydra's console and the run's log file). Lightning's advertisements for its hosted services
  (the "Tip: ... litlogger" lines) and a deprecation warning Lightning's own code triggers under the
  installed torch (``lightning/pytorch/utilities/_pytree.py``) are filtered where they come from.
* :class:`StepProgressBar`: one bar per phase counting optimizer steps (``autoencoder: step 812/1500``,
  rate, ETA), where Lightning's bar counts epochs of an unbounded run ("Epoch 26/-2").
* :func:`describe_model`: the one-line model summary logged instead of Lightning's table (whose FLOPs
  column reads 0 for every model it cannot trace).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn

#: Lightning loggers that get a console handler of their own at import (``lightning/__init__.py``,
#: ``lightning/pytorch/__init__.py``, ``lightning/fabric/__init__.py``).
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class _DropAdvertisements(logging.Filter):
    """Drops Lightning's "Tip: For seamless cloud ..." lines (they advertise litlogger / LitModels) and its
    device inventory ("GPU available: False, used: False", repeated by every Trainer a run creates: the
    run logs the device each phase used once, in its "N steps on cpu ..." line)."""

    DROP = ("Tip: For seamless cloud", "GPU available:", "TPU available:", "HPU available:", "IPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.DROP)


_FILTER = _DropAdvertisements()


def quiet_console() -> None:
    """Route Lightning's log records through the root logger only (when the root logger has handlers, as
    under Hydra), drop its advertisements and silence deprecation noise raised inside Lightning. Idempotent."""
    root_has_handlers = logging.getLogger().hasHandlers()
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root_has_handlers:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # Lightning's own console handlers
                    logger.removeHandler(handler)
            logger.propagate = True
        for target in (logger, *logger.handlers):
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)
    # filters on the logger do not see records of child loggers: the tips come from rank_zero_info
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        child = logging.getLogger(name)
        if _FILTER not in child.filters:
            child.addFilter(_FILTER)
    # lightning.pytorch.utilities._pytree calls a torch API that torch deprecated; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    # phase 2 trains without a validation loader on purpose (its samples are measured after training);
    # Lightning warns that DiffusionModule.validation_step (there for callers who pass one) goes unused
    warnings.filterwarnings("ignore", message=r".*defined a `validation_step` but have no `val_dataloader`",
                            category=Warning)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


def describe_model(module: Any) -> str:
    """``"autoencoder (ConvAutoencoder) 1.92 M parameters"`` for each top-level part of a LightningModule
    that has parameters (the parts of a ModuleDict such as phase 2's denoiser and conditioners each), the
    EMA copy left out; frozen parameters are counted apart."""
    parts = []
    children = []
    for name, child in module.named_children():
        if name == "ema":
            continue
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):  # e.g. phase 2's {denoiser, conditioners}
            children += [(f"{name}.{k}" if isinstance(child, nn.ModuleList) else k, c) for k, c in child.named_children()]
        else:
            children.append((name, child))
    for name, child in children:
        if isinstance(child, nn.ModuleList):
            if not len(child):
                continue
            child_type = ", ".join(type(c).__name__ for c in child)
        else:
            child_type = type(child).__name__
        total = sum(p.numel() for p in child.parameters())
        if not total:
            continue
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        parts.append(f"{name} ({child_type}) {_count(total)} parameters"
                     + ("" if trainable == total else f", {_count(trainable)} trainable"))
    return "; ".join(parts) or f"{type(module).__name__}: no parameters"


class StepProgressBar(TQDMProgressBar):
    """One tqdm bar per phase that counts optimizer steps against ``max_steps`` (refitted by a time budget),
    with the rate, the ETA and the logged losses; the validation bar is Lightning's."""

    BAR_FORMAT = "{desc}: step {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, description: str, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.description = description

    @staticmethod
    def _total(trainer: Any) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def init_train_tqdm(self) -> Any:
        bar = super().init_train_tqdm()
        bar.bar_format = self.BAR_FORMAT
        bar.unit = "step"
        return bar

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=self._total(trainer))
        bar.n = bar.initial = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description_str(self.description, refresh=True)

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        """One bar for the whole phase: epochs do not reset it."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        total = self._total(trainer)
        if bar.total != total:  # a time budget refits max_steps from the measured rate
            bar.total = total
        bar.n = trainer.global_step
        if trainer.global_step % self.refresh_rate == 0 or trainer.global_step == total:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: always "" in mmldm's run directories
        return metrics
