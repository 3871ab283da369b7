"""Training a neural vocoder on the modality's clips (``mmldm train-vocoder``), and the folder it writes.

The loop is plain PyTorch: random crops of ``segment_frames`` frames from
the "train" clips, their log-mel through the modality's own
:class:`~mmldm_audio.features.LogMel`, the vocoder's waveform compared with
the crop by :class:`VocoderLoss`; AdamW with a linear warmup and a cosine
decay over the budget (steps or minutes, whichever ends first). At the end
the held-out "val" clips are vocoded by the trained vocoder and by
Griffin-Lim, and the folder receives::

    vocoder.safetensors      the network's weights (mmldm.export.save_weights)
    config.yaml              vocoder config, feature settings, provenance, held-out metrics (written last)
    heldout/NNN_real.wav     a few held-out clips, and the same vocoded by the trained vocoder
    heldout/NNN_<name>.wav   (e.g. NNN_vocos.wav) and by Griffin-Lim (NNN_griffinlim.wav)
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import soundfile as sf
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmldm import __version__
from mmldm.export import save_config, save_weights

from . import metrics
from .config import GriffinLimConfig, feature_settings
from .features import fix_length
from .neural_vocoder import WEIGHTS_FILE


class VocoderLoss(nn.Module):
    """Multi-resolution STFT loss plus log-mel L1; :meth:`terms` gives each per clip ``[B]``.

    * ``spectral_convergence`` and ``log_magnitude_l1``: the two terms of Parallel WaveGAN's multi-resolution
      STFT loss (Yamamoto et al. 2020, arXiv 1910.11480, eqs. 4-6) at its three resolutions scaled to the
      sample rate, computed by :func:`.metrics.multi_resolution_stft_terms`, the measure the held-out figures
      and ``benchmarks.vocoder`` report;
    * ``logmel_l1``: ``mean |logmel - logmel~|`` through the modality's :class:`~mmldm_audio.features.LogMel`
      (floored as the features are; the mel loss of HiFi-GAN, Kong et al. 2020, arXiv 2010.05646).

    The total is ``spectral_convergence + log_magnitude_l1 + mel_weight * logmel_l1``.
    """

    def __init__(self, logmel: nn.Module, sample_rate: int, mel_weight: float) -> None:
        super().__init__()
        self.logmel = logmel
        self.sample_rate = sample_rate
        self.mel_weight = mel_weight

    def terms(self, wave: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Per-clip ``[B]`` terms between a vocoded ``wave [B, N]`` and the ``target [B, N]``."""
        out = metrics.multi_resolution_stft_terms(target, wave, self.sample_rate)
        return {**out, "logmel_l1": metrics.logmel_l1(self.logmel(target), self.logmel(wave))}

    def forward(self, wave: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        terms = {k: v.mean() for k, v in self.terms(wave, target).items()}
        total = terms["spectral_convergence"] + terms["log_magnitude_l1"] + self.mel_weight * terms["logmel_l1"]
        return total, {k: float(v.detach()) for k, v in terms.items()}


def random_crops(waves: Sequence[Tensor], length: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """``[batch_size, length]``: clips drawn uniformly, each cropped at a random offset (zero-padded at a
    random offset when shorter than ``length``)."""
    out = torch.zeros(batch_size, length)
    for row, i in enumerate(torch.randint(len(waves), (batch_size,), generator=generator).tolist()):
        wave = waves[i]
        n = min(len(wave), length)
        src = int(torch.randint(len(wave) - n + 1, (), generator=generator))
        dst = int(torch.randint(length - n + 1, (), generator=generator))
        out[row, dst : dst + n] = wave[src : src + n]
    return out


class Budget:
    """Steps and/or minutes; :meth:`progress` is the share used, the larger of the two (0 -> 1)."""

    def __init__(self, max_steps: int, max_minutes: float | None) -> None:
        self.max_steps, self.seconds = max_steps, (max_minutes * 60 if max_minutes else None)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        by_time = self.elapsed() / self.seconds if self.seconds else 0.0
        return max(step / self.max_steps, by_time)


def learning_rate(base: float, step: int, warmup_steps: int, progress: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``base`` to 0 at ``progress`` 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return base * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_vocoder(vocoder: Any, modality: Any, directory: Path, *, seed: int = 0, max_steps: int | None = None,
                  max_minutes: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``vocoder`` (a :class:`~mmldm_audio.neural_vocoder.VocosVocoder`) on ``modality``'s "train" clips,
    measure it on "val" and write the folder (see the module docstring); return its record (``config.yaml``).

    ``max_steps``/``max_minutes`` cap the vocoder config's own budget when given. Raises ``ValueError`` when the
    crops are too short for the STFT loss or there are no training clips, ``FloatingPointError`` naming the step
    and the loss terms when the loss is not finite (nothing is written then).
    """
    cfg, acfg = vocoder.cfg, modality.cfg
    minutes = [m for m in (cfg.max_minutes, max_minutes) if m]
    budget = Budget(min(cfg.max_steps, max_steps or cfg.max_steps), min(minutes) if minutes else None)
    length = crop_length(cfg.segment_frames, acfg.hop_length, acfg.sample_rate)
    waves = modality.waveforms("train").waves
    if not waves:
        raise ValueError("the modality's 'train' split has no clips to train a vocoder on")
    torch.manual_seed(seed)
    loss_fn = VocoderLoss(modality.logmel, acfg.sample_rate, cfg.mel_weight)
    steps, logs = fit_loop(vocoder, modality.logmel, loss_fn, waves, length, budget,
                           torch.Generator().manual_seed(seed), progress)
    seconds = budget.elapsed()
    directory.mkdir(parents=True, exist_ok=True)
    measured = heldout_metrics(vocoder.eval(), modality, loss_fn, cfg.eval_clips, cfg.listen_clips,
                               directory / "heldout")
    save_weights(vocoder, directory / WEIGHTS_FILE)
    record = {
        "vocoder": asdict(cfg),
        "features": feature_settings(acfg),
        "provenance": {
            "producer": "mmldm train-vocoder", "mmldm_version": __version__,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "steps": steps, "train_seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(steps, 1), 4),
            "threads": torch.get_num_threads(),
            "seed": seed, "final_loss": logs,
            "data": {"source": acfg.source, "root": str(Path(acfg.root).resolve()) if acfg.root else None,
                     "split": "train", "clips": len(waves), "peak_level": acfg.peak_level,
                     "val_pattern": acfg.val_pattern, "val_fraction": acfg.val_fraction},
        },
        "metrics": measured,
    }
    save_config(record, directory)  # last: config.yaml marks a complete folder
    return record


def crop_length(segment_frames: int, hop_length: int, sample_rate: int) -> int:
    """Samples of a training crop, ``(segment_frames - 1) * hop_length``; ``ValueError`` naming
    ``vocoder.segment_frames`` when it is shorter than the loss's longest STFT."""
    length = (segment_frames - 1) * hop_length
    longest = max(n for n, _, _ in metrics.stft_resolutions(sample_rate))
    if longest > length:
        raise ValueError(f"vocoder.segment_frames={segment_frames} gives crops of {length} samples, shorter than "
                         f"the loss's longest STFT ({longest} samples at {sample_rate} Hz): raise "
                         f"vocoder.segment_frames to at least {math.ceil(longest / hop_length) + 1}")
    return length


def fit_loop(vocoder: Any, logmel: nn.Module, loss_fn: VocoderLoss, waves: Sequence[Tensor], length: int,
             budget: Budget, generator: torch.Generator, progress: bool) -> tuple[int, dict[str, float]]:
    """Optimize ``vocoder.net`` until ``budget`` is spent; return the steps taken and the last step's loss terms.

    AdamW with HiFi-GAN's betas (0.8, 0.99), gradients clipped at norm 1, the learning rate of
    :func:`learning_rate` recomputed from the budget's progress at every step."""
    cfg, net = vocoder.cfg, vocoder.net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay)
    step, logs = 0, {}
    bar = tqdm(total=budget.max_steps, desc=f"train-vocoder ({cfg.name})", unit="step", disable=not progress,
               dynamic_ncols=True)
    while (done := budget.progress(step)) < 1:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg.lr, step, cfg.warmup_steps, done)
        target = random_crops(waves, length, cfg.batch_size, generator)
        with torch.no_grad():
            features = logmel(target)  # (B, n_mels, segment_frames)
        loss, logs = loss_fn(net(features), target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train-vocoder: non-finite loss at step {step} ({logs}); lower vocoder.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step > 1 and budget.seconds:  # the bar's total follows the time budget's estimate of the steps
            bar.total = min(budget.max_steps, max(step, round(step / max(done, 1e-9))))
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        bar.update()
    bar.close()
    return step, logs


@torch.no_grad()
def heldout_metrics(vocoder: Any, modality: Any, loss_fn: VocoderLoss, max_clips: int, listen: int,
                    listen_dir: Path, batch_size: int = 32) -> dict[str, Any]:
    """Held-out ("val") clips, centred to the modality's clip length, vocoded from their features by ``vocoder``
    and by Griffin-Lim (its default config): per vocoder the means of the :class:`VocoderLoss` terms against the
    real clip, and ``mrstft_distance`` (:func:`.metrics.multi_resolution_stft_distance`, spectral convergence +
    log-magnitude L1). The clips measured are spread evenly over the split; the first ``listen`` of them (at most
    ``batch_size``) are written as WAVs: ``NNN_real.wav``, ``NNN_<vocoder>.wav``, ``NNN_griffinlim.wav``."""
    waves = modality.waveforms("val").waves
    if not waves:
        return {"heldout": {"split": "val", "clips": 0}}
    picks = torch.linspace(0, len(waves) - 1, min(max_clips, len(waves))).round().long().unique().tolist()
    vocoders = {vocoder.cfg.name: vocoder, "griffinlim": modality.vocoder(GriffinLimConfig(name="griffinlim"))}
    sums: dict[str, dict[str, float]] = {name: {} for name in vocoders}
    for start in range(0, len(picks), batch_size):
        chunk = picks[start : start + batch_size]
        real = torch.stack([fix_length(waves[i], modality.length, random_crop=False) for i in chunk])  # (B, N)
        features = modality.features(real)
        outs = {name: v(features) for name, v in vocoders.items()}
        for name, out in outs.items():
            terms = loss_fn.terms(out, real)
            row = {"mrstft_distance": terms["spectral_convergence"] + terms["log_magnitude_l1"], **terms}
            for k, value in row.items():
                sums[name][k] = sums[name].get(k, 0.0) + float(value.sum())
        if start == 0:  # listening files: the first clips measured (at most one batch)
            listen_dir.mkdir(parents=True, exist_ok=True)
            for j in range(min(listen, len(real))):
                for name, wave in {"real": real, **outs}.items():
                    sf.write(listen_dir / f"{j:03d}_{name}.wav", wave[j].clamp(-1, 1).numpy(), modality.sample_rate,
                             subtype="PCM_16")
    n = len(picks)
    return {"heldout": {"split": "val", "clips": n, **{name: {k: round(v / n, 4) for k, v in s.items()}
                                                      for name, s in sums.items()}}}
