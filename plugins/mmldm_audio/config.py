"""Configuration of the audio modality and its vocoders, Griffin-Lim and the neural Vocos (torch-free)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from mmldm.config import ComponentConfig
from mmldm.schema import at_least, check_fields, checked, non_negative, one_of, positive, seed, unit_interval

AUDIO_SOURCES = ("synth", "folder")
AUDIO_LAYOUTS = ("1d", "2d")
#: ``modality.caption`` choices: a ``.txt`` beside the file (else "a recording of {label}"), or built from an
#: FSDD file name ``{digit}_{speaker}_{index}.wav`` ("seven, spoken by george").
AUDIO_CAPTIONS = ("sidecar", "digit_speaker")
#: A ``modality.holdout`` pair: ``<digit>:<speaker>`` as FSDD names them (``7:george``).
HOLDOUT_PAIR = re.compile(r"^([0-9]):([a-z]+)$")
#: ``modality.vocoder`` choices: registered vocoders this modality builds.
AUDIO_VOCODERS = ("griffinlim", "vocos")
#: The vocoders that need no trained weights (every other one needs ``modality.vocoder_path``).
UNTRAINED_VOCODERS = ("griffinlim",)
#: The settings a vocoder's input depends on: a trained vocoder only fits features made with the same ones.
FEATURE_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "log_floor")
#: The file of a trained vocoder folder (``mmldm train-vocoder``) that records its config and features.
VOCODER_CONFIG = "config.yaml"


@dataclass
class AudioConfig(ComponentConfig):
    """Normalized log-mel spectrograms of fixed-length mono clips.

    A clip holds ``(num_frames - 1) * hop_length`` samples, which the
    centred STFT turns into exactly ``num_frames`` frames (defaults: 16,128
    samples, ~1.01 s at 16 kHz, 64 frames).

    Args:
        source (`str`): ``"synth"`` (embedded synthesized sounds, default) or
            ``"folder"`` (WAV/FLAC/OGG files under ``root``).
        label_pattern (`str`, *optional*): regex on the file name whose first
            group is the label (default fits ``{digit}_{speaker}_{index}.wav``);
            ``null`` takes labels from the first sub-folder instead.
        num_frames (`int`): ``T``, a multiple of 8 so the autoencoder can halve it 3 times.
        log_floor (`float`): mel power is clamped to at least this before the log.
        peak_level (`float`, *optional*): when set, every clip (synthesized or read) has its mean
            removed and is scaled to this peak amplitude before cropping (e.g. 0.5 as AudioLDM):
            recordings made at different gains then compare; ``null`` keeps the levels.
        layout (`str`): ``"1d"`` -> ``x [n_mels, T]`` (mel bins as channels,
            ``dims=1``); ``"2d"`` -> ``x [1, n_mels, T]`` (``dims=2``, ``n_mels``
            must then be a multiple of 8 too).
        num_samples (`int`): number of synthesized clips (train + val).
        val_fraction (`float`): share of the clips held out as "val" (a seeded random pick of the
            folder's files; the last synthesized clips).
        val_pattern (`str`, *optional*): source ``"folder"`` only: a regex searched in each file's
            path relative to ``root``; matching files form "val", the others "train", and
            ``val_fraction`` is unused (e.g. ``_theo_`` holds out one FSDD speaker).
        caption (`str`): source ``"folder"``: ``"sidecar"`` (default: a ``<stem>.txt`` beside the file,
            else "a recording of {label}") or ``"digit_speaker"``: built from FSDD file names
            ``{digit}_{speaker}_{index}.wav`` ("seven, spoken by george"; sidecars are ignored, and a
            file named otherwise is an error).
        holdout (`list[str]`): source ``"folder"`` with FSDD file names: ``<digit>:<speaker>`` pairs held
            out of training (``[7:george, 3:theo]``). The "val" split then holds exactly the files of
            those pairs, "train" the others (``val_fraction`` unused; ``val_pattern`` must be null), so
            with ``caption=digit_speaker`` the held-out captions are new sentences of known words. Every
            digit and every speaker must keep some file in training (checked when the files are read).
        vocoder (`str`): how features become sound (``save()`` WAVs, vocoded metrics): ``"griffinlim"``
            (default, no training) or ``"vocos"`` (a neural vocoder trained by ``mmldm train-vocoder``).
        vocoder_path (`str`, *optional*): the folder ``mmldm train-vocoder`` wrote (``vocoder.safetensors`` +
            ``config.yaml``); required by a neural vocoder, whose feature settings (:data:`FEATURE_KEYS`)
            must equal these. An exported model carries the vocoder's weights, so it loads without this folder.
    """

    source: str = one_of("synth", AUDIO_SOURCES)
    root: Optional[str] = None  # required by "folder"
    label_pattern: Optional[str] = r"^(\d+)_"
    sample_rate: int = positive(16000)
    num_frames: int = checked(64, gt=0, multiple_of=8)
    n_fft: int = positive(1024)
    hop_length: int = positive(256)
    n_mels: int = positive(64)
    f_min: float = non_negative(0.0)
    f_max: Optional[float] = positive(None)  # null: sample_rate / 2
    log_floor: float = positive(1e-5)
    peak_level: Optional[float] = checked(None, gt=0, le=1)  # null: keep each file's own level
    layout: str = one_of("1d", AUDIO_LAYOUTS)
    num_samples: int = positive(1000)
    seed: int = seed(0)
    val_fraction: float = unit_interval(0.1, open_high=True)
    val_pattern: Optional[str] = None  # null: split by val_fraction
    vocoder: str = one_of("griffinlim", AUDIO_VOCODERS)
    vocoder_path: Optional[str] = None  # required by a neural vocoder: the folder `mmldm train-vocoder` wrote
    caption: str = one_of("sidecar", AUDIO_CAPTIONS)
    holdout: list[str] = field(default_factory=list)  # e.g. [7:george, 3:theo]; empty: no pair held out

    #: the key that sets :attr:`sample_dims` (named when a denoiser's dims disagree)
    dims_key: ClassVar[str] = "layout"

    @property
    def sample_dims(self) -> int:
        """Spatial dimensions of a sample: 1 (``layout="1d"``) or 2."""
        return 1 if self.layout == "1d" else 2

    def __post_init__(self) -> None:
        check_vocoder(self)
        check_holdout(self)


def parse_holdout(holdout: Any) -> list[tuple[str, str]]:
    """``["7:george"]`` -> ``[("7", "george")]``; ``ValueError`` naming ``modality.holdout`` and the first
    entry that is not ``<digit>:<speaker>``."""
    pairs = []
    for text in holdout:
        match = HOLDOUT_PAIR.match(str(text).strip().lower())
        if match is None:
            raise ValueError(f"modality.holdout: '{text}' is not a pair '<digit>:<speaker>' as FSDD file names "
                             "give them (e.g. 7:george)")
        pairs.append((match.group(1), match.group(2)))
    return pairs


def check_holdout(cfg: AudioConfig) -> None:
    """``ValueError`` naming the key and value when ``caption`` or ``holdout`` cannot be used: either needs
    ``source=folder`` (file names), ``holdout`` excludes ``val_pattern`` and must be ``<digit>:<speaker>``
    pairs. Whether the digits and speakers exist and all stay in training is checked when the files are read
    (:func:`.sources.pair_split`)."""
    for key, used in (("caption", cfg.caption != "sidecar"), ("holdout", bool(cfg.holdout))):
        if used and cfg.source != "folder":
            raise ValueError(f"modality.{key}={_show(getattr(cfg, key))} needs modality.source=folder (it reads "
                             f"FSDD file names), got '{cfg.source}'")
    if not cfg.holdout:
        return
    if cfg.val_pattern:
        raise ValueError(f"modality.holdout={_show(cfg.holdout)} and modality.val_pattern={cfg.val_pattern!r} "
                         "both choose the 'val' split; set modality.val_pattern=null")
    parse_holdout(cfg.holdout)


def _show(value: Any) -> str:
    """A config value as an error shows it: a string as is, a list as ``['7:george', ...]``."""
    return value if isinstance(value, str) else str([str(v) for v in value])


def feature_settings(cfg: AudioConfig) -> dict[str, Any]:
    """The values of :data:`FEATURE_KEYS` (``f_max`` resolved: null is ``sample_rate / 2``)."""
    out = {k: getattr(cfg, k) for k in FEATURE_KEYS}
    out["f_max"] = float(cfg.f_max) if cfg.f_max is not None else cfg.sample_rate / 2
    return out


def check_vocoder(cfg: AudioConfig) -> None:
    """Raise ``ValueError`` when the configured vocoder cannot be used: a neural one without
    ``vocoder_path``, or with a folder whose feature settings differ from ``cfg``'s (checked when the
    folder exists; a missing folder is reported when the vocoder is loaded, since an exported model
    carries the weights and loads without it)."""
    if cfg.vocoder in UNTRAINED_VOCODERS:
        return
    if not cfg.vocoder_path:
        raise ValueError(
            f"modality.vocoder={cfg.vocoder} needs modality.vocoder_path: the folder `mmldm train-vocoder` writes "
            f"(vocoder.safetensors + {VOCODER_CONFIG}), got null; train one first, or use "
            "modality.vocoder=griffinlim (no training)")
    if Path(cfg.vocoder_path).is_dir():
        read_vocoder_folder(cfg)


def read_vocoder_folder(cfg: AudioConfig) -> dict[str, Any]:
    """The record of the trained vocoder folder ``cfg.vocoder_path`` (its ``config.yaml`` as a dict: ``vocoder``,
    ``features``, ``provenance``, ``metrics``), checked against ``cfg``: ``ValueError`` naming the file, the key
    and both values when it was trained on other features or is another vocoder."""
    from omegaconf import OmegaConf

    from mmldm.export import ExportError, load_config

    folder = Path(str(cfg.vocoder_path))
    where = f"modality.vocoder_path={cfg.vocoder_path}"
    if not folder.is_dir():
        raise ValueError(f"{where}: no such folder; expected the folder `mmldm train-vocoder` wrote "
                         f"(vocoder.safetensors + {VOCODER_CONFIG})")
    try:
        record = OmegaConf.to_container(load_config(folder), resolve=True)
    except ExportError as e:
        raise ValueError(f"{where}: {e}") from None
    path = folder / VOCODER_CONFIG
    if not isinstance(record.get("vocoder"), dict) or not isinstance(record.get("features"), dict):
        raise ValueError(f"{path} ({where}) lacks 'vocoder' and 'features': not a folder written by "
                         "`mmldm train-vocoder`")
    name = record["vocoder"].get("name")
    if name != cfg.vocoder:
        raise ValueError(f"{path} holds vocoder.name={name}, but modality.vocoder={cfg.vocoder} ({where})")
    check_features(record["features"], cfg, f"{path} ({where})")
    return record


def check_features(recorded: Mapping[str, Any], cfg: AudioConfig, where: str) -> None:
    """``ValueError`` naming ``where``, the key and both values for the first of :data:`FEATURE_KEYS` whose
    ``recorded`` value (what a vocoder was trained on) differs from ``cfg``'s."""
    ours = feature_settings(cfg)
    for key in FEATURE_KEYS:
        theirs = recorded.get(key, "<absent>")
        same = isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and float(theirs) == float(ours[key])
        if not same:
            raise ValueError(
                f"{where}: the vocoder was trained on features.{key}={theirs}, but modality.{key}={ours[key]}; "
                f"a vocoder only fits the features it was trained on ({', '.join(FEATURE_KEYS)}): train one "
                "for these settings with `mmldm train-vocoder`, or use modality.vocoder=griffinlim")


@dataclass
class GriffinLimConfig(ComponentConfig):
    """Griffin-Lim phase reconstruction (Griffin & Lim 1984) with momentum (Perraudin et al. 2013).

    Args:
        n_iter (`int`): iterations; 32 is audible, 100+ is cleaner.
        momentum (`float`): fast Griffin-Lim momentum in [0, 1).
    """

    n_iter: int = positive(32)
    momentum: float = unit_interval(0.99, open_high=True)


@dataclass
class VocosConfig(ComponentConfig):
    """A Vocos-style neural vocoder (Siuzdak 2023, arXiv 2306.00814) and its training recipe.

    A ConvNeXt stack (Liu et al. 2022) over the log-mel frames predicts, per frame, the STFT
    log-magnitude and phase of the feature STFT (the modality's ``n_fft`` and ``hop_length``); an
    inverse STFT makes the waveform, so one network frame is one hop. Trained by
    ``mmldm train-vocoder`` on random crops of the training clips with a multi-resolution STFT loss
    (spectral convergence + log-magnitude L1 at Parallel WaveGAN's three resolutions scaled to the sample
    rate, Yamamoto et al. 2020) plus a log-mel L1 through the modality's own mel filter bank; no
    adversarial term.

    Args:
        dim (`int`): channels of the ConvNeXt blocks.
        hidden_dim (`int`): width of each block's pointwise MLP (Vocos: 3 x ``dim``).
        layers (`int`): ConvNeXt blocks.
        kernel_size (`int`): odd temporal kernel of the depthwise convolutions (frames).
        segment_frames (`int`): frames per training crop, ``(segment_frames - 1) * hop_length`` samples (at least
            the loss's longest STFT: 512 samples at 8 kHz, 1024 at 16 kHz).
        batch_size (`int`): crops per step.
        lr (`float`): AdamW peak learning rate, after ``warmup_steps`` a cosine decay to 0 over the budget
            (steps or minutes, whichever ends first).
        max_steps (`int`), max_minutes (`float`, *optional*): the budget (``trainer.max_steps`` /
            ``trainer.max_minutes`` cap them when set).
        mel_weight (`float`): weight of the log-mel L1 against the STFT terms (each weighted 1).
        eval_clips (`int`): held-out ("val") clips measured at the end; listen_clips of them are written as WAVs.
    """

    dim: int = positive(128)  # sized to train on a few CPU cores in tens of minutes (Vocos: 512, 8 layers)
    hidden_dim: int = positive(384)
    layers: int = positive(6)
    kernel_size: int = checked(7, gt=0, odd=True)
    # training recipe (mmldm train-vocoder)
    segment_frames: int = at_least(8, 32)
    batch_size: int = positive(16)
    lr: float = positive(1.0e-3)
    weight_decay: float = non_negative(0.01)
    warmup_steps: int = non_negative(100)
    max_steps: int = positive(100000)  # above what 30 minutes hold on a CPU (~25,000 steps on 2 threads): time binds
    max_minutes: Optional[float] = positive(30.0)  # null: max_steps alone
    mel_weight: float = non_negative(1.0)
    eval_clips: int = positive(200)
    listen_clips: int = non_negative(3)

    def __post_init__(self) -> None:
        check_fields(self, "vocoder")
