"""Write images as PNG files: one per sample and a grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
import torch
from torch import Tensor


def to_uint8(samples: Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, C]`` (values outside are clipped)."""
    x = ((samples.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile uint8 ``[B, H, W, C]`` into one ``[rows*(H+pad)+pad, nrow*(W+pad)+pad, C]`` picture."""
    b, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        out[top : top + h, left : left + w] = img
    return out


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def save_pngs(samples: Tensor, directory: Path, prefix: str) -> list[Path]:
    """Write ``{prefix}_{i:04d}.png`` per sample of ``[B, C, H, W]`` and ``{prefix}_grid.png``; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = to_uint8(samples)
    paths = []
    for i, img in enumerate(images):
        paths.append(directory / f"{prefix}_{i:04d}.png")
        _pil(img).save(paths[-1])
    paths.append(directory / f"{prefix}_grid.png")
    _pil(grid(images)).save(paths[-1])
    return paths


def save_comparison(x: Tensor, x_rec: Tensor, path: Path) -> Path:
    """One PNG: the images of ``x [B, C, H, W]`` in a row, those of ``x_rec`` in the row below."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(grid(np.concatenate([to_uint8(x), to_uint8(x_rec)]), nrow=len(x))).save(path)
    return path
