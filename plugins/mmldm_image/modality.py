"""The image modality: 2D samples ``[C, H, W]`` in [-1, 1] with class, caption and mask conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmldm.data import check_split, split_indices
from mmldm.interfaces import Modality
from mmldm.regions import box_mask

from . import metrics, sources
from .composition import check_holdout, check_split_words, is_held_out
from .config import IMAGE_SOURCES, ImageConfig
from .preview import save_comparison, save_pngs

#: Channels of each source when ``channels`` is left unset.
NATIVE_CHANNELS = {"shapes": 3, "digits": 1, "mnist": 1, "folder": 3}

#: Files :meth:`ImageModality.load` reads (any picture Pillow decodes under these suffixes).
LOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: Named regions (rows, columns) as fractions of the picture: name -> (description, box).
REGIONS = {
    "top": ("the upper half of the rows", ((0.0, 0.5), (0.0, 1.0))),
    "bottom": ("the lower half of the rows", ((0.5, 1.0), (0.0, 1.0))),
    "left": ("the left half of the columns", ((0.0, 1.0), (0.0, 0.5))),
    "right": ("the right half of the columns", ((0.0, 1.0), (0.5, 1.0))),
    "center": ("the middle half of each side (a quarter of the area)", ((0.25, 0.75), (0.25, 0.75))),
}


def flip_caption(text: str) -> str:
    """Swap the words "left" and "right" (for horizontally flipped images)."""
    swap = {"left": "right", "right": "left"}
    return " ".join(swap.get(w, w) for w in text.split(" "))


class ImageDataset(Dataset):
    """Items ``{"x": FloatTensor[C, H, W] in [-1, 1], "cond": {"class": int, "text": str,
    "segmentation": LongTensor[1, H, W]}}``; each cond key present only if the source has it.

    Args:
        data (`sources.ImageSet`): decoded images of one split (its ``attributes`` are kept as
            :attr:`attributes`: the judges of :mod:`.metrics` compare samples with them).
        flip (`bool`): flip each item horizontally with probability 1/2
            (the mask and "left"/"right" in the caption follow).
        crop (`int`): random-crop augmentation: pad each side by ``crop`` pixels (reflection)
            and cut a window of the original size at a uniformly random offset, i.e.
            translations of up to ``crop`` pixels per axis (the mask follows); 0 turns it off.
    """

    def __init__(self, data: sources.ImageSet, flip: bool = False, crop: int = 0) -> None:
        self.x = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()  # uint8 [N, C, H, W]
        self.labels = data.labels
        self.texts = data.texts
        #: per item ``{"shape", "colour", "size", "place"}`` (shapes source; before flips), else ``None``
        self.attributes = data.attributes
        self.masks = None if data.masks is None else torch.from_numpy(data.masks.astype(np.int64))[:, None]
        self.flip = flip
        self.crop = crop

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        x = self.x[i].float() / 127.5 - 1.0
        cond: dict = {}
        if self.labels is not None:
            cond["class"] = int(self.labels[i])
        if self.texts is not None:
            cond["text"] = self.texts[i]
        if self.masks is not None:
            cond["segmentation"] = self.masks[i]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
            if "segmentation" in cond:
                cond["segmentation"] = cond["segmentation"].flip(-1)
            if "text" in cond:
                cond["text"] = flip_caption(cond["text"])
        if self.crop:
            x, cond = self._random_crop(x, cond)
        return {"x": x, "cond": cond}

    def _random_crop(self, x: Tensor, cond: dict) -> tuple[Tensor, dict]:
        """A window of ``x [C, H, W]``'s size at a random offset in ``x`` padded by ``crop`` (reflection)."""
        k, (h, w) = self.crop, x.shape[-2:]
        top, left = (int(v) for v in torch.randint(0, 2 * k + 1, (2,)))

        def window(t: Tensor) -> Tensor:
            padded = torch.nn.functional.pad(t[None], (k, k, k, k), mode="reflect")[0]
            return padded[:, top : top + h, left : left + w]

        if "segmentation" in cond:
            cond["segmentation"] = window(cond["segmentation"].float()).long()
        return window(x), cond


class ImageModality(Modality):
    """Images ``[B, C, H, W]`` in [-1, 1] (``dims=2``) from the source :class:`ImageConfig` names.

    Segmentation masks hold 0 for background and ``k + 1`` for a pixel of
    class ``k``: ``segmentation_classes = num_classes + 1`` labels in all.
    """

    name = "image"
    dims = 2

    def __init__(self, cfg: ImageConfig) -> None:
        if cfg.source not in IMAGE_SOURCES:
            raise ValueError(f"image.source='{cfg.source}' is not one of {', '.join(IMAGE_SOURCES)}")
        native = NATIVE_CHANNELS[cfg.source]
        channels = native if cfg.channels is None else cfg.channels
        if channels not in (1, 3):
            raise ValueError(f"image.channels={cfg.channels} must be 1 or 3 (or null for the source's own)")
        if native == 1 and channels != 1:
            raise ValueError(
                f"image.channels={cfg.channels} but source '{cfg.source}' is grayscale: "
                "set image.channels=1 or leave it null"
            )
        if cfg.source in ("mnist", "folder") and not cfg.root:
            raise ValueError(f"image.source='{cfg.source}' needs image.root (a directory), got {cfg.root!r}")
        if not 0.0 <= cfg.val_fraction < 1.0:
            raise ValueError(f"image.val_fraction={cfg.val_fraction} must be in [0, 1)")
        if not 0 <= 2 * cfg.crop < cfg.size:
            raise ValueError(f"image.crop={cfg.crop} must be >= 0 and below image.size / 2 = {cfg.size / 2:g} "
                             "(pixels of random translation)")
        self.cfg = cfg
        self.channels = channels
        self._data: sources.ImageSet | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, self.cfg.size, self.cfg.size)

    def _load(self) -> sources.ImageSet:
        """Decode the whole source once (cached)."""
        if self._data is None:
            c = self.cfg
            if c.source == "shapes":
                self._data = sources.load_shapes(c.num_samples, c.size, c.seed, self.channels)
            elif c.source == "digits":
                self._data = sources.load_digits(c.size)
            elif c.source == "mnist":
                self._data = sources.load_mnist(Path(c.root), c.size)
            else:
                self._data = sources.load_folder(Path(c.root), c.size, self.channels)
        return self._data

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self._load().class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._load().class_names)

    @property
    def segmentation_classes(self) -> int:
        """Number of mask labels (background included), 0 when the source has no masks."""
        return self.num_classes + 1 if self._load().masks is not None else 0

    def dataset(self, split: str) -> ImageDataset:
        check_split(split)
        data = self._load()
        if self.cfg.holdout:
            idx = self._holdout_indices(data, split)
        else:
            idx = split_indices(len(data.images), self.cfg.val_fraction, split, self.cfg.seed,
                                shuffle=self.cfg.source in ("digits", "folder"))
        return ImageDataset(data.subset(idx), flip=self.cfg.flip and split == "train",
                            crop=self.cfg.crop if split == "train" else 0)

    def _holdout_indices(self, data: sources.ImageSet, split: str) -> np.ndarray:
        """Indices (source order) of ``split`` under ``holdout``: "val" the scenes with a held-out pair,
        "train" the others; ``ValueError`` when no scene is held out or a word is missing from training."""
        pairs = check_holdout(self.cfg.holdout)
        held = np.array([is_held_out(a, pairs) for a in data.attributes or []], dtype=bool)
        check_split_words([a for a, h in zip(data.attributes or [], held) if not h], int(held.sum()),
                          self.cfg.holdout, len(held))
        return np.flatnonzero(held if split == "val" else ~held)

    def save(self, samples: Tensor, directory: Path, prefix: str = "sample",
             titles: Sequence[str] | None = None) -> list[Path]:
        """PNG per sample of ``[B, C, H, W]`` plus ``{prefix}_grid.png`` (tiles titled with ``titles``)."""
        return save_pngs(samples, Path(directory), prefix, titles)

    def save_reconstructions(self, x: Tensor, x_rec: Tensor, directory: Path) -> list[Path]:
        """Inputs and reconstructions as PNGs, plus ``comparison.png``: inputs in the top row, their
        reconstructions below."""
        paths = super().save_reconstructions(x, x_rec, directory)
        return [*paths, save_comparison(x, x_rec, Path(directory) / "comparison.png")]

    def load(self, path: str | Path) -> Tensor:
        """A picture (PNG, JPEG, BMP, GIF, TIFF, WebP) as ``[C, size, size]`` in [-1, 1], read as the ``folder``
        source reads its files: 16-bit grey scaled to 8 bits, centre-cropped to a square and resized to
        ``size`` (bilinear), converted to the modality's channels (RGB -> grey by ITU-R 601 luma, grey -> RGB
        by copy; an alpha channel is dropped). The ``digits``/``mnist`` sources draw their digits on 3/4 or
        28/32 of the frame: a picture for such a model should leave the same margin."""
        path = self.check_input(path, LOAD_SUFFIXES, f"a picture ({', '.join(LOAD_SUFFIXES)})")
        try:
            pixels = sources.read_picture(path, self.cfg.size, self.channels)  # uint8 (H, W, C)
        except ValueError as e:  # names no file
            raise ValueError(f"{path}: cannot load as a sample of the image modality: {e}") from None
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (C, H, W)

    def load_mask(self, path: str | Path) -> Tensor:
        """A mask picture as ``[1, size, size]``: read as :meth:`load` does, in grey, and thresholded at half
        brightness (0.5 on [0, 1], i.e. 0 on the [-1, 1] scale of samples): white = generate, black = keep."""
        path = self.check_input(path, LOAD_SUFFIXES, f"a picture ({', '.join(LOAD_SUFFIXES)})")
        try:
            grey = sources.read_picture(path, self.cfg.size, 1)  # uint8 (H, W, 1)
        except ValueError as e:
            raise ValueError(f"{path}: cannot load as a mask of the image modality: {e}") from None
        return torch.from_numpy(grey[..., 0] >= 128)[None].float()  # (1, H, W)

    def region_names(self) -> dict[str, str]:
        """``top``, ``bottom``, ``left``, ``right`` (halves) and ``center`` (the middle half of each side)."""
        return {name: description for name, (description, _) in REGIONS.items()}

    def named_region(self, name: str, argument: str | None) -> Tensor:
        """The ``[1, size, size]`` mask of one of :data:`REGIONS`."""
        return box_mask(REGIONS[name][1], self.sample_shape[1:])

    def reconstruction_metrics(self, x: Tensor, x_rec: Tensor) -> dict[str, float]:
        """``psnr`` (dB, mean of per-image values; inf when identical) and ``ssim`` on [0, 1]-mapped images."""
        return {"psnr": float(metrics.psnr(x, x_rec)), "ssim": float(metrics.ssim(x, x_rec))}
