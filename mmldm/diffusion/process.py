"""The diffusion process as a component (kind ``process``): how training noises, what samplers see.

A process answers two questions, as sgm's denoiser scalings and k-diffusion's wrappers do:

- **training** (:meth:`Process.noise`): draw a time / noise level from the training distribution,
  noise a clean latent ``z0``, and give the network input, the regression target and the
  per-sample loss weight; :func:`diffusion_loss` turns a prediction into the loss;
- **sampling**: the variance-exploding (VE) view every sampler works in, ``x = z0 + sigma eps``
  (k-diffusion's convention), through :meth:`Process.sigmas` (a descending grid ending in 0) and the
  preconditioning of Karras et al. 2022 (arXiv 2206.00364, Table 1), :meth:`Process.precondition`:
  ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (:class:`ProcessDenoiser`).

The built-ins are ``vp`` (:mod:`.vp`: eps / v / x0 over the discrete beta schedules), ``flow``
(:mod:`.flow`: rectified flow) and ``edm`` (:mod:`.edm`). A new process is a new subclass
registered with ``registry.add("process", name, factory, config=...)``.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, NamedTuple

import torch
from einops import reduce
from torch import Tensor, nn

from .utils import append_dims


class Noised(NamedTuple):
    """One training draw of :meth:`Process.noise` for clean latents ``z0 [B, C, *spatial]``.

    Attributes:
        x_t (`Tensor [B, C, *spatial]`): the network input (the noised latent, preconditioned).
        c_noise (`Tensor [B]`): the time input of the network.
        target (`Tensor [B, C, *spatial]`): what the network regresses onto.
        weight (`Tensor [B]`): the per-sample weight of the mean squared error.
        sigma (`Tensor [B]`): the VE noise level of the draw: :meth:`Process.precondition` at ``sigma``
            gives ``c_noise`` and maps ``x_t`` and ``target`` back to ``z0``
            (``c_skip x_t / c_in + c_out target == z0``), so training and sampling agree.
    """

    x_t: Tensor
    c_noise: Tensor
    target: Tensor
    weight: Tensor
    sigma: Tensor


class Preconditioning(NamedTuple):
    """``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` at VE noise levels ``sigma [B]``, each ``[B]``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


class Process(abc.ABC):
    """A diffusion process: training noise and the sigma-space view of the samplers.

    Attributes:
        spacings (`tuple[str, ...]`): the ``spacing`` values :meth:`sigmas` accepts, its default first
            (the same as the config's :attr:`~mmldm.diffusion.config.ProcessConfig.spacings`).
    """

    spacings: tuple[str, ...] = ()

    @abc.abstractmethod
    def noise(self, z0: Tensor, generator: torch.Generator | None = None) -> Noised:
        """Draw one training time per sample and the noise, and noise ``z0 [B, C, *spatial]``."""

    @abc.abstractmethod
    def precondition(self, sigma: Tensor) -> Preconditioning:
        """The preconditioning at VE noise levels ``sigma [B]`` (``sigma``'s dtype and device)."""

    @abc.abstractmethod
    def _sigmas(self, steps: int, spacing: str) -> Tensor:
        """Descending VE sigmas ``[steps + 1]`` (float64) ending in 0; ``spacing`` is one of :attr:`spacings`."""

    def sigmas(self, steps: int, spacing: str = "auto") -> Tensor:
        """Descending VE sigmas ``[steps + 1]`` (float64) ending in 0, the grid a sampler steps along.

        Args:
            steps (`int`): model evaluations of a first-order sampler (>= 1).
            spacing (`str`): ``"auto"`` (the process's default, ``spacings[0]``) or one of :attr:`spacings`.
        """
        if spacing == "auto":
            spacing = self.spacings[0]
        if spacing not in self.spacings:
            raise ValueError(f"{type(self).__name__} places noise levels with spacing {', '.join(self.spacings)} "
                             f"(or auto), not '{spacing}'")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self._sigmas(steps, spacing)

    def denoiser(self, model: Callable[..., Tensor]) -> "ProcessDenoiser":
        """The sampler model ``D(x, sigma, **extra) -> x0`` of a network ``F(x_t, c_noise, **extra)``."""
        return ProcessDenoiser(model, self)


class ProcessDenoiser(nn.Module):
    """Map a network ``F(x_t, c_noise, **extra)`` to the sigma-space denoiser ``D(x, sigma, **extra) -> x0``.

    Args:
        model (`nn.Module` or callable): e.g. a :class:`mmldm.interfaces.Denoiser` (``extra`` then holds
            ``conditioning=...``).
        process (`Process`): gives the preconditioning.

    ``x [B, C, *spatial]``, ``sigma [B]`` (or a scalar); returns ``[B, C, *spatial]``.
    """

    def __init__(self, model: Callable[..., Tensor], process: Process):
        super().__init__()
        self.model = model
        self.process = process

    def forward(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.process.precondition(sigma)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        return c_skip * x + c_out * self.model(x * c_in, c_noise, **extra)


def diffusion_loss(
    model_fn: Callable[[Tensor, Tensor], Tensor], z0: Tensor, process: Process,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoising loss per sample ``[B]`` for clean latents ``z0 [B, C, *spatial]``.

    Noises ``z0`` with :meth:`Process.noise`, regresses ``model_fn(x_t, c_noise)`` onto the target and
    weighs the squared error, averaged over all but the batch axis, per sample (Ho et al. 2020,
    Algorithm 1, for the ``vp`` process with eps prediction).
    """
    noised = process.noise(z0, generator)
    pred = model_fn(noised.x_t, noised.c_noise)
    dtype = torch.promote_types(pred.dtype, torch.float32)  # half-precision predictions: loss in float32
    mse = reduce((pred.to(dtype) - noised.target.to(dtype)) ** 2, "b ... -> b", "mean")
    return mse * noised.weight.to(mse)


def build_process(cfg: Any) -> Process:
    """The process a config names (a registered ``process``; ``cfg`` a DictConfig, dict or dataclass)."""
    from ..plugins import registry

    return registry().build("process", cfg)
