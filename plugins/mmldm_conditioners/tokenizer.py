"""Tokenizers that need no download: byte-level BPE learned from captions, or plain UTF-8 bytes.

Both are ``tokenizers`` pipelines wrapped in :class:`transformers.PreTrainedTokenizerFast`
with the special tokens ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3`` and the template
``[CLS] text [SEP]``. They serialize to ``tokenizer.json`` text (no pickle).

BPE, not WordPiece: the ``tokenizers`` WordPiece trainer breaks ties between
equally frequent merges in hash order, so two processes (two DDP ranks, or a
resumed run) learn different vocabularies from the same captions; its BPE
trainer is deterministic.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
#: Tokens of the "byte" tokenizer: the special tokens and the 256 byte symbols.
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256

log = logging.getLogger("mmldm")


def _pipeline(model: models.Model) -> Tokenizer:
    """A tokenizer around ``model``: NFKC + lowercase, byte-level pre-tokenization (never unknown)."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if [ids[t] for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise ValueError(f"tokenizer special tokens must have ids 0..3 in the order {SPECIAL_TOKENS}, got {ids}")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=1 << 20,  # the conditioner truncates to its own limit
    )


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (Sennrich et al. 2016) with at most ``vocab_size`` tokens, learned from ``texts``."""
    tok = _pipeline(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (``BYTE_VOCAB_SIZE`` tokens, nothing to learn)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *alphabet])}
    return _wrap(_pipeline(models.BPE(vocab=vocab, merges=[])))


def to_bytes(tokenizer: PreTrainedTokenizerFast | None) -> Tensor:
    """``tokenizer.json`` as a uint8 tensor (empty for None), for a safetensors state dict."""
    if tokenizer is None:
        return torch.zeros(0, dtype=torch.uint8)
    data = bytearray(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    return torch.frombuffer(data, dtype=torch.uint8).clone()


def from_bytes(data: Tensor) -> PreTrainedTokenizerFast | None:
    """Inverse of :func:`to_bytes`."""
    if data.numel() == 0:
        return None
    text = bytes(data.to(torch.uint8).cpu().numpy().tobytes()).decode("utf-8")
    return _wrap(Tokenizer.from_str(text))


#: Conditioner names that already warned about truncation (one warning per process, shared by
#: a conditioner and its copies, e.g. the EMA one).
_WARNED: set[str] = set()


class TokenBatcher:
    """Texts -> ``input_ids`` and ``attention_mask`` ``[B, max_length]`` (padded to ``max_length``).

    Texts longer than ``max_length`` tokens are truncated; the first time that
    happens for a conditioner name, a warning names the limit and an example
    (once per process, not per call).
    """

    def __init__(self, max_length: int):
        if max_length < 2:
            raise ValueError(f"text conditioner: max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self.max_length = max_length

    def __call__(self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], name: str) -> tuple[Tensor, Tensor]:
        """Ids and mask of ``texts``; ``name`` identifies the conditioner in the warning."""
        probe = tokenizer(list(texts), truncation=True, max_length=self.max_length + 1)["input_ids"]
        too_long = [t for t, ids in zip(texts, probe) if len(ids) > self.max_length]
        if too_long and name not in _WARNED:
            _WARNED.add(name)
            log.warning(
                "%s: %d text(s) longer than the limit of %d tokens were truncated, e.g. '%s'; "
                "raise max_length to keep more (this warning is shown once)",
                name, len(too_long), self.max_length, too_long[0][:80],
            )
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
