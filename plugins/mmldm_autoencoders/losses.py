"""The phase-1 objective of latent diffusion (Rombach et al. 2022, app. G; Esser et al. 2021).

``L = w_rec * L_rec + w_p * L_perc + L_reg + lambda * L_G + L_D`` where every
reconstruction-type term is per sample summed over elements and averaged over
the batch (the convention of the regularizers' losses), ``L_G``/``L_D`` are
PatchGAN terms switched on at ``disc_start``, and ``lambda`` is LDM's
adaptive weight ``||grad L_rec|| / (||grad L_G|| + 1e-4)`` at the decoder's
last layer, clamped to ``[0, 1e4]``, times ``disc_weight``.

The two networks train with one backward pass: the generator's adversarial
term sees the discriminator through detached weights, and the discriminator
sees detached reconstructions, so each network gets exactly its own gradient
(simultaneous updates of both players).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn
from torch.func import functional_call

from mmldm.interfaces import AutoencoderOutput

from .config import AutoencoderLossConfig
from .discriminator import GAN_LOSSES, PatchDiscriminator


def _sum(t: Tensor) -> Tensor:
    return reduce(t, "b ... -> b", "sum")


def _check_unit_targets(x: Tensor, kind: str) -> None:
    if x.min() < 0 or x.max() > 1:
        raise ValueError(
            f"loss.reconstruction={kind} expects targets in [0, 1] (occupancy), got values in "
            f"[{x.min().item():.3g}, {x.max().item():.3g}]; use l1/l2 for signed data"
        )


def l1_loss(x: Tensor, x_rec: Tensor) -> Tensor:
    """``sum |x - x~|`` per sample: ``[B]``."""
    return _sum((x - x_rec).abs())


def l2_loss(x: Tensor, x_rec: Tensor) -> Tensor:
    """``sum (x - x~)^2`` per sample: ``[B]``."""
    return _sum((x - x_rec).pow(2))


def bce_loss(x: Tensor, logits: Tensor) -> Tensor:
    """Binary cross-entropy of decoder logits against occupancy ``x`` in ``[0, 1]``, summed per sample."""
    _check_unit_targets(x, "bce")
    return _sum(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def dice_loss(x: Tensor, logits: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 - (2|P.T| + eps) / (|P| + |T| + eps)`` (Milletari et al. 2016), ``P = sigmoid(logits)``.

    Scaled by the number of elements per sample so that it shares the
    summed-over-elements convention of the other terms.
    """
    _check_unit_targets(x, "dice")
    p = torch.sigmoid(logits)
    dice = (2 * _sum(p * x) + eps) / (_sum(p) + _sum(x) + eps)
    return (1.0 - dice) * x[0].numel()


def bce_dice_loss(x: Tensor, logits: Tensor) -> Tensor:
    """``bce + dice`` (common for sparse occupancy)."""
    return bce_loss(x, logits) + dice_loss(x, logits)


#: ``loss.reconstruction`` name -> per-sample loss ``(x, x_rec) -> [B]``.
RECONSTRUCTION = {"l1": l1_loss, "l2": l2_loss, "bce": bce_loss, "dice": dice_loss, "bce_dice": bce_dice_loss}


def load_perceptual(path: str) -> nn.Module:
    """A frozen perceptual distance ``d(x, x_rec) -> [B]`` (or ``[B, ...]``) saved with TorchScript.

    The file is loaded with ``torch.jit.load`` (no pickled Python code);
    export e.g. an LPIPS network (Zhang et al. 2018) once with ``torch.jit.script``.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"loss.perceptual_weights={path!r} is not a file (expected a TorchScript module)")
    net = torch.jit.load(path, map_location="cpu").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class AutoencoderLoss(nn.Module):
    """Reconstruction, perceptual, regularizer and PatchGAN terms of phase 1.

    Args:
        cfg (`AutoencoderLossConfig`): which terms and weights.
        dims (`int`), in_channels (`int`): shape of the data ``[B, C, *s]`` (for the discriminator).
    """

    def __init__(self, cfg: AutoencoderLossConfig, *, dims: int, in_channels: int):
        super().__init__()
        self.cfg = cfg
        # "auto" is resolved by ConvAutoencoder.make_loss from the modality; alone it means l1
        self.reconstruction = RECONSTRUCTION["l1" if cfg.reconstruction == "auto" else cfg.reconstruction]
        self.perceptual = load_perceptual(cfg.perceptual_weights) if cfg.perceptual_weights else None
        self.discriminator = (
            PatchDiscriminator(dims, in_channels, cfg.disc_channels, cfg.disc_layers) if cfg.disc_weight > 0 else None
        )
        self.d_loss_fn, self.g_loss_fn = GAN_LOSSES[cfg.disc_loss]

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.cfg.disc_start

    def reconstruction_loss(self, x: Tensor, x_rec: Tensor) -> Tensor:
        """Weighted reconstruction plus perceptual term, summed per sample, averaged over the batch."""
        loss = self.cfg.reconstruction_weight * self.reconstruction(x, x_rec)
        if self.perceptual is not None:
            # LDM adds the per-sample distance to every element's loss before summing
            d = reduce(self.perceptual(x, x_rec), "b ... -> b", "mean")
            loss = loss + self.cfg.perceptual_weight * d * x[0].numel()
        return loss.mean()

    def adaptive_weight(self, rec: Tensor, g_loss: Tensor, last_layer: Tensor | None) -> Tensor:
        """``disc_weight * clamp(||grad rec|| / (||grad g|| + 1e-4), 0, 1e4)`` at ``last_layer`` (LDM)."""
        if last_layer is None or not self.cfg.adaptive_weight or not torch.is_grad_enabled():
            return rec.new_tensor(self.cfg.disc_weight)
        rec_grad = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.cfg.disc_weight

    def forward(
        self, x: Tensor, out: AutoencoderOutput, *, step: int, last_layer: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of both networks at optimizer step ``step`` and detached logs.

        Args:
            x (`Tensor`): data ``[B, C, *s]``.
            out (`AutoencoderOutput`): the autoencoder's training output for ``x``.
            last_layer (`Tensor`, *optional*): decoder output weight for the adaptive weight.
        """
        rec = self.reconstruction_loss(x, out.reconstruction)
        total = rec + out.loss
        logs = {"rec": rec.detach(), "reg": out.loss.detach(), **out.logs}
        if self.gan_active(step):
            g_loss = self.g_loss_fn(self._frozen_discriminator(out.reconstruction))
            d_weight = self.adaptive_weight(rec, g_loss, last_layer)
            logits_real = self.discriminator(x.detach())
            logits_fake = self.discriminator(out.reconstruction.detach())
            d_loss = self.d_loss_fn(logits_real, logits_fake)
            total = total + d_weight * g_loss + d_loss
            logs.update(g_loss=g_loss.detach(), d_weight=d_weight.detach(), d_loss=d_loss.detach(),
                        logits_real=logits_real.mean().detach(), logits_fake=logits_fake.mean().detach())
        logs["total"] = total.detach()
        return total, logs

    def _frozen_discriminator(self, x_rec: Tensor) -> Tensor:
        """Discriminator logits whose gradient reaches ``x_rec`` but not the discriminator's weights."""
        state = {n: t.detach() for n, t in self.discriminator.named_parameters()}
        state.update(dict(self.discriminator.named_buffers()))
        return functional_call(self.discriminator, state, (x_rec,))


def build_loss(cfg: AutoencoderLossConfig, *, dims: int, in_channels: int) -> AutoencoderLoss:
    """The phase-1 loss for data ``[B, in_channels, *spatial]`` with ``dims`` spatial axes."""
    return AutoencoderLoss(cfg, dims=dims, in_channels=in_channels)
