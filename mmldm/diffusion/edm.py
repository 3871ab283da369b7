"""``edm``: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv 2206.00364): preconditioning (Table 1), log-normal training sigmas and the rho-spaced grid.

The process is VE already: ``x = z_0 + sigma eps``, and the network ``F`` is wrapped as

    ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``,
    ``c_skip = s_d^2 / (sigma^2 + s_d^2)``, ``c_out = sigma s_d / sqrt(sigma^2 + s_d^2)``,
    ``c_in = 1 / sqrt(sigma^2 + s_d^2)``

(``s_d`` = ``sigma_data``). The paper weighs the D-space error by
``lambda = (sigma^2 + s_d^2) / (sigma s_d)^2 = 1 / c_out^2``, which is unit weight on the
error of ``F`` against its target ``(z_0 - c_skip x) / c_out``: the loss here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import EDMConfig
from .process import Noised, Preconditioning, Process
from .utils import append_dims, randn

#: ``c_noise = NOISE_SCALE * ln(sigma) / 4``. The paper's ``ln(sigma) / 4`` spans [-1.6, 1.1] on its grid;
#: the denoisers' sinusoidal embeddings are built for timesteps spread over [0, 1000) (VP's ``t`` moves
#: ~160 per unit of ``ln sigma`` on the SD schedule), where a span of 2.7 would leave all but the fastest
#: features constant. Scaled by 1000 it moves 250 per unit of ``ln sigma``, like VP's ``t``.
NOISE_SCALE = 1000.0


class EDMProcess(Process):
    """The EDM process.

    Args:
        sigma_data (`float`, defaults to 1): the data's standard deviation (mmldm's latents are normalized to
            unit standard deviation; the paper's 0.5 is for pixels in [-1, 1]).
        p_mean (`float`, defaults to -1.2): the mean of the training ``ln(sigma) ~ N(p_mean, p_std^2)``.
        p_std (`float`, defaults to 1.2): its standard deviation.
        sigma_min (`float`, defaults to 0.002): the last nonzero sigma of the sampling grid.
        sigma_max (`float`, defaults to 80): the first sigma of the sampling grid.
        rho (`float`, defaults to 7): the grid's spacing exponent (Karras et al. 2022, eq. 5); the grid ends in 0.
    """

    spacings = EDMConfig.spacings

    def __init__(self, sigma_data: float = 1.0, p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    @classmethod
    def from_config(cls, cfg: EDMConfig) -> "EDMProcess":
        return cls(cfg.sigma_data, cfg.p_mean, cfg.p_std, cfg.sigma_min, cfg.sigma_max, cfg.rho)

    def noise(self, z0: Tensor, generator: torch.Generator | None = None) -> Noised:
        sigma = (self.p_mean + self.p_std * randn((z0.shape[0],), z0, generator)).exp()
        eps = randn(z0.shape, z0, generator)
        sd, s = self.sigma_data, append_dims(sigma, z0.ndim)
        x = z0 + s * eps
        # (z0 - c_skip x) / c_out, written without the cancellation at small sigma
        target = (s * z0 - sd**2 * eps) / (sd * (s**2 + sd**2).sqrt())
        return Noised(x * (s**2 + sd**2).rsqrt(), self.c_noise(sigma), target, torch.ones_like(sigma), sigma)

    def c_noise(self, sigma: Tensor) -> Tensor:
        return NOISE_SCALE * sigma.log() / 4

    def precondition(self, sigma: Tensor) -> Preconditioning:
        sd2 = self.sigma_data**2
        c_in = (sigma**2 + sd2).rsqrt()
        return Preconditioning(sd2 / (sigma**2 + sd2), sigma * self.sigma_data * c_in, c_in, self.c_noise(sigma))

    def _sigmas(self, steps: int, spacing: str) -> Tensor:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def __repr__(self) -> str:
        return (f"EDMProcess(sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}, "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho})")

