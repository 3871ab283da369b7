"""Audio sources: synthesized clips or a folder of WAV/FLAC/OGG files, as mono waveforms.

Folders named as the Free Spoken Digit Dataset names its files (``{digit}_{speaker}_{index}.wav``) can
be captioned from the names ("seven, spoken by george", :func:`digit_speaker_caption`) and split by
held-out ``(digit, speaker)`` pairs (:func:`pair_split`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

from mmldm.data import SkippedFiles, check_split, list_files, read_sidecar_text

from .config import parse_holdout
from .synth import CLASSES, synthesize

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
#: Largest sample magnitude a file may hold: decoded integer PCM lies in [-1, 1); float files are nominally
#: there too but may exceed it a little (inter-sample peaks, un-normalized mixes), so the bound is generous
#: (+24 dBFS). A larger or non-finite sample rejects the file before it reaches the dataset statistics.
MAX_ABS_SAMPLE = 16.0
#: An FSDD file name: ``{digit}_{speaker}_{index}.{suffix}``.
FSDD_NAME = re.compile(r"^([0-9])_([A-Za-z]+)_([0-9]+)[.][A-Za-z0-9]+$")
#: Digit -> its English word, as :func:`digit_speaker_caption` writes it.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class AudioSet:
    """Mono float32 waveforms ``[N_i]`` at the configured rate, with labels, captions and, for files,
    their paths relative to the folder (POSIX form)."""

    waves: list[Tensor]
    labels: np.ndarray | None = None  # int64 [N]
    texts: list[str] | None = None
    class_names: list[str] = field(default_factory=list)
    names: list[str] | None = None

    def subset(self, idx: np.ndarray) -> "AudioSet":
        return AudioSet(
            [self.waves[i] for i in idx],
            None if self.labels is None else self.labels[idx],
            None if self.texts is None else [self.texts[i] for i in idx],
            self.class_names,
            None if self.names is None else [self.names[i] for i in idx],
        )


def load_synth(indices: Iterable[int], seed: int, sample_rate: int, length: int) -> AudioSet:
    """Synthesized clips ``indices`` of ``seed`` (see :mod:`.synth`)."""
    clips = [synthesize(seed, i, sample_rate, length) for i in indices]
    return AudioSet(
        [torch.from_numpy(w) for w, _, _ in clips],
        np.array([k for _, k, _ in clips], dtype=np.int64),
        [t for _, _, t in clips],
        list(CLASSES),
    )


def read_audio(path: Path, sample_rate: int) -> Tensor:
    """A file as mono float32 ``[N]`` (channels averaged) resampled to ``sample_rate`` with torchaudio.

    Raises ``ValueError`` when it cannot be decoded (whatever the decoder raised),
    has no samples, a non-finite sample or one beyond ``±MAX_ABS_SAMPLE`` (the reason
    then names the first such sample and its value; either would make every item NaN
    through the dataset statistics), or only zeros (a silent clip would train as a zero tensor);
    :func:`load_folder` reports it with the file's name.
    """
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - libsndfile and its wrappers raise several types
        raise ValueError(f"cannot decode ({type(e).__name__}: {e})") from e
    if data.size == 0:
        raise ValueError("no samples")
    _check_sample_values(data)
    if not data.any():
        raise ValueError("every sample is zero (silent)")
    wave = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def _check_sample_values(data: np.ndarray) -> None:
    """Raise ``ValueError`` when ``data [N, channels]`` holds a non-finite sample, or one beyond
    ``±MAX_ABS_SAMPLE`` (then naming the first such sample and its value)."""
    if not np.isfinite(data).all():
        raise ValueError("non-finite samples")
    loud = np.abs(data) > MAX_ABS_SAMPLE
    if loud.any():
        frame, channel = np.argwhere(loud)[0]
        raise ValueError(f"sample {frame} (channel {channel}) is {float(data[frame, channel]):g}, beyond "
                         f"±{MAX_ABS_SAMPLE:g} (mmldm_audio.sources.MAX_ABS_SAMPLE; audio is nominally in [-1, 1])")


def normalize_peak(data: AudioSet, level: float) -> AudioSet:
    """Each clip with its mean removed and scaled to peak ``level`` (silent clips stay silent), as
    AudioLDM's data pipeline does (Liu et al. 2023, arXiv 2301.12503): recording gain stops being a feature."""
    waves = []
    for wave in data.waves:
        wave = wave - wave.mean()
        waves.append(wave * (level / wave.abs().max()) if wave.abs().max() > 0 else wave)
    return AudioSet(waves, data.labels, data.texts, data.class_names, data.names)


def _label(path: Path, root: Path, pattern: re.Pattern | None) -> str:
    """The label of ``path``: the regex's first group on the file name, or the first sub-folder."""
    if pattern is None:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise ValueError(f"audio.label_pattern=null takes labels from sub-folders, but {path} is at the top of {root}")
        return parts[0]
    match = pattern.search(path.name)
    if match is None or not match.groups():
        raise ValueError(
            f"file name '{path.name}' does not match audio.label_pattern={pattern.pattern!r} "
            "(its first group is the label); fix the pattern or set it to null for sub-folder labels"
        )
    return match.group(1)


def _class_names(labels: list[str]) -> list[str]:
    """Sorted distinct labels, numerically when all are integers (so label "3" gets id 3 for 0..9)."""
    names = sorted(set(labels))
    return sorted(names, key=int) if all(n.isdigit() for n in names) else names


def digit_speaker(name: str) -> tuple[str, str]:
    """``"7_george_12.wav"`` (or a path ending in it) -> ``("7", "george")``; ``ValueError`` naming the file
    when its name is not ``{digit}_{speaker}_{index}.{suffix}``."""
    match = FSDD_NAME.match(Path(name).name)
    if match is None:
        raise ValueError(f"file name '{name}' is not '<digit>_<speaker>_<index>.wav' (the FSDD naming that "
                         "modality.caption=digit_speaker and modality.holdout read)")
    return match.group(1), match.group(2).lower()


def recording_index(name: str) -> int:
    """``"7_george_12.wav"`` -> ``12``: the take of that digit by that speaker; errors as :func:`digit_speaker`."""
    digit_speaker(name)  # the same check and message
    return int(FSDD_NAME.match(Path(name).name).group(3))


def digit_speaker_caption(name: str) -> str:
    """The caption of an FSDD file: ``"7_george_12.wav"`` -> ``"seven, spoken by george"``."""
    digit, speaker = digit_speaker(name)
    return f"{DIGIT_WORDS[int(digit)]}, spoken by {speaker}"


def load_folder(root: Path, sample_rate: int, label_pattern: str | None, caption: str = "sidecar") -> AudioSet:
    """Every WAV/FLAC/OGG under ``root`` (sorted by path), with labels from ``label_pattern`` (or the
    first sub-folder when ``None``) and captions from a ``.txt`` file of the same stem beside each file
    (else ``"a recording of {label}"``), or with ``caption="digit_speaker"`` from FSDD file names
    (:func:`digit_speaker_caption`; a file named otherwise is an error). Corrupt, empty, silent, non-finite or
    absurd files, paths that are no regular file (FIFOs: never opened), dangling links, symlink loops and
    captions that are not UTF-8 (the item keeps the default caption) are skipped and reported in one warning
    naming each."""
    if not root.is_dir():
        raise FileNotFoundError(f"audio.root={root} is not a directory (source 'folder' reads WAV/FLAC/OGG files)")
    pattern = re.compile(label_pattern) if label_pattern else None
    skipped = SkippedFiles()
    files = list_files(root, AUDIO_SUFFIXES, skipped)
    waves, labels, texts, names = [], [], [], []
    for path in files:
        label = _label(path, root, pattern)
        try:
            waves.append(read_audio(path, sample_rate))
        except ValueError as e:
            skipped.add(path.relative_to(root), e)
            continue
        labels.append(label)
        names.append(path.relative_to(root).as_posix())
        if caption == "digit_speaker":
            texts.append(digit_speaker_caption(path.name))
            continue
        sidecar = read_sidecar_text(path.with_suffix(".txt"), root, skipped)
        texts.append(sidecar if sidecar is not None else f"a recording of {label}")
    skipped.warn(logger, f"audio folder {root}")
    if not waves:
        raise FileNotFoundError(f"audio.root={root}: no readable {'/'.join(AUDIO_SUFFIXES)} files")
    classes = _class_names(labels)
    return AudioSet(waves, np.array([classes.index(k) for k in labels], dtype=np.int64), texts, classes, names)


def pattern_split(names: list[str], val_pattern: str, split: str, root: str | Path) -> np.ndarray:
    """Indices (int64, file order) of ``split``: files whose relative path matches the regex
    ``val_pattern`` (``re.search``) are "val", the others "train" (e.g. ``_theo_`` holds out a speaker).

    Raises ``ValueError`` naming the pattern when it matches none or all of the readable files.
    """
    check_split(split)
    regex = re.compile(val_pattern)
    is_val = np.array([regex.search(n) is not None for n in names], dtype=bool)
    if not is_val.any() or is_val.all():
        what = "none" if not is_val.any() else "all"
        raise ValueError(
            f"audio.val_pattern={val_pattern!r} matches {what} of the {len(names)} readable files under {root} "
            f"(e.g. {names[0]!r}); it must select some but not all files (matches form 'val', the rest 'train')"
        )
    return np.flatnonzero(is_val if split == "val" else ~is_val)


def pair_split(names: list[str], holdout: list[str], split: str, root: str | Path) -> np.ndarray:
    """Indices (int64, file order) of ``split`` under held-out ``<digit>:<speaker>`` pairs: the files of those
    pairs are "val", the others "train".

    Raises ``ValueError`` naming ``modality.holdout`` and the pair when a file is not FSDD-named, a pair names a
    digit or speaker that no file has or matches no file, or when, with the pairs before it, it would leave a
    digit or a speaker with no file in training.
    """
    check_split(split)
    pairs = parse_holdout(holdout)
    found = [digit_speaker(n) for n in names]
    digits, speakers = sorted({d for d, _ in found}), sorted({s for _, s in found})
    held: set[tuple[str, str]] = set()
    for text, pair in zip(holdout, pairs):
        for value, known, what in ((pair[0], digits, "digit"), (pair[1], speakers, "speaker")):
            if value not in known:
                raise ValueError(f"modality.holdout: '{text}' names the {what} '{value}', which no file under {root} "
                                 f"has ({what}s: {', '.join(known)})")
        if pair not in found:
            raise ValueError(f"modality.holdout: '{text}' matches no file under {root}")
        held.add(pair)
        kept = [p for p in found if p not in held]
        for index, known, what in ((0, digits, "digit"), (1, speakers, "speaker")):
            if len({p[index] for p in kept}) < len(known):
                raise ValueError(f"modality.holdout: '{text}' would leave no training file of the {what} "
                                 f"'{pair[index]}' (with the pairs before it all its files are held out); every "
                                 f"{what} must keep some file in training")
    is_val = np.array([p in held for p in found], dtype=bool)
    return np.flatnonzero(is_val if split == "val" else ~is_val)
