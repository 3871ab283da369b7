"""Preview grids that a person opens: samples tiled into one picture, each titled with its condition.

:func:`tile` is the one tiling helper of the modalities' ``save`` (images, spectrograms); :func:`titles`
turns the conditions a batch was sampled with into one short label per sample ("sphere", "a red star on
the left", "unconditional").
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def titles(cond: Mapping[str, Any] | None, n: int, class_names: Sequence[str] | None = None,
           width: int = 28) -> list[str]:
    """One label per sample of a batch of ``n`` sampled with ``cond``: the class name (``class_names[i]``,
    else the index), the caption (shortened to ``width`` characters), both joined by ": " when both are
    given, other keys (e.g. a segmentation mask) by their name; ``"unconditional"`` without conditions."""
    parts: list[list[str]] = [[] for _ in range(n)]
    order = {"class": 0, "text": 1}
    for key, value in sorted((cond or {}).items(), key=lambda kv: order.get(kv[0], 2)):
        if key == "class":
            for i, c in enumerate(np.asarray(value).reshape(-1)[:n].tolist()):
                c = int(c)
                parts[i].append(class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c))
        elif key == "text":
            for i, caption in enumerate(list(value)[:n]):
                caption = str(caption)
                parts[i].append(caption if len(caption) <= width else caption[: width - 3] + "...")
        else:
            for p in parts:
                p.append(str(key))
    return [": ".join(p) if p else "unconditional" for p in parts]


def _text_strip(title: str, width: int, height: int, fill: int, channels: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    mode = "L" if channels == 1 else "RGB"
    strip = Image.new(mode, (width, height), color=fill if channels == 1 else (fill,) * 3)
    draw = ImageDraw.Draw(strip)
    ink = 0 if fill > 127 else 255
    # PIL's built-in bitmap font (no font file to ship); shortened until it fits the tile
    text = title
    while text and draw.textlength(text) > width - 2:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    draw.text((1, max(0, (height - 11) // 2)), text, fill=ink if channels == 1 else (ink,) * 3)
    out = np.asarray(strip, dtype=np.uint8)
    return out[..., None] if channels == 1 else out


def tile(images: np.ndarray, ncol: int | None = None, pad: int = 2, fill: int = 255,
         titles: Sequence[str] | None = None) -> np.ndarray:
    """uint8 ``[B, H, W, C]`` -> one ``[rows * (T + H + pad) + pad, ncol * (W + pad) + pad, C]`` picture,
    ``ceil(sqrt(B))`` per row by default, ``pad`` pixels of ``fill`` between tiles; with ``titles`` (one per
    image) each tile gets a strip of ``T = 12`` pixels above it with its title (PIL's bitmap font), and
    tiles narrower than 64 pixels are enlarged by a whole factor (nearest neighbour) so a title fits."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"tile expects uint8 images [B, H, W, C], got shape {tuple(images.shape)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"tile got {len(titles)} titles for {len(images)} images")
    if titles is not None and images.shape[2] < 64:
        scale = math.ceil(64 / images.shape[2])
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    b, h, w, c = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / ncol)
    th = 12 if titles is not None else 0
    out = np.full((rows * (th + h + pad) + pad, ncol * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        top, left = pad + r * (th + h + pad), pad + col * (w + pad)
        if th:
            out[top : top + th, left : left + w] = _text_strip(titles[i], w, th, fill, c)
        out[top + th : top + th + h, left : left + w] = img
    return out


def save_samples(modality: Any, samples: Any, directory: Any, prefix: str = "sample",
                 cond: Mapping[str, Any] | None = None) -> list[Any]:
    """``modality.save`` with each sample titled by the condition it was sampled with (:func:`titles`, class
    names from ``modality.class_names``). A modality whose ``save`` predates the ``titles`` argument is called
    without it (its grid keeps its own labels)."""
    import inspect

    names = titles(cond, len(samples), getattr(modality, "class_names", None))
    params = inspect.signature(modality.save).parameters
    if "titles" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return modality.save(samples, directory, prefix=prefix, titles=names)
    return modality.save(samples, directory, prefix=prefix)
