"""Phase 1 of latent diffusion: train the autoencoder (perceptual compression).

:class:`AutoencoderModule` trains any :class:`~mmldm.interfaces.Autoencoder`
with a loss module that follows :class:`Phase1Loss` (the autoencoder plugin's
``AutoencoderLoss``: reconstruction, perceptual, regularizer and PatchGAN
terms). The loss returns one scalar whose single backward pass gives the
autoencoder and the discriminator (the loss module's trainable parameters)
their own gradients, so Lightning's automatic optimization, gradient
clipping, accumulation and mixed precision all apply unchanged, and
``global_step`` counts iterations.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import lightning as L
import torch
from torch import Tensor, nn

from mmldm.interfaces import Autoencoder, AutoencoderOutput
from mmldm.training.callbacks import SCHEDULES, check_schedule, fused_ok, lr_factor

__all__ = ["SCHEDULES", "AutoencoderModule", "Phase1Loss"]


@runtime_checkable
class Phase1Loss(Protocol):
    """What :class:`AutoencoderModule` needs from its loss (an ``nn.Module``).

    ``loss(x, out, step=..., last_layer=...) -> (total, logs)``: the scalar to
    minimize at optimizer step ``step`` (``last_layer`` is the decoder output
    weight, for adaptive GAN weighting) and detached scalars to log.
    ``reconstruction_loss(x, x_rec) -> Tensor``: the scalar validation loss.
    """

    def __call__(
        self, x: Tensor, out: AutoencoderOutput, *, step: int, last_layer: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def reconstruction_loss(self, x: Tensor, x_rec: Tensor) -> Tensor: ...


class AutoencoderModule(L.LightningModule):
    """Lightning module of phase 1.

    Args:
        autoencoder (`Autoencoder`): the model to train, built from config.
        loss (`nn.Module`): a :class:`Phase1Loss`; its trainable parameters
            (a discriminator) join the optimizer as a second parameter group.
        lr (`float`, defaults to 1e-3): Adam learning rate of the autoencoder.
        betas (`tuple[float, float]`): Adam betas (LDM uses ``(0.5, 0.9)`` with the GAN on).
        disc_lr (`float`, *optional*): discriminator learning rate; defaults to ``lr``.
        weight_decay (`float`): Adam's L2 penalty.
        warmup_steps (`int`): linear learning-rate warm-up.
        schedule (`str`): ``constant`` or ``cosine`` (decay to 0 at the trainer's last step).

    Batches are dicts ``{"x": [B, C, *s], "cond": {...}}``. After validation,
    :attr:`last_val` holds the last validation batch's ``"x"`` and
    ``"reconstruction"`` (CPU tensors, raw decoder outputs, e.g. logits for BCE).
    """

    def __init__(
        self,
        autoencoder: Autoencoder,
        loss: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        disc_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: str = "constant",
    ):
        super().__init__()
        if not isinstance(loss, nn.Module) or not isinstance(loss, Phase1Loss):
            raise TypeError(
                f"loss must be an nn.Module with forward(x, out, step=, last_layer=) and "
                f"reconstruction_loss(x, x_rec) (the autoencoder plugin's build_loss), got {type(loss).__name__}"
            )
        check_schedule(schedule)
        self.autoencoder = autoencoder
        self.loss_fn = loss
        self.lr, self.betas, self.disc_lr = lr, tuple(betas), disc_lr
        self.weight_decay, self.warmup_steps, self.schedule = weight_decay, warmup_steps, schedule
        self.last_val: dict[str, Tensor] | None = None
        self.loss_terms: dict[str, Tensor] = {}
        self.save_hyperparameters(ignore=["autoencoder", "loss"])

    @classmethod
    def from_config(cls, autoencoder: Autoencoder, cfg: Any, reconstruction: str = "l1") -> "AutoencoderModule":
        """Build from a :class:`mmldm.schema.AutoencoderTrainingConfig` node; the loss is
        ``autoencoder.make_loss(reconstruction)``."""
        return cls(
            autoencoder, autoencoder.make_loss(reconstruction), cfg.lr, tuple(cfg.betas), cfg.disc_lr,
            cfg.weight_decay, cfg.warmup_steps, cfg.schedule,
        )

    def forward(self, x: Tensor) -> AutoencoderOutput:
        return self.autoencoder(x)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        x = batch["x"]
        out = self.autoencoder(x)
        last_layer = self.autoencoder.last_layer  # declared by Autoencoder (None: no adaptive GAN weight)
        total, logs = self.loss_fn(x, out, step=self.global_step, last_layer=last_layer)
        self.loss_terms = logs  # read by NonFiniteGuard to name a term that turned NaN/Inf
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=x.shape[0])
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Reconstruct through the inference path ``decode(encode(x).mode())``."""
        x = batch["x"]
        x_rec = self.autoencoder.decode(self.autoencoder.encode(x).mode())
        rec = self.loss_fn.reconstruction_loss(x, x_rec)
        self.log("val/rec", rec, batch_size=x.shape[0], prog_bar=True)
        self.log("val/rec_per_element", rec / x[0].numel(), batch_size=x.shape[0])
        self.last_val = {"x": x.detach().cpu(), "reconstruction": x_rec.detach().cpu()}
        return rec

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [{"params": [p for p in self.autoencoder.parameters() if p.requires_grad], "lr": self.lr}]
        disc = [p for p in self.loss_fn.parameters() if p.requires_grad]
        if disc:
            groups.append({"params": disc, "lr": self.disc_lr or self.lr})
        # fused: one kernel for all parameters instead of a Python loop over them (benchmarks/unet_vs_diffusers.py)
        optimizer = torch.optim.Adam(groups, betas=self.betas, weight_decay=self.weight_decay, fused=fused_ok(self))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then constant or cosine decay over the trainer's stepping batches."""
        return lr_factor(self, step, self.warmup_steps, self.schedule)
