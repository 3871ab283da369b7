"""Procedural scenes of shapes: the image modality's embedded default data.

Each scene is one shape (circle, square, triangle, star, ...) of one colour
and size on a textured background, with its class (the shape kind), a caption
("a small red star on the left"), its attributes (the caption's words:
``{"shape": "star", "colour": "red", "size": "small", "place": "left"}``) and
a segmentation mask. Scene ``i`` of seed ``s`` depends only on ``(s, i)``, so
any subset renders identically.

The background (:func:`background`) is a linear gradient per channel plus a
texture (stripes or Gaussian noise) added *equally to the three channels*: its
chroma (each channel minus the pixel's mean) is a plane in ``(x, y)``, which
is what the colour judges of :mod:`.metrics` use to segment the shape.

Shapes are drawn with PIL at ``SUPERSAMPLE`` times the resolution and box-
filtered down: the coverage is an anti-aliased alpha, and the mask is the set
of pixels at least half covered, so mask and picture agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 210, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
#: Size word -> shape radius as a fraction of the image side.
SIZES = {"small": 0.14, "medium": 0.2, "large": 0.27}
#: Horizontal third -> caption phrase.
PLACES = ("on the left", "in the middle", "on the right")
#: Horizontal third -> its one-word name (the ``place`` attribute; the last word of the phrase).
PLACE_WORDS = tuple(p.split(" ")[-1] for p in PLACES)
#: Attribute -> its words, in caption order (every word belongs to one attribute only).
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "place": PLACE_WORDS}
SUPERSAMPLE = 4


@dataclass
class Scene:
    """One rendered scene: ``image`` uint8 ``[H, W, 3]``, ``mask`` uint8 ``[H, W]``
    (0 background, ``label + 1`` on the shape), ``label`` index into :data:`SHAPES`,
    ``attributes`` one word per key of :data:`ATTRIBUTES` (``{"shape", "colour", "size", "place"}``)."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    caption: str
    attributes: dict[str, str] = field(default_factory=dict)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r`` centred at ``(cx, cy)``."""
    if kind == "star":
        radii = np.tile([r, 0.45 * r], 5)
    elif kind == "cross":
        # 12-gon of a plus sign: arm half-width w, arm length r
        w = 0.35 * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        c, s = np.cos(angle), np.sin(angle)
        return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in pts]
    else:
        corners = {"square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}[kind]
        radii = np.full(corners, r)
        if kind == "diamond":
            radii = np.tile([r, 0.6 * r], 2)
    theta = angle + np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    return list(zip(cx + radii * np.cos(theta), cy + radii * np.sin(theta)))


def shape_coverage(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage ``[size, size]`` in [0, 1] of one shape (coordinates in pixels)."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    box = [s * (cx - r), s * (cy - r), s * (cx + r), s * (cy + r)]
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "ring":
        draw.ellipse(box, fill=255)
        k = 0.55 * r * s
        draw.ellipse([s * cx - k, s * cy - k, s * cx + k, s * cy + k], fill=0)
    else:
        draw.polygon([(s * x, s * y) for x, y in _polygon(kind, cx, cy, r, angle)], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted textured background ``[size, size, 3]`` float in [0, 255]: gradient plus stripes or noise."""
    base = rng.uniform(40, 140, size=3)
    tilt = rng.uniform(-30, 30, size=3)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(direction) * xx + np.sin(direction) * yy  # [H, W] in [-1.4, 1.4]
    img = base + tilt * ramp[..., None]
    if rng.random() < 0.5:
        period = rng.uniform(3, 8)
        stripes = np.sin(2 * np.pi * (xx * np.cos(-direction) + yy * np.sin(-direction)) * size / period)
        img = img + rng.uniform(6, 14) * stripes[..., None]
    else:
        img = img + rng.normal(0, rng.uniform(4, 10), size=(size, size, 1))
    return np.clip(img, 0, 255)


def render_scene(seed: int, index: int, size: int) -> Scene:
    """Render scene ``index`` of ``seed`` at ``size x size`` pixels."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(SHAPES)))
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size_word = list(SIZES)[int(rng.integers(len(SIZES)))]
    place = int(rng.integers(len(PLACES)))
    r = SIZES[size_word] * size
    third = size / 3
    cx = rng.uniform(place * third + 0.25 * third, (place + 1) * third - 0.25 * third)
    cx = float(np.clip(cx, r + 0.5, size - r - 0.5))
    cy = float(rng.uniform(r + 0.5, size - r - 0.5))
    alpha = shape_coverage(SHAPES[label], size, cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
    bg = background(rng, size)
    fg = np.asarray(COLOURS[colour], dtype=np.float32)
    image = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    mask = np.where(alpha >= 0.5, label + 1, 0).astype(np.uint8)
    caption = f"a {size_word} {colour} {SHAPES[label]} {PLACES[place]}"
    attributes = {"shape": SHAPES[label], "colour": colour, "size": size_word, "place": PLACE_WORDS[place]}
    return Scene(np.round(image).astype(np.uint8), mask, label, caption, attributes)
