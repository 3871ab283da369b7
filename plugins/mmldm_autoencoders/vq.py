"""Vector-quantization regularizer (VQ-VAE, van den Oord et al. 2017, arXiv 1711.00937).

Options as used by VQGAN / LDM: straight-through gradients, commitment weight
``beta``, EMA codebook updates (Razavi et al. 2019, arXiv 1906.00446),
restarts of dead codes from encoder outputs (Dhariwal et al. 2020, Jukebox,
arXiv 2005.00341), factorized lookup in a projected space (Yu et al. 2022,
ViT-VQGAN) and LDM's "quantizer in the decoder" variant, where diffusion sees
the pre-quantization latent and :meth:`decoder_input` quantizes.

The EMA statistics and dead-code restarts use the local batch only; under
data parallelism each process updates its copy from its own shard.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from mmldm.distributions import DeterministicLatent
from mmldm.interfaces import Regularizer, RegularizerOutput

from .config import VQRegularizerConfig


class VQRegularizer(Regularizer):
    """Nearest-neighbour quantization of every latent position.

    Args:
        latent_channels (`int`): ``c``; the encoder emits ``[B, c, *s]``.
        codebook_size (`int`): number of codes ``K``.
        codebook_dim (`int`, *optional*): lookup dimension; when it differs
            from ``c`` the latent is projected in and out linearly.
        beta (`float`): commitment weight in ``||sg[q] - e||^2 * beta + ||q - sg[e]||^2``.
        weight (`float`): multiplies the whole VQ loss, which is summed over
            latent elements and averaged over the batch.
        ema (`bool`), ema_decay (`float`): codebook as an exponential moving
            average of its assigned encoder outputs (the codebook term is then dropped).
        dead_code_threshold (`float`), usage_decay (`float`): a code whose EMA
            hit count per batch drops below the threshold is reset to a random
            encoder output of the batch; 0 turns restarts off.
        quantize_in_decoder (`bool`): :meth:`distribution` returns the
            pre-quantization latent and :meth:`decoder_input` quantizes it.
    """

    encoder_channel_factor = 1

    def __init__(
        self, latent_channels: int, codebook_size: int = 1024, codebook_dim: int | None = None,
        beta: float = 0.25, weight: float = 1.0, ema: bool = False, ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0, usage_decay: float = 0.99, quantize_in_decoder: bool = False,
    ):
        super().__init__()
        dim = codebook_dim or latent_channels
        self.latent_channels, self.codebook_size, self.beta, self.weight = latent_channels, codebook_size, beta, weight
        self.ema, self.ema_decay = ema, ema_decay
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        self.quantize_in_decoder = quantize_in_decoder
        projected = dim != latent_channels
        self.project_in = nn.Linear(latent_channels, dim) if projected else nn.Identity()
        self.project_out = nn.Linear(dim, latent_channels) if projected else nn.Identity()
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage", torch.zeros(codebook_size))
        if ema:
            self.codebook.weight.requires_grad_(False)
            self.register_buffer("cluster_size", torch.ones(codebook_size))  # unused codes keep their init
            self.register_buffer("embed_avg", self.codebook.weight.detach().clone())

    def _check(self, h: Tensor) -> None:
        if h.shape[1] != self.latent_channels:
            raise ValueError(f"VQ regularizer expects [B, {self.latent_channels}, *s], got {tuple(h.shape)}")

    def lookup(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder output ``h [B, c, *s]`` -> ``(e [N, d], q [N, d], indices [B, *s])``.

        ``e`` is ``h`` per position in the lookup space, ``q`` its nearest code.
        """
        self._check(h)
        e = self.project_in(rearrange(h, "b c ... -> (b ...) c"))  # (N, d)
        with torch.no_grad():
            w = self.codebook.weight
            dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ w.t() + w.pow(2).sum(1)  # (N, K)
            idx = dist.argmin(dim=1)
        return e, self.codebook(idx), idx.view(h.shape[0], *h.shape[2:])

    def _to_latent(self, flat: Tensor, like: Tensor) -> Tensor:
        b, s = like.shape[0], like.shape[2:]
        z = rearrange(self.project_out(flat), "(b n) c -> b c n", b=b)
        return z.reshape(b, -1, *s)  # (B, c, *s)

    def quantize(self, h: Tensor) -> Tensor:
        """``h [B, c, *s]`` -> nearest codes ``[B, c, *s]`` (no gradient tricks)."""
        _, q, _ = self.lookup(h)
        return self._to_latent(q, h)

    def codes_to_latent(self, indices: Tensor) -> Tensor:
        """Code indices ``[B, *s]`` -> latent ``[B, c, *s]``."""
        q = self.project_out(self.codebook(indices))  # (B, *s, c)
        return torch.movedim(q, -1, 1)

    def distribution(self, h: Tensor) -> DeterministicLatent:
        self._check(h)
        return DeterministicLatent(h if self.quantize_in_decoder else self.quantize(h))

    def decoder_input(self, z: Tensor) -> Tensor:
        return self.quantize(z) if self.quantize_in_decoder else z

    def forward(self, h: Tensor) -> RegularizerOutput:
        e, q, idx = self.lookup(h)
        batch = h.shape[0]
        commitment = (q.detach() - e).pow(2).sum() / batch
        codebook = e.new_zeros(()) if self.ema else (q - e.detach()).pow(2).sum() / batch
        z = self._to_latent(e + (q - e).detach(), h)  # straight-through estimator
        counts = torch.bincount(idx.flatten(), minlength=self.codebook_size).to(e.dtype)
        if self.training:
            self._update_codebook(e.detach(), idx.flatten(), counts)
        loss = self.weight * (codebook + self.beta * commitment)
        logs = {"vq_commitment": commitment.detach(), "vq_codebook": codebook.detach(), **self.code_stats(counts)}
        distribution = DeterministicLatent(h if self.quantize_in_decoder else z.detach())
        return RegularizerOutput(z, loss, logs, distribution)

    @staticmethod
    def code_stats(counts: Tensor) -> dict[str, Tensor]:
        """Perplexity ``exp(H(p))`` (in ``[1, K]``) and fraction of codes used, from hit counts ``[K]``."""
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {"vq_perplexity": entropy.exp().detach(), "vq_usage": (counts > 0).float().mean().detach()}

    @torch.no_grad()
    def _update_codebook(self, e: Tensor, idx: Tensor, counts: Tensor) -> None:
        weight = self.codebook.weight
        if self.ema:
            d = self.ema_decay
            self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
            sums = torch.zeros_like(self.embed_avg).index_add_(0, idx, e)
            self.embed_avg.mul_(d).add_(sums, alpha=1 - d)
            n, k, eps = self.cluster_size.sum(), self.codebook_size, 1e-5
            smoothed = (self.cluster_size + eps) / (n + k * eps) * n  # Laplace smoothing
            weight.copy_(self.embed_avg / smoothed.unsqueeze(1))
        if self.dead_code_threshold > 0:
            self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
            self._restart_dead_codes(e)

    def _restart_dead_codes(self, e: Tensor) -> None:
        dead = (self.usage < self.dead_code_threshold).nonzero().flatten()
        if dead.numel() == 0:
            return
        picks = e[torch.randint(0, e.shape[0], (dead.numel(),), device=e.device)]
        self.codebook.weight[dead] = picks
        self.usage[dead] = self.dead_code_threshold  # a grace period before the next restart
        if self.ema:
            self.cluster_size[dead] = 1.0
            self.embed_avg[dead] = picks


def build_vq(cfg: VQRegularizerConfig, *, latent_channels: int) -> VQRegularizer:
    """Registry factory of regularizer ``vq``."""
    return VQRegularizer(
        latent_channels, cfg.codebook_size, cfg.codebook_dim, cfg.beta, cfg.weight, cfg.ema,
        cfg.ema_decay, cfg.dead_code_threshold, cfg.usage_decay, cfg.quantize_in_decoder,
    )
