"""Regions of a sample as masks (1 = generate, 0 = keep, diffusers' convention) for inpainting.

A region is written as text (``mmldm edit ... mask=<region>``, :meth:`Modality.region_mask
<mmldm.interfaces.Modality.region_mask>`):

- ``box:<lo>-<hi>,<lo>-<hi>,...``: one range of fractions in [0, 1] per spatial axis, in the order of the
  modality's layout (an image ``[C, H, W]``: rows from the top, then columns from the left). A cell belongs
  to the box when its centre ``(i + 0.5) / n`` lies in ``[lo, hi)``; ``box:0.5-1,0-1`` is an image's lower half.
- a name the modality adds (:meth:`Modality.region_names <mmldm.interfaces.Modality.region_names>`): ``top``,
  ``x+``, ``gap:0.25-0.5``, ... (the text after ``:`` is the name's argument).

A mask can also be a file (:func:`read_mask`): a ``.npy`` array of 0/1 in the sample's shape, or any file the
modality reads (:meth:`Modality.load_mask <mmldm.interfaces.Modality.load_mask>`: its :meth:`load
<mmldm.interfaces.Modality.load>` thresholded at 0.5).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .interfaces import Modality

#: The region every modality has, as a usage line.
BOX = "box:<lo>-<hi>,..."


def parse_range(text: str, what: str) -> tuple[float, float]:
    """``"0.25-0.5"`` -> ``(0.25, 0.5)``: two non-negative numbers ``lo < hi``; ``ValueError`` naming ``what``
    (the region being read, e.g. ``"box:0.5-1,0-1"``) otherwise."""
    lo, sep, hi = text.partition("-")
    try:
        bounds = (float(lo), float(hi)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not all(math.isfinite(b) for b in bounds) or not bounds[0] < bounds[1]:
        raise ValueError(f"region '{what}': '{text}' is not a range <lo>-<hi> of two numbers with lo < hi")
    return bounds


def cells(lo: float, hi: float, n: int) -> slice:
    """The cells ``i`` of an axis of ``n`` whose centres ``(i + 0.5) / n`` lie in ``[lo, hi)`` (fractions)."""
    start = max(0, math.ceil(lo * n - 0.5))
    stop = min(n, math.ceil(hi * n - 0.5))
    return slice(start, max(start, stop))


def box_mask(ranges: Sequence[tuple[float, float]], spatial: Sequence[int]) -> Tensor:
    """``[1, *spatial]``: 1 on the cells of each axis whose centres lie in its ``(lo, hi)`` range (fractions of
    the axis, one range per axis), 0 elsewhere. Empty when a range holds no cell centre."""
    if len(ranges) != len(spatial):
        raise ValueError(f"a box needs {len(spatial)} ranges (one per spatial axis), got {len(ranges)}")
    mask = torch.zeros(1, *spatial)  # (1, *spatial)
    mask[(slice(None), *(cells(lo, hi, n) for (lo, hi), n in zip(ranges, spatial)))] = 1
    return mask


def parse_box(argument: str, spatial: Sequence[int]) -> Tensor:
    """The mask of ``box:<argument>``: ranges of fractions in [0, 1], comma-separated, one per spatial axis."""
    what = f"box:{argument}"
    ranges = [parse_range(part, what) for part in argument.split(",")]
    if len(ranges) != len(spatial):
        raise ValueError(f"region '{what}' has {len(ranges)} range(s); the samples have {len(spatial)} spatial axes "
                         f"({', '.join(map(str, spatial))}): give one <lo>-<hi> per axis, e.g. box:"
                         f"{','.join(['0.5-1'] + ['0-1'] * (len(spatial) - 1))}")
    if any(lo < 0 or hi > 1 for lo, hi in ranges):
        raise ValueError(f"region '{what}': ranges are fractions of each axis, within 0-1")
    mask = box_mask(ranges, spatial)
    if not mask.any():
        raise ValueError(f"region '{what}' holds no cell of the {'x'.join(map(str, spatial))} grid (a cell counts "
                         "when its centre lies in the range): widen it")
    return mask


def region_usages(modality: "Modality") -> list[str]:
    """The regions ``modality`` understands, as usage strings: :data:`BOX` and its :meth:`region_names`."""
    return [BOX, *modality.region_names()]


def region_mask(modality: "Modality", spec: str) -> Tensor:
    """``spec`` (see the module's docstring) as a mask ``[1 or C, *spatial]`` of 0/1 for ``modality``'s samples.

    Raises ``ValueError`` for an unknown name (listing the regions the modality has) or a bad argument.
    """
    spatial = tuple(modality.sample_shape[1:])
    names = {usage.partition(":")[0]: usage for usage in modality.region_names()}
    name, sep, argument = spec.strip().partition(":")
    if name == "box":
        return parse_box(argument, spatial)
    if name not in names:
        raise ValueError(f"unknown region '{spec}' for the {modality.name} modality; its regions: "
                         f"{', '.join(region_usages(modality))}")
    if bool(sep) != (":" in names[name]):
        raise ValueError(f"region '{spec}': write it as '{names[name]}'")
    return modality.named_region(name, argument if sep else None).float()


def is_region(modality: "Modality", spec: str) -> bool:
    """Whether ``spec`` is written as a region (``box:...`` or one of the modality's names, with or without its
    argument), rather than a file."""
    name = spec.strip().partition(":")[0]
    return name == "box" or name in {u.partition(":")[0] for u in modality.region_names()}


def read_mask(modality: "Modality", path: str | Path) -> Tensor:
    """A mask file as ``[1 or C, *spatial]`` of 0/1 (values above 0.5 are 1 = generate): a ``.npy`` array of
    the sample's shape (``[*spatial]``, ``[1, *spatial]`` or ``[C, *spatial]``), for every modality; any other
    file through :meth:`Modality.load_mask <mmldm.interfaces.Modality.load_mask>`. The shape is checked
    (:func:`check_mask_shape`)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        modality.check_input(path, (".npy",), "a .npy array")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read as a .npy mask ({type(e).__name__}: {e})") from None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{path}: a mask holds numbers (0 = keep, 1 = generate), found dtype {array.dtype}")
        mask = torch.from_numpy(np.asarray(array, dtype=np.float32) > 0.5).float()
        if mask.ndim == len(modality.sample_shape) - 1:
            mask = mask.unsqueeze(0)
    else:
        mask = modality.load_mask(path)
    return check_mask_shape(mask, modality.sample_shape, str(path))


def check_mask_shape(mask: Tensor, sample_shape: Sequence[int], name: str = "mask") -> Tensor:
    """``mask`` when it is ``[1 or C, *spatial]`` for samples ``[C, *spatial]``; else a ``ValueError`` naming
    both shapes."""
    c, *spatial = sample_shape
    if mask.ndim != len(sample_shape) or tuple(mask.shape[1:]) != tuple(spatial) or mask.shape[0] not in (1, c):
        raise ValueError(f"mask shape mismatch: {name} has shape {list(mask.shape)}, the model's samples are "
                         f"{list(sample_shape)}: expected [1 or {c}, {', '.join(map(str, spatial))}]")
    return mask


def resolve_mask(modality: "Modality", spec: str) -> Tensor:
    """``mask=`` of ``mmldm edit``: a region (:func:`region_mask`) when ``spec`` is written as one
    (:func:`is_region`), else a file (:func:`read_mask`). ``ValueError`` names the regions when it is neither."""
    if is_region(modality, spec):
        return check_mask_shape(region_mask(modality, spec), modality.sample_shape, f"region '{spec}'")
    if not Path(spec).exists() and not Path(spec).is_symlink():
        raise ValueError(f"mask={spec}: no such file, and not a region of the {modality.name} modality "
                         f"(its regions: {', '.join(region_usages(modality))})")
    return read_mask(modality, spec)
