"""Image quality measures: PSNR and SSIM (torchmetrics).

Images live in [-1, 1]; PSNR and SSIM map them to [0, 1] first and use
``data_range=1``. PSNR is unchanged by that affine map, SSIM is not (its
stabilizing constants depend on the mean level), and [0, 1] with range 1 is
the convention of Wang et al. 2004, so numbers compare with other papers.
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped, float32."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(x: Tensor, x_rec: Tensor) -> Tensor:
    """Mean over the batch of per-image PSNR in dB, ``10 log10(1 / MSE)`` on [0, 1] images ``[B, C, H, W]``.

    Identical images give ``inf``.
    """
    return peak_signal_noise_ratio(_unit(x_rec), _unit(x), data_range=1.0, dim=(1, 2, 3))


def ssim(x: Tensor, x_rec: Tensor) -> Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5) of ``[B, C, H, W]`` images.

    Images smaller than 11 pixels use the largest odd window that fits.
    """
    side = min(x.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    return structural_similarity_index_measure(
        _unit(x_rec), _unit(x), data_range=1.0, kernel_size=kernel, sigma=sigma
    )
