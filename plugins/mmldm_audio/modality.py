"""The audio modality: fixed-length mono clips as normalized log-mel spectrograms.

``layout="1d"``: ``x [n_mels, T]`` (``dims=1``, mel bins as channels);
``layout="2d"``: ``x [1, n_mels, T]`` (``dims=2``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from matplotlib import colormaps
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mmldm.data import check_split, split_indices
from mmldm.config import ComponentConfig
from mmldm.interfaces import Modality, Vocoder
from mmldm.preview import tile

from . import metrics, sources
from .config import (AUDIO_CAPTIONS, AUDIO_LAYOUTS, AUDIO_SOURCES, UNTRAINED_VOCODERS, AudioConfig, check_features,
                     check_holdout, check_vocoder)
from .features import LogMel, denormalize, f_max_of, fix_length, measure_stats, normalize



def validate(cfg: AudioConfig) -> None:
    """Raise ``ValueError`` naming the first bad key of ``cfg``."""
    checks = [
        (cfg.source in AUDIO_SOURCES, f"audio.source='{cfg.source}' is not one of {', '.join(AUDIO_SOURCES)}"),
        (cfg.layout in AUDIO_LAYOUTS, f"audio.layout='{cfg.layout}' is not one of {', '.join(AUDIO_LAYOUTS)}"),
        (cfg.caption in AUDIO_CAPTIONS, f"modality.caption='{cfg.caption}' is not one of {', '.join(AUDIO_CAPTIONS)}"),
        (cfg.num_frames > 0 and cfg.num_frames % 8 == 0,
         f"audio.num_frames={cfg.num_frames} must be a positive multiple of 8 (the autoencoder halves time up to "
         f"3 times); e.g. {max(8, cfg.num_frames // 8 * 8)}"),
        (cfg.layout != "2d" or cfg.n_mels % 8 == 0,
         f"audio.n_mels={cfg.n_mels} must be a multiple of 8 with layout '2d' (mel bins are a spatial axis)"),
        (0 <= cfg.f_min < f_max_of(cfg) <= cfg.sample_rate / 2,
         f"audio.f_min={cfg.f_min}, f_max={cfg.f_max}: need 0 <= f_min < f_max <= sample_rate/2={cfg.sample_rate / 2}"),
        (cfg.log_floor > 0, f"audio.log_floor={cfg.log_floor} must be > 0"),
        (cfg.peak_level is None or 0 < cfg.peak_level <= 1, f"audio.peak_level={cfg.peak_level} must be in (0, 1] or null"),
        (cfg.source != "folder" or bool(cfg.root), f"audio.source='folder' needs audio.root (a directory), got {cfg.root!r}"),
        (0.0 <= cfg.val_fraction < 1.0, f"audio.val_fraction={cfg.val_fraction} must be in [0, 1)"),
        (not cfg.val_pattern or cfg.source == "folder",
         f"audio.val_pattern={cfg.val_pattern!r} needs audio.source='folder' (it matches file paths), "
         f"got '{cfg.source}'"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_vocoder(cfg)
    check_holdout(cfg)
    for key in ("label_pattern", "val_pattern"):
        pattern = getattr(cfg, key)
        try:
            re.compile(pattern or "")
        except re.error as e:
            raise ValueError(f"audio.{key}={pattern!r} is not a valid regex: {e}") from e


def check_finite(logmel: Tensor, names: list[str] | None) -> None:
    """Raise ``ValueError`` naming the clips whose log-mel ``[N, n_mels, T]`` is not finite: one such clip
    would make the dataset statistics, hence every item, NaN. :func:`.sources.read_audio` rejects the files
    that cause it (non-finite or absurd samples) first; this is the last guard before the statistics."""
    bad = (~torch.isfinite(logmel)).flatten(1).any(1).nonzero().flatten().tolist()
    if bad:
        named = ", ".join(names[i] if names else f"clip {i}" for i in bad[:10])
        raise ValueError(f"non-finite log-mel in {len(bad)} training clip(s) ({named}); the dataset statistics "
                         "would be NaN")


class AudioDataset(Dataset):
    """Items ``{"x": FloatTensor[n_mels, T] or [1, n_mels, T], "cond": {"class": int, "text": str}}``.

    Waveforms are cropped (randomly when ``random_crop``, else centred) or
    padded to the modality's clip length, then turned into normalized log-mel.

    The features of every clip whose crop is fixed (all clips without ``random_crop``; with it, the
    clips no longer than the clip length, which are only padded) are computed once, in batches, when
    the dataset is made (a batch of 32 spoken digits then loads in 0.2 ms instead of 5 ms on an idle
    2-core CPU, and per-item STFTs no longer compete with training for the cores on a busy one). Only
    the clips that are randomly cropped are analysed per item. Both give the same features.
    """

    def __init__(self, data: sources.AudioSet, modality: "AudioModality", random_crop: bool,
                 batch_size: int = 256) -> None:
        self.data = data
        self.modality = modality
        self.random_crop = random_crop
        length = modality.length
        fixed = [i for i, w in enumerate(data.waves) if not random_crop or w.shape[-1] <= length]
        self._row = {i: r for r, i in enumerate(fixed)}
        waves = [fix_length(data.waves[i], length, random_crop=False) for i in fixed]
        parts = [modality.features(torch.stack(waves[j : j + batch_size])) for j in range(0, len(waves), batch_size)]
        self._features = torch.cat(parts) if parts else None

    def __len__(self) -> int:
        return len(self.data.waves)

    def __getitem__(self, i: int) -> dict:
        row = self._row.get(i)
        if row is not None:
            x = self._features[row]
        else:
            wave = fix_length(self.data.waves[i], self.modality.length, self.random_crop)
            x = self.modality.features(wave[None])[0]
        cond: dict = {"text": self.data.texts[i]} if self.data.texts is not None else {}
        if self.data.labels is not None:
            cond["class"] = int(self.data.labels[i])
        return {"x": x, "cond": cond}


class AudioModality(Modality):
    """Audio as normalized log-mel spectrograms (see :class:`AudioConfig`).

    Attributes:
        length (`int`): samples per clip, ``(num_frames - 1) * hop_length``.
        stats (`dict[str, Tensor]`): per-mel-bin ``mean``/``std`` ``[n_mels]`` of
            the training log-mel (measured on first use; :meth:`state_dict` exports them).
    """

    name = "audio"

    def __init__(self, cfg: AudioConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        self.dims = 1 if cfg.layout == "1d" else 2
        self.channels = cfg.n_mels if cfg.layout == "1d" else 1
        self.sample_rate = cfg.sample_rate
        self.length = (cfg.num_frames - 1) * cfg.hop_length
        self.logmel = LogMel(cfg)
        self._sets: dict[str, sources.AudioSet] = {}
        self._folder: sources.AudioSet | None = None
        self._stats: dict[str, Tensor] | None = None
        self._vocoder = None
        # a trained vocoder's record (config.yaml of its folder); from an export: its weights come with it
        self._vocoder_record: dict | None = None
        self._vocoder_exported = False

    @property
    def sample_shape(self) -> tuple[int, ...]:
        spatial = (self.cfg.num_frames,) if self.dims == 1 else (self.cfg.n_mels, self.cfg.num_frames)
        return (self.channels, *spatial)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.waveforms("train").class_names)

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return list(self.waveforms("train").class_names)

    def waveforms(self, split: str) -> sources.AudioSet:
        """The raw clips of ``split`` (cached): synth clips ``[length]``, folder clips of any length."""
        check_split(split)
        if split not in self._sets:
            data = self._load(split)
            if self.cfg.peak_level is not None:
                data = sources.normalize_peak(data, self.cfg.peak_level)
            self._sets[split] = data
        return self._sets[split]

    def _load(self, split: str) -> sources.AudioSet:
        """Split ``split`` of the source: the last synthesized clips are "val"; folder files by the held-out
        ``(digit, speaker)`` pairs of ``holdout``, else by ``val_pattern`` when set, else a seeded
        ``val_fraction`` pick."""
        c = self.cfg
        if c.source == "synth":  # clip i is synthesized from (seed, i)
            indices = split_indices(c.num_samples, c.val_fraction, split, c.seed, shuffle=False)
            return sources.load_synth(indices, c.seed, c.sample_rate, self.length)
        if self._folder is None:  # read once for both splits
            self._folder = sources.load_folder(Path(c.root), c.sample_rate, c.label_pattern, c.caption)
        if c.holdout:
            idx = sources.pair_split(self._folder.names or [], list(c.holdout), split, c.root)
        elif c.val_pattern:
            idx = sources.pattern_split(self._folder.names or [], c.val_pattern, split, c.root)
        else:
            idx = split_indices(len(self._folder.waves), c.val_fraction, split, c.seed)
        return self._folder.subset(idx)

    @property
    def stats(self) -> dict[str, Tensor]:
        if self._stats is None:
            data = self.waveforms("train")
            waves = [fix_length(w, self.length, random_crop=False) for w in data.waves]
            with torch.no_grad():
                logmel = torch.cat([self.logmel(torch.stack(waves[i : i + 256])) for i in range(0, len(waves), 256)])
            check_finite(logmel, data.names)
            self._stats = measure_stats(logmel)
        return self._stats

    def state_dict(self) -> dict[str, dict]:
        """``{"stats": {"mean": [n_mels], "std": [n_mels]}}`` as plain lists (written to an export's config.yaml),
        plus ``"vocoder"``, the trained vocoder's record (its config, feature settings, provenance, metrics),
        when the modality uses one (its weights: :meth:`trained_modules`)."""
        state: dict[str, dict] = {"stats": {k: v.tolist() for k, v in self.stats.items()}}
        if self.cfg.vocoder not in UNTRAINED_VOCODERS:
            self.vocoder()  # loads the record with the weights
            state["vocoder"] = self._vocoder_record
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s statistics, and a trained vocoder's record: the vocoder is then built
        from it, untrained, for its weights to be loaded into :meth:`trained_modules` (as ``from_pretrained``
        does) instead of from ``vocoder_path``."""
        stats = {k: torch.as_tensor(state["stats"][k], dtype=torch.float32) for k in ("mean", "std")}
        if stats["mean"].shape != (self.cfg.n_mels,):
            raise ValueError(f"stats have {tuple(stats['mean'].shape)} mel bins, audio.n_mels={self.cfg.n_mels}")
        self._stats, self._vocoder = stats, None
        record = state.get("vocoder")
        if record is not None and self.cfg.vocoder not in UNTRAINED_VOCODERS:
            check_features(record["features"], self.cfg, "modality_state.vocoder")
            self._vocoder_record, self._vocoder_exported = dict(record), True

    def features(self, wave: Tensor) -> Tensor:
        """``wave [B, N]`` -> normalized log-mel ``[B, C, *s]`` in the configured layout."""
        with torch.no_grad():
            return normalize(self.logmel(wave), self.stats, self.cfg.layout)

    def to_logmel(self, x: Tensor) -> Tensor:
        """Normalized ``[B, C, *s]`` -> log-mel ``[B, n_mels, T]``, floored at ``log(log_floor)`` like the
        features (a decoder's values below the floor are silence too)."""
        return denormalize(x.float(), self.stats, self.cfg.layout).clamp(min=math.log(self.cfg.log_floor))

    def dataset(self, split: str) -> AudioDataset:
        data = self.waveforms(split)
        self.stats  # measured here once, not in every data-loader worker
        return AudioDataset(data, self, random_crop=split == "train")

    def vocoder(self, cfg: ComponentConfig | None = None) -> Vocoder:
        """The configured vocoder (cached): Griffin-Lim (``vocoder="griffinlim"``) or the trained neural vocoder
        of ``vocoder_path`` (or of the export this modality was loaded from). ``cfg``: build that vocoder
        config instead (e.g. a Griffin-Lim with more iterations), uncached; a neural one is then untrained."""
        from mmldm.plugins import registry

        if cfg is not None:
            return registry().build("vocoder", cfg, modality=self)
        if self._vocoder is None:
            if self.cfg.vocoder in UNTRAINED_VOCODERS:
                self._vocoder = registry().build("vocoder", {"name": self.cfg.vocoder}, modality=self)
            elif self._vocoder_exported:  # its weights are loaded by from_pretrained (trained_modules)
                self._vocoder = registry().build("vocoder", self._vocoder_record["vocoder"], modality=self).eval()
            else:
                from .neural_vocoder import load_vocoder

                self._vocoder, self._vocoder_record = load_vocoder(self)
        return self._vocoder

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        """``{"vocoder": ...}`` when the configured vocoder is a trained one (an export carries its weights)."""
        return {} if self.cfg.vocoder in UNTRAINED_VOCODERS else {"vocoder": self.vocoder()}

    def save(self, samples: Tensor, directory: Path, prefix: str = "sample",
             titles: Sequence[str] | None = None) -> list[Path]:
        """Per sample ``{prefix}_{i:04d}.wav`` (the configured :meth:`vocoder`) and ``.png`` (spectrogram), plus
        ``{prefix}_grid.png`` (tiles titled with ``titles``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        waves = self.vocoder()(samples.detach().cpu())
        pictures = spectrogram_pictures(self.to_logmel(samples.detach().cpu()), math.log(self.cfg.log_floor))
        paths: list[Path] = []
        for i, (wave, picture) in enumerate(zip(waves, pictures)):
            paths.append(directory / f"{prefix}_{i:04d}.wav")
            sf.write(paths[-1], wave.numpy(), self.sample_rate, subtype="PCM_16")
            paths.append(directory / f"{prefix}_{i:04d}.png")
            Image.fromarray(picture).save(paths[-1])
        paths.append(directory / f"{prefix}_grid.png")
        Image.fromarray(tile(pictures, titles=titles)).save(paths[-1])
        return paths

    # ---- a person's files and regions (editing) ---------------------------------
    def load(self, path: str | Path) -> Tensor:
        """A recording (WAV, FLAC, OGG) as a sample ``[C, *s]``, analysed as the dataset analyses its clips:
        mono (channels averaged), resampled to ``sample_rate``, peak-normalized when ``peak_level`` is set,
        then normalized log-mel with the model's statistics. Unlike the dataset (which centres its crops and
        padding), the clip starts where the file starts: a longer file is cut after ``length`` samples, a
        shorter one zero-padded at the end, so a time in the file is the same time in the sample (what
        ``gap:`` regions and the written WAVs refer to)."""
        from .sources import AUDIO_SUFFIXES, AudioSet, normalize_peak, read_audio

        path = self.check_input(path, AUDIO_SUFFIXES, f"a recording ({', '.join(AUDIO_SUFFIXES)})")
        try:
            wave = read_audio(path, self.sample_rate)  # (N,)
        except ValueError as e:  # names no file
            raise ValueError(f"{path}: cannot load as a sample of the audio modality: {e}") from None
        if self.cfg.peak_level is not None:
            wave = normalize_peak(AudioSet([wave]), self.cfg.peak_level).waves[0]
        wave = torch.nn.functional.pad(wave[: self.length], (0, max(0, self.length - wave.shape[-1])))
        return self.features(wave[None])[0]

    def load_mask(self, path: str | Path) -> Tensor:
        """Refused: a recording does not say which frames to generate. Masks of audio are regions
        (``gap:<start_s>-<end_s>``, ``box:...``) or ``.npy`` arrays of 0/1 (:func:`mmldm.regions.read_mask`)."""
        raise ValueError(f"{path}: a sound file is no mask; give the frames to generate as a region "
                         f"(gap:<start_s>-<end_s> in seconds, or box:...) or as a .npy array of 0/1 of shape "
                         f"{list(self.sample_shape[1:])} or {list(self.sample_shape)}")

    @property
    def frame_rate(self) -> float:
        """Frames per second, ``sample_rate / hop_length``; frame ``t`` is centred at ``t / frame_rate`` s."""
        return self.sample_rate / self.cfg.hop_length

    def region_names(self) -> dict[str, str]:
        """``gap:<start_s>-<end_s>``: the frames centred in ``[start, end)`` seconds, every mel bin."""
        return {"gap:<start_s>-<end_s>": f"the frames centred between two times in seconds (the clip lasts "
                                         f"{self.length / self.sample_rate:.3g} s, {self.frame_rate:.4g} frames/s)"}

    def named_region(self, name: str, argument: str | None) -> Tensor:
        """The ``gap:<start_s>-<end_s>`` mask: ``[1, T]`` (layout 1d) or ``[1, n_mels, T]`` (2d), 1 on the frames
        whose centres ``t / frame_rate`` lie in ``[start, end)``."""
        from mmldm.regions import parse_range

        start, end = parse_range(argument or "", f"gap:{argument}")
        duration = self.length / self.sample_rate
        first, stop = math.ceil(start * self.frame_rate), math.ceil(end * self.frame_rate)
        frames = self.cfg.num_frames
        if start < 0 or first >= min(stop, frames):
            raise ValueError(f"region 'gap:{argument}' holds no frame: times are seconds within the clip, "
                             f"0-{duration:.3g} s ({frames} frames centred every {1 / self.frame_rate:.3g} s)")
        mask = torch.zeros(1, *self.sample_shape[1:])  # (1, T) or (1, n_mels, T)
        mask[..., first:stop] = 1
        return mask

    def erase(self, x: Tensor, mask: Tensor) -> Tensor:
        """Silence (the log-mel floor) where ``mask`` is 1."""
        floor = torch.full((1, self.cfg.n_mels, self.cfg.num_frames), math.log(self.cfg.log_floor))
        silence = normalize(floor, self.stats, self.cfg.layout).to(x)  # (1, C, *s)
        return torch.lerp(x, silence.expand_as(x), mask.to(x.dtype))

    def reconstruction_metrics(self, x: Tensor, x_rec: Tensor) -> dict[str, float]:
        """Batch means of ``logmel_l1``, ``spectral_convergence`` and ``log_spectral_distance`` (dB) between
        the log-mels of ``x`` and ``x_rec`` (both ``[B, C, *s]``), in the denormalized, floored log-mel
        domain (see :mod:`.metrics`)."""
        return metrics.spectral_metrics(self.to_logmel(x), self.to_logmel(x_rec))

    def generation_metrics(self, real: Tensor, generated: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """``mean_spectrum_l1`` and ``std_spectrum_l1`` between the two sets' per-mel-bin log-mel statistics
        (:func:`.metrics.distribution_metrics`; labels unused). Class accuracy and the Frechet distance
        come from the independent classifier of :mod:`mmldm.evaluation.classifier`."""
        return metrics.distribution_metrics(self.to_logmel(real), self.to_logmel(generated))

    def save_reconstructions(self, x: Tensor, x_rec: Tensor, directory: Path) -> list[Path]:
        """Listening files: per clip ``input_XXXX.wav`` and ``reconstruction_XXXX.wav`` (both vocoded) and a
        ``compare_XXXX.png`` of "input | autoencoder | autoencoder+vocoder", plus ``compare_grid.png``
        (:func:`.listening.save_listening_files`)."""
        from .listening import save_listening_files

        return save_listening_files(self, x, x_rec, directory)


def spectrogram_pictures(logmel: Tensor, vmin: float, scale: int = 3) -> np.ndarray:
    """``logmel [B, n_mels, T]`` -> RGB uint8 ``[B, n_mels*scale, T*scale, 3]``, low frequencies at the bottom,
    "magma" colours over ``[vmin, batch max]``."""
    values = ((logmel - vmin) / (logmel.max() - vmin).clamp(min=1e-6)).clamp(0, 1).flip(1).numpy()
    rgb = colormaps["magma"](values)[..., :3]  # (B, n_mels, T, 3)
    rgb = rgb.repeat(scale, axis=1).repeat(scale, axis=2)
    return (rgb * 255).round().astype(np.uint8)


