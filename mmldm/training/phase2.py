"""Phase 2: latent diffusion training as a Lightning module (Rombach et al. 2022, Sec. 3.3)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..diffusion.process import Process, build_process, diffusion_loss
from ..diffusion.sampling import condition, sample_latents, sampler_settings
from ..interfaces import CONDITIONING_KINDS, Conditioner, Conditioning, Denoiser
from .callbacks import check_schedule, fused_ok, lr_factor


def _replace_rows(kept: Conditioning, null: Conditioning, drop: Tensor, key: str) -> Conditioning:
    """Rows of ``kept`` where ``drop [B]`` is True replaced by the rows of ``null``."""
    out = {}
    for kind in CONDITIONING_KINDS:
        a, b = getattr(kept, kind), getattr(null, kind)
        if a is None or b is None:
            if (a is None) != (b is None):
                raise ValueError(f"conditioner '{key}': forward() fills '{kind}' but null() does not (or the reverse)")
            continue
        if a.shape != b.shape:
            raise ValueError(f"conditioner '{key}': null().{kind} has shape {tuple(b.shape)}, forward() "
                             f"{tuple(a.shape)}; they must match for condition dropout")
        out[kind] = torch.where(drop.view(-1, *([1] * (a.ndim - 1))), b.to(a), a)
    return Conditioning(**out)


def ema_warmup_avg_fn(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """EMA update with warm-up for :class:`AveragedModel` (``multi_avg_fn``).

    Update ``n`` uses ``min(decay, (1 + n) / (10 + n))``, as LDM's ``LitEma`` and
    diffusers' ``EMAModel`` do: with a fixed decay of 0.999 the average would
    still hold 0.999^1500 = 22% of the random initialization after 1,500 steps,
    which ruins samples of short runs. torch's ``get_ema_multi_avg_fn`` has no
    warm-up, hence this function.
    """

    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        pairs = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1.0 - d)
        for e, p in zip(ema_params, params):  # integer buffers (counters) are copied
            if not e.is_floating_point():
                e.copy_(p)

    return update


class DiffusionModule(L.LightningModule):
    """Trains a :class:`Denoiser` on normalized latents and samples from it.

    Batches are ``{"z": Tensor [B, c, *s] (normalized latents), "cond": {key: ...}}``.

    Args:
        denoiser (`Denoiser`): the network ``F(x_t, c_noise, conditioning)`` of ``process``.
        conditioners (`Sequence[Conditioner]`): their outputs are merged with :meth:`Conditioning.merge`.
        process (`Process`): the diffusion process (training noise, loss weight, sampling view).
        latent_shape (`Sequence[int]`): ``(c, *s)`` of a latent, for sampling.
        cond_dropout (`Mapping[str, float]`): per conditioner key, the probability that a training sample
            gets the null condition instead (Ho & Salimans 2022), which classifier-free guidance needs.
        lr (`float`): AdamW learning rate. ``weight_decay`` its decay.
        ema_decay (`float`, *optional*): EMA of denoiser and conditioner weights; the EMA copy is what
            :meth:`sample` and export use. None or 0 disables it.
        warmup_steps (`int`): linear learning-rate warm-up (0: none).
        schedule (`str`): ``constant`` or ``cosine`` (decay to 0 at the trainer's last step, refitted
            when a time budget refits the steps).
    """

    def __init__(
        self, denoiser: Denoiser, conditioners: Sequence[Conditioner], process: Process,
        latent_shape: Sequence[int], cond_dropout: Mapping[str, float] | None = None, lr: float = 1e-4,
        weight_decay: float = 0.0, ema_decay: float | None = 0.999, warmup_steps: int = 0,
        schedule: str = "constant",
    ):
        super().__init__()
        check_schedule(schedule)
        self.warmup_steps, self.schedule = warmup_steps, schedule
        self.model = nn.ModuleDict({"denoiser": denoiser, "conditioners": nn.ModuleList(conditioners)})
        self.process, self.latent_shape = process, tuple(latent_shape)
        self.cond_dropout = dict(cond_dropout or {})
        unknown = set(self.cond_dropout) - {c.key for c in conditioners}
        if unknown:
            raise ValueError(f"cond_dropout names unknown conditioner key(s) {sorted(unknown)}; "
                             f"conditioners read {[c.key for c in conditioners]}")
        self.lr, self.weight_decay = lr, weight_decay
        self.loss_terms: dict[str, Tensor] = {}
        self.ema = None
        if ema_decay:
            self.ema = AveragedModel(self.model, multi_avg_fn=ema_warmup_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)

    @classmethod
    def from_config(
        cls, denoiser: Denoiser, conditioners: Sequence[Conditioner], latent_shape: Sequence[int], cfg: Any
    ) -> "DiffusionModule":
        """Build from a :class:`mmldm.schema.DiffusionConfig` node (its ``process`` a registered process's
        config); each conditioner's condition dropout is its own ``dropout`` when set, else ``cfg.cond_dropout``."""
        dropout = {c.key: cfg.cond_dropout if c.dropout is None else c.dropout for c in conditioners}
        return cls(denoiser, conditioners, build_process(cfg.process), latent_shape, dropout, cfg.lr,
                   cfg.weight_decay, cfg.ema_decay, cfg.get("warmup_steps", 0), cfg.get("lr_schedule", "constant"))

    @property
    def denoiser(self) -> Denoiser:
        return self.model["denoiser"]

    def conditioning(self, model: nn.ModuleDict, cond: Mapping[str, Any], batch_size: int,
                     dropout: bool = False) -> Conditioning:
        """Merged conditioning of ``model``'s conditioners (:func:`~mmldm.diffusion.sampling.condition`);
        with ``dropout``, each sample's condition is replaced by the null one with probability
        ``cond_dropout[key]`` (classifier-free guidance training)."""
        if not dropout:
            return condition(list(model["conditioners"]), cond, batch_size)
        out = Conditioning()
        for conditioner in model["conditioners"]:
            part = condition([conditioner], cond, batch_size)
            p = self.cond_dropout.get(conditioner.key, 0.0) if conditioner.key in cond else 0.0
            if p > 0:
                drop = torch.rand(batch_size, device=self.device) < p
                part = _replace_rows(part, conditioner.null(batch_size), drop, conditioner.key)
            out = out.merge(part)
        return out

    def batch_conditions(self, model: nn.ModuleDict, batch: Mapping[str, Any],
                         generator: torch.Generator | None = None) -> dict[str, Any]:
        """The batch's conditions, with those of latent-derived conditioners (:attr:`Conditioner.latent_derived`,
        e.g. inpainting's masked latents) made from the batch's clean latents."""
        cond = dict(batch.get("cond", {}))
        for conditioner in model["conditioners"]:
            if conditioner.latent_derived and conditioner.key not in cond:
                cond[conditioner.key] = conditioner.from_latents(batch["z"], generator)
        return cond

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        z = batch["z"]
        cond = self.batch_conditions(self.model, batch)
        for conditioner in self.model["conditioners"]:  # training-time augmentation (Conditioner.augment)
            if conditioner.key in cond:
                cond[conditioner.key] = conditioner.augment(cond[conditioner.key], z.shape[0])
        cond = self.conditioning(self.model, cond, z.shape[0], dropout=True)
        loss = diffusion_loss(lambda x_t, c_noise: self.denoiser(x_t, c_noise, cond), z, self.process).mean()
        self.loss_terms = {"diffusion": loss.detach()}  # read by NonFiniteGuard
        self.log("train/loss", loss, prog_bar=True, batch_size=z.shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        z = batch["z"]
        model = self.sampling_model()
        gen = torch.Generator(device="cpu").manual_seed(batch_idx)
        cond = self.conditioning(model, self.batch_conditions(model, batch, gen), z.shape[0])
        loss = diffusion_loss(lambda x_t, c_noise: model["denoiser"](x_t, c_noise, cond), z, self.process, gen).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=z.shape[0])
        return loss

    def train(self, mode: bool = True) -> "DiffusionModule":
        """Train mode for the trained weights; the EMA copy stays in eval mode (it is only ever sampled)."""
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        return self

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update: both happen before ``on_train_batch_end``, where
        the checkpoint of that step is written (so a resumed run has the same EMA)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel for all parameters; ~6x faster optimizer step on CPU (benchmarks/unet_vs_diffusers.py)
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, fused=fused_ok(self))
        if self.schedule == "constant" and self.warmup_steps == 0:
            return optimizer  # no scheduler: runs and checkpoints of the constant rate stay as they were
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(self, step, self.warmup_steps, self.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def sampling_model(self) -> nn.ModuleDict:
        """The EMA copy of denoiser and conditioners when EMA is on, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def sample(
        self, n: int, cond: Mapping[str, Any] | None = None, steps: int | None = None,
        sampler: str | Callable[..., Tensor] | None = None, guidance: float = 1.0,
        generator: torch.Generator | None = None, spacing: str | None = None, **sampler_opts: Any,
    ) -> Tensor:
        """Draw ``n`` normalized latents ``[n, c, *s]`` with the EMA weights (through
        :func:`~mmldm.diffusion.sampling.sample_latents`, as the pipeline does).

        Args:
            cond (`Mapping`, *optional*): condition values for the conditioners (``{"class": LongTensor[n]}``);
                missing keys are unconditional.
            steps (`int`, *optional*): sampler steps (default :data:`~mmldm.diffusion.config.DEFAULT_STEPS`).
            sampler (`str | Callable`, *optional*): a registered sampler name or a sampler function
                (default :data:`~mmldm.diffusion.config.DEFAULT_SAMPLER`).
            guidance (`float`): classifier-free guidance scale (1 = no guidance).
            spacing (`str`, *optional*): ``auto`` (the process's default) or one of ``process.spacings``.
            sampler_opts: extra sampler options (``eta`` for DDIM).
        """
        model = self.sampling_model()
        was_training = model.training
        model.eval()
        try:
            settings = sampler_settings(None, sampler, steps, spacing, **sampler_opts)
            return sample_latents(model["denoiser"], list(model["conditioners"]), self.process,
                                  (n, *self.latent_shape), cond, guidance=guidance, generator=generator, **settings)
        finally:
            model.train(was_training)
