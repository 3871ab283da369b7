"""Audio quality measures on log-mel spectrograms, and the Griffin-Lim ceiling.

Every measure takes log-mel spectrograms ``[B, n_mels, T]`` in the
**denormalized** domain: the natural log of mel *power*, ``log M`` with
``M = mel(|STFT|^2)``, floored at ``log(log_floor)`` (the modality's
``to_logmel``), not the per-bin standardized model features. Numbers then do
not depend on the normalization statistics of a run, and every mel bin
counts the same.

Reconstruction measures (per clip ``[B]``; the modality reports batch means):

* :func:`logmel_l1` (nepers of power),
* :func:`spectral_convergence` (a ratio, 0 is perfect),
* :func:`log_spectral_distance` (dB).

:func:`griffinlim_ceiling` measures how much vocoding alone loses, so an
autoencoder's spectral error can be compared with what any Griffin-Lim
waveform of the *real* mel spectrogram already misses.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mmldm.interfaces import Autoencoder, Vocoder

DB_PER_NEPER = 10 / math.log(10)  # 10 log10(P) = DB_PER_NEPER * ln(P)


def logmel_l1(logmel: Tensor, logmel_rec: Tensor) -> Tensor:
    r"""Mean absolute log-mel difference per clip, ``[B]``.

    ``L1 = 1/(F T) sum_{f,t} |log M[f,t] - log M~[f,t]|`` over ``F`` mel bins and
    ``T`` frames, natural log of mel power: the mel-spectrogram L1 of HiFi-GAN
    (Kong et al. 2020, arXiv 2010.05646, eq. 3). A constant gain ``g`` on the
    power gives ``|log g|``.
    """
    return (logmel - logmel_rec).abs().mean(dim=(1, 2))


def spectral_convergence(logmel: Tensor, logmel_rec: Tensor) -> Tensor:
    r"""Spectral convergence per clip, ``[B]``.

    ``SC = ||S - S~||_F / ||S||_F`` with ``S = sqrt(M)`` the mel magnitude
    (Arik et al. 2018, "Fast spectrogram inversion using multi-head
    convolutional neural networks", arXiv 1808.06719, eq. 4; the first term of
    Parallel WaveGAN's STFT loss, Yamamoto et al. 2020). 0 is perfect; a gain
    ``g`` on the power gives ``|sqrt(g) - 1|``. Loud frames dominate it.
    """
    mag, mag_rec = (logmel / 2).exp(), (logmel_rec / 2).exp()  # power -> magnitude
    return torch.linalg.matrix_norm(mag - mag_rec) / torch.linalg.matrix_norm(mag).clamp(min=1e-12)


def log_spectral_distance(logmel: Tensor, logmel_rec: Tensor) -> Tensor:
    r"""Log-spectral distance per clip in dB, ``[B]``.

    ``LSD = 1/T sum_t sqrt(1/F sum_f (10 log10 M[f,t] - 10 log10 M~[f,t])^2)``: the
    frame-wise RMS of the power ratio in dB (Gray & Markel 1976, "Distance
    measures for speech processing", IEEE TASSP 24(5)), here over mel bins.
    Audio super-resolution papers (Kuleshov et al. 2017, arXiv 1708.00853)
    often drop the factor 10; divide by 10 to compare. Unlike
    :func:`spectral_convergence` it weights quiet frames as much as loud ones.
    """
    diff_db = DB_PER_NEPER * (logmel - logmel_rec)  # (B, F, T)
    return diff_db.square().mean(dim=1).sqrt().mean(dim=1)


PER_CLIP = {"logmel_l1": logmel_l1, "spectral_convergence": spectral_convergence,
            "log_spectral_distance": log_spectral_distance}


def spectral_metrics(logmel: Tensor, logmel_rec: Tensor) -> dict[str, float]:
    """Batch means of every per-clip measure of :data:`PER_CLIP` for ``[B, n_mels, T]`` log-mels."""
    return {name: float(fn(logmel, logmel_rec).mean()) for name, fn in PER_CLIP.items()}


def distribution_metrics(real: Tensor, generated: Tensor) -> dict[str, float]:
    """Cheap statistics of two *sets* of log-mels ``[R, n_mels, T]`` and ``[G, n_mels, T]`` (no pairing).

    ``mean_spectrum_l1``: ``1/F sum_f |mu_f - mu~_f|`` with ``mu_f`` the mean log-mel of bin ``f``
    over clips and frames (the average spectrum's shape and level); ``std_spectrum_l1``: the same for
    the per-bin standard deviations (too low: collapsed or over-smoothed samples). Nepers of power.
    Class accuracy and a Frechet distance come from :mod:`mmldm.evaluation.classifier`.
    """
    def per_bin(x: Tensor) -> Tensor:
        return x.transpose(0, 1).reshape(x.shape[1], -1)  # (F, N * T)

    a, b = per_bin(real.float()), per_bin(generated.float())
    return {"mean_spectrum_l1": float((a.mean(1) - b.mean(1)).abs().mean()),
            "std_spectrum_l1": float((a.std(1) - b.std(1)).abs().mean())}


def _revocode(modality: Any, vocoder: Vocoder, x: Tensor) -> Tensor:
    """Normalized features ``[B, C, *s]`` -> waveform -> log-mel ``[B, n_mels, T]`` again."""
    return modality.logmel(vocoder(x))


@torch.no_grad()
def griffinlim_ceiling(modality: Any, x: Tensor, autoencoder: Autoencoder | None = None,
                       vocoder: Vocoder | None = None, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """How much vocoding loses, alone and after an autoencoder, against the original log-mel.

    For real features ``x [B, C, *s]`` (the modality's normalized layout, e.g. a held-out batch):

    * ``"real_vocoded"``: ``x -> vocoder -> waveform -> log-mel`` vs ``x``, the ceiling: what
      Griffin-Lim loses on the real (unencoded) mel spectrogram;
    * with ``autoencoder`` (set to eval mode; ``x~ = decode(encode(x).mode())``),
      ``"autoencoder"``: ``x~`` vs ``x`` in the feature domain (what the modality's
      ``reconstruction_metrics`` reports) and ``"autoencoder_vocoded"``: ``x~ -> vocoder ->
      log-mel`` vs ``x``, the path a listener hears.

    Args:
        modality (`AudioModality`): supplies ``logmel``, ``to_logmel``, ``postprocess`` and the
            default vocoder (``modality.vocoder()``, Griffin-Lim with its default iterations).
        x (`Tensor`): real normalized features ``[B, C, *s]``.
        autoencoder (`Autoencoder`, *optional*): a trained phase-1 autoencoder.
        vocoder (`Vocoder`, *optional*): e.g. a Griffin-Lim with more iterations.
        batch_size (`int`): clips per vocoder call.

    Returns:
        ``{case: {"logmel_l1", "spectral_convergence", "log_spectral_distance", "items"}}``, the
        means over all clips (see :data:`PER_CLIP`), all in the denormalized log-mel domain.
    """
    vocoder = vocoder if vocoder is not None else modality.vocoder()
    if autoencoder is not None:
        autoencoder.eval()
    rows: dict[str, list[dict[str, Tensor]]] = {}
    for chunk in x.float().split(batch_size):
        reference = modality.to_logmel(chunk)
        cases = {"real_vocoded": _revocode(modality, vocoder, chunk)}
        if autoencoder is not None:
            device = next(autoencoder.parameters()).device
            rec = modality.postprocess(autoencoder.decode(autoencoder.encode(chunk.to(device)).mode())).float().cpu()
            cases["autoencoder"] = modality.to_logmel(rec)
            cases["autoencoder_vocoded"] = _revocode(modality, vocoder, rec)
        for case, logmel_rec in cases.items():
            rows.setdefault(case, []).append({k: fn(reference, logmel_rec) for k, fn in PER_CLIP.items()})
    out = {}
    for case, parts in rows.items():
        values = {k: torch.cat([p[k] for p in parts]) for k in PER_CLIP}
        out[case] = {k: float(v.mean()) for k, v in values.items()} | {"items": len(x)}
    return out
