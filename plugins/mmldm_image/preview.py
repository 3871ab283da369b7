"""Write images as PNG files: one per sample and a grid."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
import torch
from torch import Tensor

from mmldm.preview import tile


def to_uint8(samples: Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, C]`` (values outside are clipped)."""
    x = ((samples.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def save_pngs(samples: Tensor, directory: Path, prefix: str, titles: Sequence[str] | None = None) -> list[Path]:
    """Write ``{prefix}_{i:04d}.png`` per sample of ``[B, C, H, W]`` and ``{prefix}_grid.png`` (each tile
    titled with ``titles[i]`` when given); return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = to_uint8(samples)
    paths = []
    for i, img in enumerate(images):
        paths.append(directory / f"{prefix}_{i:04d}.png")
        _pil(img).save(paths[-1])
    paths.append(directory / f"{prefix}_grid.png")
    _pil(tile(images, titles=titles)).save(paths[-1])
    return paths


def save_comparison(x: Tensor, x_rec: Tensor, path: Path) -> Path:
    """One PNG: the images of ``x [B, C, H, W]`` in a row, those of ``x_rec`` in the row below."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(tile(np.concatenate([to_uint8(x), to_uint8(x_rec)]), ncol=len(x))).save(path)
    return path
