"""Configuration of the image modality (torch-free: imported when configs are validated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from mmldm.config import ComponentConfig
from mmldm.schema import non_negative, one_of, positive, seed, unit_interval

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
        holdout (`list[str]`): source ``"shapes"`` only: attribute pairs held out of training,
            each two caption words of different attributes joined by a colon (``star:red``,
            ``ring:left``; places are ``left``, ``middle``, ``right``). The "train" split then
            holds every scene without such a pair, "val" exactly the scenes with one (``val_fraction``
            is unused), so held-out captions are new sentences of known words (see
            :mod:`.composition`; a pair that would take a word out of training is refused).
            Empty (default): the ``val_fraction`` split.
    """

    source: str = one_of("shapes", IMAGE_SOURCES)
    size: int = positive(32)
    channels: Optional[int] = one_of(None, (1, 3))
    num_samples: int = positive(2000)
    seed: int = seed(0)
    root: Optional[str] = None  # required by "mnist" and "folder"
    val_fraction: float = unit_interval(0.1, open_high=True)
    flip: bool = False  # off by default: flipped digits are not digits
    crop: int = non_negative(0)  # off by default: captions say where a shape is
    holdout: list[str] = field(default_factory=list)  # e.g. [star:red, ring:left]; empty: split by val_fraction

    #: the modality's samples are 2D (``[C, size, size]``); a denoiser sized for other dims is refused
    sample_dims: ClassVar[int] = 2

    def __post_init__(self) -> None:
        check_holdout_config(self)


def check_holdout_config(cfg: ImageConfig) -> None:
    """``ValueError`` naming the key and value when ``cfg.holdout`` cannot be used: a source other than
    ``shapes`` (only scenes have attributes), a malformed or unknown pair, a pair that takes a word out of
    training (:func:`.composition.check_holdout`), or ``flip`` with a ``left``/``right`` pair (a flipped
    training scene would show the held-out combination)."""
    if not cfg.holdout:
        return
    from .composition import check_holdout

    if cfg.source != "shapes":
        raise ValueError(f"modality.holdout={list(cfg.holdout)} needs modality.source=shapes (the scenes' "
                         f"attributes), got '{cfg.source}'")
    pairs = check_holdout(cfg.holdout)
    sided = [text for text, pair in zip(cfg.holdout, pairs) if pair.get("place") in ("left", "right")]
    if cfg.flip and sided:
        raise ValueError(f"modality.flip=true with modality.holdout pair '{sided[0]}': a flipped training scene "
                         "swaps left and right and would show the held-out combination; set modality.flip=false")
