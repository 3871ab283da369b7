"""Text conditioners: captions -> cross-attention tokens ``[B, M, d_tau]`` (and a pooled vector).

:class:`TextConditioner` is a small BERT-like transformer trained jointly with
the denoiser, as the LDM paper's text-to-image model (Rombach et al. 2022,
Sec. 4.3.1) trained its transformer ``tau_theta``. Its tokenizer is learned from
the training captions when phase 2 starts (:meth:`TextConditioner.fit`) or is
byte-level; it travels inside the weights (the state dict's extra state holds
``tokenizer.json``), so exports, Lightning checkpoints and the EMA copy carry it.

The null condition of every text conditioner is the encoding of the empty
string ``""`` (``[CLS] [SEP]`` and padding), as in Stable Diffusion; dropped
captions in training take the same path.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

from mmldm.interfaces import Conditioner, Conditioning, Modality

from .common import anchor_device, apply_options, check_outputs, masked_mean
from .config import TEXT_TOKENIZERS, TextConditionerConfig
from .tokenizer import BYTE_VOCAB_SIZE, TokenBatcher, byte_tokenizer, from_bytes, to_bytes, train_bpe


def caption_parts(text: str) -> list[str]:
    """A caption's comma-separated parts, stripped, empty ones left out (what tag dropout and composed
    guidance treat as its parts)."""
    return [p for p in (p.strip() for p in text.split(",")) if p]


class TextConditionerBase(Conditioner):
    """Captions ``list[str]`` (length ``B``) -> ``Conditioning``.

    Fills ``crossattn`` with every position's state ``[B, max_length, d_tau]``
    (padding included, a fixed ``M`` so null and real conditions stack) and/or
    ``vector`` with the mean over the caption's tokens ``[B, d_tau]``.
    Subclasses provide :attr:`tokenizer` and :meth:`encode_ids`.
    """

    key = "text"

    def __init__(self, hidden_size: int, embed_dim: int | None, max_length: int, outputs: Sequence[str]):
        super().__init__()
        self.outputs = check_outputs(outputs, ("crossattn", "vector"), "text")
        embed_dim = embed_dim or hidden_size
        self.proj = nn.Linear(hidden_size, embed_dim) if embed_dim != hidden_size else nn.Identity()
        self.context_dim = embed_dim if "crossattn" in self.outputs else None
        self.vector_dim = embed_dim if "vector" in self.outputs else None
        self.batcher = TokenBatcher(max_length)

    @property
    @abc.abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    @abc.abstractmethod
    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token ids ``[B, L]`` -> hidden states ``[B, L, hidden_size]``."""

    def texts(self, cond: Mapping[str, Any], batch_size: int) -> list[str]:
        """``cond[key]`` as ``batch_size`` strings: a list/tuple of them, or one string for all; None -> ""."""
        value = cond[self.key]
        texts = [value] * batch_size if isinstance(value, str) else list(value)
        if len(texts) != batch_size or not all(t is None or isinstance(t, str) for t in texts):
            raise ValueError(
                f"cond['{self.key}'] must be a string or a list of {batch_size} strings (one per sample), "
                f"got {type(value).__name__} of length {len(texts)}"
            )
        return ["" if t is None else t for t in texts]

    #: probability that each comma-separated part of a training caption is left out (:meth:`augment`)
    tag_dropout: float = 0.0

    def augment(self, value: Any, batch_size: int) -> Any:
        """Caption tag dropout (``tag_dropout``, as kohya's ``caption_tag_dropout_rate``): each comma-separated part
        of each training caption is left out with probability ``tag_dropout``, so the denoiser also learns what
        each part says alone ("seven, spoken by george" also trains as "seven" and "spoken by george"). A caption
        whose parts all drop, or that has one part, is kept whole: condition dropout alone decides the null."""
        if not self.tag_dropout:
            return value
        out = []
        for text in self.texts({self.key: value}, batch_size):
            parts = caption_parts(text)
            keep = (torch.rand(len(parts)) >= self.tag_dropout).tolist()
            whole = len(parts) < 2 or all(keep) or not any(keep)
            out.append(text if whole else ", ".join(p for p, k in zip(parts, keep) if k))
        return out

    def parts(self, value: Any, batch_size: int) -> list[list[str]]:
        """Each caption's comma-separated parts, part ``j`` of every caption as one batch of captions (``""``, the
        null caption, where a caption has fewer parts): the branches of compositional guidance over a caption."""
        split = [caption_parts(text) or [""] for text in self.texts({self.key: value}, batch_size)]
        return [[parts[j] if j < len(parts) else "" for parts in split] for j in range(max(map(len, split)))]

    #: whether the tokenizer's vocabulary was learned from the training captions, so that a word it does not
    #: hold as one token is a word the captions never had (see :meth:`unknown_words`)
    vocabulary_from_captions = False

    def unknown_words(self, text: str) -> dict[str, list[str]]:
        """The words of ``text`` the model cannot know, each with the tokens it becomes.

        A word is unknown when the tokenizer maps any piece of it to its unknown token (``[UNK]``); with a
        vocabulary learned from the training captions (:attr:`vocabulary_from_captions`), also when it is not
        one token of that vocabulary: the captions never held it, so the denoiser never saw it. Words are
        split at whitespace, punctuation stripped from their ends.
        """
        tokenizer, out = self.tokenizer, {}
        for word in dict.fromkeys(w.strip(".,;:!?\"'()[]") for w in text.split()):
            if not word:
                continue
            pieces = tokenizer.tokenize(" " + word)  # as inside a sentence (byte-level BPE marks the space)
            unknown = tokenizer.unk_token is not None and tokenizer.unk_token in pieces
            if unknown or (self.vocabulary_from_captions and len(pieces) != 1):
                out[word] = pieces
        return out

    def encode(self, texts: Sequence[str]) -> Conditioning:
        ids, mask = self.batcher(self.tokenizer, texts, f"text conditioner '{self.key}'")
        device = anchor_device(self)
        ids, mask = ids.to(device), mask.to(device)
        tokens = self.proj(self.encode_ids(ids, mask))  # (B, L, d_tau)
        return Conditioning(
            crossattn=tokens if "crossattn" in self.outputs else None,
            vector=masked_mean(tokens, mask) if "vector" in self.outputs else None,
        )

    def forward(self, cond: Mapping[str, Any], batch_size: int) -> Conditioning:
        if self.key not in cond:
            return self.null(batch_size)
        return self.encode(self.texts(cond, batch_size))

    def null(self, batch_size: int) -> Conditioning:
        return self.encode([""] * batch_size)


class TextConditioner(TextConditionerBase):
    """A BERT-like encoder (Devlin et al. 2019) built from a small config and trained with the denoiser.

    Args:
        tokenizer (`str`): "bpe" (learned by :meth:`fit`) or "byte".
        vocab_size (`int`): rows of the token table.
        max_length (`int`): positions, including ``[CLS]`` and ``[SEP]``.
        hidden_size, num_layers, num_heads (`int`): the transformer (feed-forward 4x hidden).
        embed_dim (`int`, *optional*): ``d_tau`` (a projection when it differs from ``hidden_size``).
        outputs (`Sequence[str]`): "crossattn" and/or "vector".
    """

    def __init__(
        self, tokenizer: str = "bpe", vocab_size: int = 1024, max_length: int = 32, hidden_size: int = 128,
        num_layers: int = 2, num_heads: int = 4, embed_dim: int | None = None, outputs: Sequence[str] = ("crossattn",),
    ):
        if tokenizer not in TEXT_TOKENIZERS:
            raise ValueError(f"text conditioner: unknown tokenizer '{tokenizer}'; choices: {list(TEXT_TOKENIZERS)}")
        if tokenizer == "byte" and vocab_size < BYTE_VOCAB_SIZE:
            raise ValueError(f"text conditioner: tokenizer=byte needs vocab_size >= {BYTE_VOCAB_SIZE}, got {vocab_size}")
        super().__init__(hidden_size, embed_dim, max_length, outputs)
        config = BertConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=4 * hidden_size, max_position_embeddings=max_length,
            type_vocab_size=1, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.tokenizer_kind, self.vocab_size = tokenizer, vocab_size
        self._tokenizer = byte_tokenizer() if tokenizer == "byte" else None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise RuntimeError(
                f"text conditioner '{self.key}': the BPE tokenizer is not learned yet; call fit(captions) "
                "(mmldm train does it with the training captions) or load trained weights"
            )
        return self._tokenizer

    @property
    def vocabulary_from_captions(self) -> bool:  # type: ignore[override]
        return self.tokenizer_kind == "bpe"

    def fit(self, values: Sequence[Any]) -> None:
        """Learn the BPE vocabulary from the training captions (once; a learned or loaded one is kept)."""
        if self._tokenizer is not None:
            return
        captions = [v for v in values if isinstance(v, str)]
        if not captions:
            raise ValueError(
                f"text conditioner '{self.key}' found no captions in the training data (no cond['{self.key}']); "
                "use a dataset with captions or another conditioner"
            )
        tokenizer = train_bpe(captions, self.vocab_size)
        if len(tokenizer) > self.vocab_size:
            raise ValueError(
                f"text conditioner '{self.key}': the captions need {len(tokenizer)} tokens (256 byte symbols and "
                f"4 special tokens at least) but vocab_size={self.vocab_size}; raise vocab_size"
            )
        self._tokenizer = tokenizer

    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def get_extra_state(self) -> Tensor:
        """The learned tokenizer as ``tokenizer.json`` bytes (uint8), saved with the weights."""
        return to_bytes(self._tokenizer if self.tokenizer_kind == "bpe" else None)

    def set_extra_state(self, state: Tensor) -> None:
        if self.tokenizer_kind == "bpe":
            self._tokenizer = from_bytes(torch.as_tensor(state))


def build_text_conditioner(cfg: TextConditionerConfig, *, modality: Modality | None = None) -> TextConditioner:
    """Factory of ``conditioner=text``."""
    conditioner = TextConditioner(
        cfg.tokenizer, cfg.vocab_size, cfg.max_length, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
        cfg.embed_dim, tuple(cfg.outputs),
    )
    conditioner.tag_dropout = cfg.tag_dropout
    return apply_options(conditioner, cfg)
