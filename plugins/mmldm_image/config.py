"""Configuration of the image modality (torch-free: imported when configs are validated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmldm.config import ComponentConfig

#: Values accepted by :attr:`ImageConfig.source`.
IMAGE_SOURCES = ("shapes", "digits", "mnist", "folder")


@dataclass
class ImageConfig(ComponentConfig):
    """Images ``[C, size, size]`` in [-1, 1] from one of four sources.

    Args:
        source (`str`): ``"shapes"`` (procedural scenes, embedded, the default),
            ``"digits"`` (scikit-learn's bundled 8x8 digits), ``"mnist"`` (IDX
            ``*-images-idx3-ubyte.gz`` / ``*-labels-idx1-ubyte.gz`` in ``root``)
            or ``"folder"`` (PNG/JPEG files in ``root``, labels from sub-folders,
            optional sidecars ``<stem>.txt`` caption and ``<stem>.mask.png`` mask).
        channels (`int`, *optional*): 1 or 3. ``None`` (default) takes the
            source's own: 3 for shapes and folder, 1 for digits and mnist.
            Digits and mnist are grayscale: asking them for 3 channels is an
            error rather than a silent replication.
        num_samples (`int`): number of shapes scenes (train + val); other
            sources use all their files.
        val_fraction (`float`): held-out share (see :func:`mmldm.data.split_indices`);
            for shapes and mnist the *last* items (10,000 mnist test images ->
            9,000 train / 1,000 val), for digits and folder the last items of
            a permutation seeded by ``seed``.
        flip (`bool`): random horizontal flips in the train split ("left" and
            "right" in captions and the mask are flipped along).
        crop (`int`): random-crop augmentation in the train split: translations of up to
            ``crop`` pixels per axis (reflection padding; the mask follows). 0: off. Must be
            below ``size / 2``.
    """

    source: str = "shapes"
    size: int = 32
    channels: Optional[int] = None
    num_samples: int = 2000
    seed: int = 0
    root: Optional[str] = None  # required by "mnist" and "folder"
    val_fraction: float = 0.1
    flip: bool = False  # off by default: flipped digits are not digits
    crop: int = 0  # off by default: captions say where a shape is
