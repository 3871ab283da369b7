"""Image sources: each turns a config into :class:`ImageSet` arrays at the configured size.

``ImageSet`` holds uint8 pictures ``[N, H, W, C]`` and, when the source has
them, class labels ``[N]``, captions, segmentation masks ``[N, H, W]``
(0 = background) and per-item attributes (the shapes source: the caption's
words, ``{"shape", "colour", "size", "place"}``). Splitting into train/val
happens in :mod:`.modality`.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmldm.data import SkippedFiles, list_files, path_problem, read_sidecar_text

from .shapes import SHAPES, render_scene

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = ".mask.png"


@dataclass
class ImageSet:
    """Decoded images of one source, in source order."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray | None = None  # int64 [N]
    texts: list[str] | None = None
    masks: np.ndarray | None = None  # uint8 [N, H, W], 0 = background, k + 1 = class k
    class_names: list[str] = field(default_factory=list)
    attributes: list[dict[str, str]] | None = None  # shapes: {"shape", "colour", "size", "place"} per item

    def subset(self, idx: np.ndarray) -> "ImageSet":
        """The items ``idx`` (in that order)."""
        return ImageSet(
            self.images[idx],
            None if self.labels is None else self.labels[idx],
            None if self.texts is None else [self.texts[i] for i in idx],
            None if self.masks is None else self.masks[idx],
            self.class_names,
            None if self.attributes is None else [self.attributes[i] for i in idx],
        )


def to_channels(img: Image.Image, channels: int) -> np.ndarray:
    """A PIL image as uint8 ``[H, W, channels]`` (RGB -> gray by ITU-R 601 luma, gray -> RGB by copy)."""
    return np.asarray(img.convert("L" if channels == 1 else "RGB")).reshape(img.height, img.width, channels)


#: Pillow modes of 16-bit grayscale (a 16-bit PNG opens as "I;16"; older Pillow gave "I").
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def eight_bit(img: Image.Image) -> Image.Image:
    """``img`` with 8-bit channels: 16-bit grayscale scaled by 255/65535, so mid-grey 32768 becomes 128
    (Pillow's ``convert("L")`` clips it to 255: the picture turns white). Pillow already reduces 16-bit
    RGB(A) and 1/2/4-bit PNGs to their 8-bit modes; 32-bit integer or float pixels (no known range)
    raise ``ValueError``."""
    if img.mode in _SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG"):  # PNG: at most 16 bits
        return Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    if img.mode in ("I", "F"):
        raise ValueError(f"{'32-bit integer' if img.mode == 'I' else 'float'} pixels (mode {img.mode}) have no known "
                         "range: save the picture with 8 or 16 bits per channel")
    return img


def fit(img: Image.Image, size: int, content: float = 1.0, resample=Image.Resampling.BILINEAR) -> Image.Image:
    """Centre-crop to a square, scale it to ``round(content * size)`` and pad it centred to ``size``."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    inner = max(1, round(content * size))
    img = img.crop((left, top, left + side, top + side))
    if side != inner:
        img = img.resize((inner, inner), resample)
    if inner == size:
        return img
    out = Image.new(img.mode, (size, size), 0)
    out.paste(img, ((size - inner) // 2, (size - inner) // 2))
    return out


def load_shapes(num_samples: int, size: int, seed: int, channels: int) -> ImageSet:
    """``num_samples`` procedural scenes (see :mod:`.shapes`)."""
    scenes = [render_scene(seed, i, size) for i in range(num_samples)]
    images = np.stack([to_channels(Image.fromarray(s.image), channels) for s in scenes])
    return ImageSet(
        images,
        np.array([s.label for s in scenes], dtype=np.int64),
        [s.caption for s in scenes],
        np.stack([s.mask for s in scenes]),
        list(SHAPES),
        [s.attributes for s in scenes],
    )


#: Gray level (0..255) at and above which a digit's pixel belongs to its mask.
DIGIT_MASK_LEVEL = 128


def _digit_set(gray: np.ndarray, labels: np.ndarray, size: int, content: float) -> ImageSet:
    """Grayscale uint8 ``[N, h, w]`` digits fitted into ``size`` with captions and masks (the pixels of
    gray level >= ``DIGIT_MASK_LEVEL`` hold ``label + 1``, the others 0)."""
    images = np.stack([np.asarray(fit(Image.fromarray(g), size, content)) for g in gray])[..., None]
    texts = [f"a handwritten digit {int(k)}" for k in labels]
    masks = np.where(images[..., 0] >= DIGIT_MASK_LEVEL, labels.astype(np.uint8)[:, None, None] + 1, 0).astype(np.uint8)
    return ImageSet(images, labels.astype(np.int64), texts, masks, [str(k) for k in range(10)])


def load_digits(size: int) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to 3/4 of ``size`` and padded."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    gray = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    return _digit_set(gray, bunch.target, size, content=0.75)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({np.prod(shape)} values), file holds {array.size}")
    return array.reshape(shape)


def load_mnist(root: Path, size: int) -> ImageSet:
    """MNIST from IDX files in ``root`` (``train-*`` first, then ``t10k-*``), 28x28 padded to ``size``.

    At ``size=32`` each digit is padded by 2 pixels; other sizes scale the 28x28 box by ``size/32``.
    """
    found = sorted(root.glob("*images-idx3-ubyte*"), key=lambda p: (not p.name.startswith("train"), p.name))
    if not found:
        raise FileNotFoundError(f"image.root={root}: no '*-images-idx3-ubyte[.gz]' file (MNIST IDX format)")
    images, labels = [], []
    for img_path in found:
        lbl_path = img_path.with_name(img_path.name.replace("images-idx3", "labels-idx1"))
        if not lbl_path.exists():
            raise FileNotFoundError(f"{img_path} has no labels file {lbl_path.name} beside it")
        images.append(read_idx(img_path))
        labels.append(read_idx(lbl_path))
        if len(images[-1]) != len(labels[-1]):
            raise ValueError(f"{img_path.name} has {len(images[-1])} images but {lbl_path.name} {len(labels[-1])} labels")
    return _digit_set(np.concatenate(images), np.concatenate(labels), size, content=28 / 32)


def _decode(path: Path, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """``convert`` applied to the fully decoded image at ``path``; ``ValueError`` when Pillow cannot decode
    it (truncated or corrupt data raise many types: OSError, SyntaxError, zlib.error...); the folder
    loader reports it with the file's name."""
    try:
        with Image.open(path) as img:
            img.load()
            return convert(img)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - see above
        raise ValueError(f"cannot decode image ({type(e).__name__}: {e})") from e


def read_picture(path: Path, size: int, channels: int) -> np.ndarray:
    """One picture as uint8 ``[size, size, channels]``: 16-bit scaled by :func:`eight_bit`, centre-cropped
    and resized by :func:`fit`, converted by :func:`to_channels`; ``ValueError`` when it cannot be decoded."""
    return _decode(path, lambda img: to_channels(fit(eight_bit(img), size), channels))


def _read_image(
    path: Path, size: int, channels: int, root: Path | None = None, skipped: SkippedFiles | None = None
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """One folder image (16-bit scaled by :func:`eight_bit`), its optional mask sidecar (nearest-neighbour
    resized; one that is no regular file rejects the image) and caption sidecar (one that is not UTF-8 is
    recorded in ``skipped``, relative to ``root``, and the default caption used)."""
    pixels = read_picture(path, size, channels)
    mask_path = path.with_name(path.stem + MASK_SUFFIX)
    mask = None
    if mask_path.exists():
        if (problem := path_problem(mask_path)) is not None:
            raise ValueError(f"mask {mask_path.name}: {problem}")
        mask = _decode(mask_path, lambda m: np.asarray(fit(m.convert("L"), size, resample=Image.Resampling.NEAREST)))
    root = path.parent if root is None else root
    caption = read_sidecar_text(path.with_suffix(".txt"), root, SkippedFiles() if skipped is None else skipped)
    return pixels, mask, caption


def _folder_labels(root: Path, paths: list[Path]) -> tuple[np.ndarray | None, list[str]]:
    """Class ids from the first sub-folder under ``root`` (``None`` when all files sit at top level)."""
    parts = [p.relative_to(root).parts for p in paths]
    folders = sorted({r[0] for r in parts if len(r) > 1})
    if not folders:
        return None, []
    if any(len(r) == 1 for r in parts):
        raise ValueError(f"image.root={root}: mixes images at top level with class sub-folders {folders}; move them into one")
    return np.array([folders.index(r[0]) for r in parts], dtype=np.int64), folders


def load_folder(root: Path, size: int, channels: int) -> ImageSet:
    """PNG/JPEG files under ``root``; the first sub-folder names the class (none at top level).

    Sidecars with the same stem: ``<stem>.txt`` caption, ``<stem>.mask.png``
    integer mask. Unreadable files, paths that are no regular file (FIFOs: never
    opened), dangling links, symlink loops and captions that are not UTF-8 (the
    image keeps the default caption) are skipped with one warning naming each.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image.root={root} is not a directory (source 'folder' reads PNG/JPEG files from it)")
    skipped = SkippedFiles()
    files = list_files(root, IMAGE_SUFFIXES, skipped, exclude=(MASK_SUFFIX,))
    paths, records = [], []
    for path in files:
        try:
            records.append(_read_image(path, size, channels, root, skipped))
            paths.append(path)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            skipped.add(path.relative_to(root), e)
    skipped.warn(logger, f"image folder {root}")
    if not records:
        raise FileNotFoundError(f"image.root={root}: no readable {'/'.join(IMAGE_SUFFIXES)} files")
    labels, folders = _folder_labels(root, paths)
    names = [folders[k] for k in labels] if labels is not None else [None] * len(paths)
    texts = [t or (f"an image of a {n}" if n else "an image") for (_, _, t), n in zip(records, names)]
    masks = [m for _, m, _ in records]
    return ImageSet(
        np.stack([px for px, _, _ in records]),
        labels,
        texts,
        np.stack(masks) if all(m is not None for m in masks) else None,
        folders,
    )
