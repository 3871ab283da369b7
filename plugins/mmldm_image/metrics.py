"""Image quality measures: PSNR and SSIM (torchmetrics); judges of the procedural scenes' attributes.

Images live in [-1, 1]; PSNR and SSIM map them to [0, 1] first and use
``data_range=1``. PSNR is unchanged by that affine map, SSIM is not (its
stabilizing constants depend on the mean level), and [0, 1] with range 1 is
the convention of Wang et al. 2004, so numbers compare with other papers.

Scene judges (:func:`judge_scenes`) read each attribute of a caption from a
picture, independently of any generative model: the shape by a small
classifier trained on real scenes (:func:`train_shape_judge`), the colour,
size and place from the shape segmented off its background
(:func:`segment_shape`): the nearest palette colour, the nearest expected
area, the horizontal third of the centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .shapes import COLOURS, PLACE_WORDS, SHAPES, SIZES, shape_coverage


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


# ---------------------------------------------------------------------------- judges of scene attributes
#: Background pixels assumed by the robust background fit: the largest shape (a large circle) covers ~23%
#: of a scene, so the 60% of pixels nearest the fitted planes are background.
BACKGROUND_SHARE = 0.6
#: The texture of :func:`.shapes.background` is added equally to the channels: its (1, 1, 1) component of
#: a residual counts this many times less than the chroma, in which the background is texture-free.
LUMINANCE_DISCOUNT = 3.0
#: A pixel belongs to the shape's core when its residual exceeds this (RGB levels) and half the 99th
#: percentile of the scene's residuals.
CORE_LEVEL = 20.0


@dataclass
class Segment:
    """The shape of one scene found by :func:`segment_shape`.

    Attributes:
        mask (`np.ndarray`): bool ``[H, W]``, the pixels at least half covered by the shape (its largest
            connected region).
        colour (`np.ndarray`): float ``[3]``, the median RGB (0..255) of the shape's core pixels.
        background (`np.ndarray`): float ``[H, W, 3]``, the fitted background.
    """

    mask: np.ndarray
    colour: np.ndarray
    background: np.ndarray


def _planes(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Least-squares planes ``a + b x + c y`` per channel fitted to the pixels ``keep`` of ``image [H, W, 3]``."""
    h, w, _ = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), xx.ravel() / max(w - 1, 1), yy.ravel() / max(h - 1, 1)], 1)  # (HW, 3)
    rows = keep.ravel()
    coef, *_ = np.linalg.lstsq(design[rows], image.reshape(-1, 3)[rows], rcond=None)
    return (design @ coef).reshape(h, w, 3)


def _residual(residual: np.ndarray) -> np.ndarray:
    """``[H, W]`` norm of ``residual [H, W, 3]``: chroma in full, the grey (texture) component discounted."""
    grey = residual.mean(-1, keepdims=True)
    chroma = residual - grey
    return np.sqrt((chroma**2).sum(-1) + 3 * (grey[..., 0] / LUMINANCE_DISCOUNT) ** 2)


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected region of ``mask`` (``None`` when empty), scipy's ``ndimage.label``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def segment_shape(image: np.ndarray, iterations: int = 5) -> Segment | None:
    """The shape of a scene ``image`` (uint8 or float ``[H, W, 3]``, 0..255) on a gradient-plus-texture
    background (:func:`.shapes.background`), or ``None`` when nothing stands out.

    1. Background: planes per channel fitted by trimmed least squares: refit ``iterations`` times to the
       :data:`BACKGROUND_SHARE` of pixels with the smallest residual (:func:`_residual`: chroma, where the
       background has no texture, plus the grey component discounted by :data:`LUMINANCE_DISCOUNT`).
    2. Core: the largest connected region of residuals above :data:`CORE_LEVEL` and half the 99th
       percentile; its median RGB is the shape's colour ``c``.
    3. Mask: each pixel's coverage ``alpha`` = projection of ``pixel - background`` on ``c - background``
       (shapes are blended as ``(1 - alpha) bg + alpha c``); the largest region with ``alpha >= 0.5``, the
       rule the scenes' own masks follow.
    """
    image = np.asarray(image, dtype=np.float64)
    keep = np.ones(image.shape[:2], dtype=bool)
    for _ in range(iterations):
        background = _planes(image, keep)
        distance = _residual(image - background)
        keep = distance <= np.quantile(distance, BACKGROUND_SHARE)
    core = _largest(distance > max(CORE_LEVEL, 0.5 * np.quantile(distance, 0.99)))
    if core is None:
        return None
    colour = np.median(image[core], axis=0)
    direction = colour - background  # (H, W, 3)
    alpha = ((image - background) * direction).sum(-1) / np.maximum((direction**2).sum(-1), 1e-6)
    mask = _largest(alpha >= 0.5)
    return None if mask is None else Segment(mask, colour, background)


def judge_colour(segment: Segment) -> str:
    """The palette colour (:data:`.shapes.COLOURS`) nearest (RGB distance) to the shape's median colour."""
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((palette - segment.colour) ** 2).sum(-1)))]


def judge_place(segment: Segment) -> str:
    """The horizontal third (:data:`.shapes.PLACE_WORDS`) holding the shape's centroid."""
    width = segment.mask.shape[1]
    centre = np.nonzero(segment.mask)[1].mean() + 0.5  # pixel centres
    return PLACE_WORDS[min(len(PLACE_WORDS) - 1, int(len(PLACE_WORDS) * centre / width))]


@lru_cache(maxsize=None)
def expected_areas(shape: str, size: int) -> dict[str, float]:
    """Mask area in pixels (coverage >= 0.5) of ``shape`` at each of :data:`.shapes.SIZES` in a ``size``-pixel
    scene: the mean over 12 rotations and sub-pixel positions (:func:`.shapes.shape_coverage`)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}'; choices: {', '.join(SHAPES)}")
    poses = [(size / 2 + (0.37 * k) % 1, size / 2 + (0.61 * k) % 1, 2 * np.pi * k / 12) for k in range(12)]
    return {word: float(np.mean([(shape_coverage(shape, size, cx, cy, radius * size, angle) >= 0.5).sum()
                                 for cx, cy, angle in poses]))
            for word, radius in SIZES.items()}


def judge_size(segment: Segment, shape: str) -> str:
    """The size word (:data:`.shapes.SIZES`) whose expected area for ``shape`` (:func:`expected_areas`) is
    nearest, on a log scale, to the segmented area. Areas of one size differ by shape (a star covers 1.3
    r^2, a circle 3.1 r^2), so the shape is needed: the judged one, for samples."""
    area = max(float(segment.mask.sum()), 1.0)
    expected = expected_areas(shape, segment.mask.shape[0])
    return min(expected, key=lambda word: abs(np.log(area / expected[word])))


def to_pixels(x: Tensor) -> np.ndarray:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]``."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"scene judges take RGB images [B, 3, H, W], got {tuple(x.shape)}")
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def judge_attributes(image: np.ndarray, shape: str) -> dict[str, str | None]:
    """``{"colour", "size", "place"}`` of one scene ``image`` (uint8 ``[H, W, 3]``) whose shape is ``shape``
    (for the size); each ``None`` when no shape stands out (:func:`segment_shape`)."""
    segment = segment_shape(image)
    if segment is None:
        return {"colour": None, "size": None, "place": None}
    return {"colour": judge_colour(segment), "size": judge_size(segment, shape), "place": judge_place(segment)}


def train_shape_judge(size: int, num_samples: int = 10000, seed: int = 1, epochs: int = 8,
                      val_fraction: float = 0.1, **options: Any) -> tuple[Any, dict[str, Any]]:
    """The shape judge: :func:`mmldm.evaluation.classifier.train_classifier` (the independent classifier of
    ``benchmarks.generation``) on ``num_samples`` fresh RGB scenes of ``seed`` (choose a seed other than the
    data's: the judge then sees every combination, held-out ones too, and none of the data's scenes), the last
    ``val_fraction`` held out for its report. Returns the classifier and that report."""
    from mmldm.data import split_indices
    from mmldm.evaluation.classifier import train_classifier

    from .modality import ImageDataset
    from .sources import load_shapes

    data = load_shapes(num_samples, size, seed, channels=3)
    train, val = (ImageDataset(data.subset(split_indices(num_samples, val_fraction, split, seed, shuffle=False)))
                  for split in ("train", "val"))
    return train_classifier(train, val, 2, 3, len(SHAPES), epochs=epochs, seed=seed, **options)


def judge_scenes(shape_judge: Any, x: Tensor) -> list[dict[str, str | None]]:
    """Every attribute of each scene ``x [B, 3, H, W]`` in [-1, 1]: ``shape`` by ``shape_judge`` (a classifier
    from :func:`train_shape_judge`), ``colour``, ``size`` (given the judged shape) and ``place`` by
    :func:`judge_attributes`. Independent of any generative model: real scenes are judged the same way."""
    from mmldm.evaluation.classifier import predict

    logits, _ = predict(shape_judge, x.float().cpu())
    shapes = [SHAPES[k] for k in logits.argmax(-1).tolist()]
    return [{"shape": shape, **judge_attributes(image, shape)} for shape, image in zip(shapes, to_pixels(x))]
