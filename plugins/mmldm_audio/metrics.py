"""Audio quality measures on log-mel spectrograms and on waveforms, and the Griffin-Lim ceiling.

The log-mel measures take log-mel spectrograms ``[B, n_mels, T]`` in the
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

Waveform measures (``[B, N]`` against ``[B, N]``, per clip ``[B]``), as vocoder papers report them:

* :func:`multi_resolution_stft_distance` (spectral convergence + log-magnitude L1 over three STFT
  resolutions, Parallel WaveGAN's, scaled to the sample rate),
* :func:`wave_log_spectral_distance` (dB, linear-frequency STFT power),

and :func:`real_time_factor`, a vocoder's seconds of compute per second of audio on one CPU thread.

Judges of spoken digits, independent of any generative model: :func:`train_digit_judge` (the
independent classifier with mel-shift augmentation) and :class:`SpeakerJudge` (a linear model over each
clip's long-term spectrum, :func:`clip_statistics`); :func:`judge_clips` applies both.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Sequence

import torch
import torchaudio
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


# ---------------------------------------------------------------------------- waveforms
#: Parallel WaveGAN's STFT resolutions ``(n_fft, hop_length, win_length)`` at 24 kHz (Yamamoto et al. 2020,
#: "Parallel WaveGAN", arXiv 1910.11480): the multi-resolution STFT loss later vocoders train with or report.
PWG_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
PWG_SAMPLE_RATE = 24000
#: ``|STFT|^2`` is clamped to this before the square root and the log (Parallel WaveGAN's clamp)
STFT_POWER_FLOOR = 1e-7


def stft_resolutions(sample_rate: int) -> list[tuple[int, int, int]]:
    """:data:`PWG_RESOLUTIONS` scaled to ``sample_rate``: the same window and hop *durations* (25, 50 and
    10 ms windows; 5, 10 and 2.08 ms hops) rounded to samples, ``n_fft`` the power of two nearest (on a log
    scale) to the scaled FFT size and never shorter than the window. At 8 kHz ``(256, 40, 200), (512, 80, 400),
    (128, 17, 80)``; at 16 kHz ``(512, 80, 400), (1024, 160, 800), (256, 33, 160)``; at 24 kHz the originals."""
    scale = sample_rate / PWG_SAMPLE_RATE
    out = []
    for n_fft, hop, win in PWG_RESOLUTIONS:
        win_s = max(1, round(win * scale))
        n = max(2 ** round(math.log2(n_fft * scale)), 2 ** math.ceil(math.log2(win_s)))
        out.append((n, max(1, round(hop * scale)), win_s))
    return out


def stft_power(wave: Tensor, n_fft: int, hop_length: int, win_length: int | None = None) -> Tensor:
    """``wave [B, N]`` -> ``|STFT|^2 [B, n_fft // 2 + 1, 1 + N // hop_length]`` (torchaudio ``Spectrogram``:
    periodic Hann window of ``win_length`` samples centred in ``n_fft``, centred frames, reflect padding)."""
    spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=2.0)
    return spec.to(wave.device)(wave.float())


def _check_pair(wave: Tensor, wave_rec: Tensor) -> None:
    if wave.ndim != 2 or wave.shape != wave_rec.shape:
        raise ValueError(f"waveform measures take two [B, N] batches of the same shape, got {tuple(wave.shape)} "
                         f"and {tuple(wave_rec.shape)}")


def multi_resolution_stft_terms(wave: Tensor, wave_rec: Tensor, sample_rate: int,
                                resolutions: Sequence[tuple[int, int, int]] | None = None,
                                power_floor: float = STFT_POWER_FLOOR) -> dict[str, Tensor]:
    r"""The two terms of :func:`multi_resolution_stft_distance` per clip, each averaged over the resolutions:
    ``{"spectral_convergence": [B], "log_magnitude_l1": [B]}`` (see there)."""
    _check_pair(wave, wave_rec)
    resolutions = resolutions if resolutions is not None else stft_resolutions(sample_rate)
    sc, mag = [], []
    for n_fft, hop, win in resolutions:
        s, s_rec = (stft_power(w, n_fft, hop, win).clamp(min=power_floor).sqrt() for w in (wave, wave_rec))  # (B, F, T)
        sc.append(torch.linalg.matrix_norm(s - s_rec) / torch.linalg.matrix_norm(s))
        mag.append((s.log() - s_rec.log()).abs().mean(dim=(1, 2)))
    return {"spectral_convergence": torch.stack(sc).mean(0), "log_magnitude_l1": torch.stack(mag).mean(0)}


def multi_resolution_stft_distance(wave: Tensor, wave_rec: Tensor, sample_rate: int,
                                   resolutions: Sequence[tuple[int, int, int]] | None = None,
                                   power_floor: float = STFT_POWER_FLOOR) -> Tensor:
    r"""Multi-resolution STFT distance per clip ``[B]`` of waveforms ``wave_rec`` from ``wave`` (both ``[B, N]``).

    For each of the ``M`` resolutions ``(n_fft, hop_length, win_length)``, with ``S`` and ``S~`` the STFT
    magnitudes of one clip, ``[F, T]`` (:func:`stft_power`, power floored at ``power_floor``, by default
    :data:`STFT_POWER_FLOOR`, Parallel WaveGAN's ``1e-7``):

    * spectral convergence ``SC = ||S - S~||_F / ||S||_F``,
    * log-magnitude L1 ``MAG = 1/(F T) sum_{f,t} |ln S[f,t] - ln S~[f,t]|`` (nepers of magnitude),

    and ``D = 1/M sum_m (SC_m + MAG_m)``: the multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al.
    2020, arXiv 1910.11480; there a training loss averaged over a batch, here one value per clip).
    ``resolutions`` defaults to :func:`stft_resolutions` ``(sample_rate)``, Parallel WaveGAN's three
    resolutions at the same durations. 0 for identical waves; a gain ``g`` on ``wave_rec`` gives
    ``|g - 1| + |ln g|`` where no bin is floored. Phase does not count, only magnitudes. Where ``wave`` is
    digital silence (zero padding) the log term measures ``wave_rec``'s noise against the floor: on padded
    clips a higher ``power_floor`` (e.g. the features' ``log_floor``) leaves what the features cannot see out.
    """
    terms = multi_resolution_stft_terms(wave, wave_rec, sample_rate, resolutions, power_floor)
    return terms["spectral_convergence"] + terms["log_magnitude_l1"]


def wave_log_spectral_distance(wave: Tensor, wave_rec: Tensor, n_fft: int, hop_length: int,
                               power_floor: float = 1e-5) -> Tensor:
    r"""Log-spectral distance in dB per clip ``[B]`` of waveforms ``wave_rec`` from ``wave`` (``[B, N]``).

    ``LSD = 1/T sum_t sqrt(1/F sum_f (10 log10 P[f,t] - 10 log10 P~[f,t])^2)`` with ``P = max(|STFT|^2,
    power_floor)`` over all ``F = n_fft // 2 + 1`` linear-frequency bins (Hann window of ``n_fft``, centred
    frames, :func:`stft_power`): the frame-wise RMS of the power ratio in dB (Gray & Markel 1976), as
    audio super-resolution papers report it on waveforms (Kuleshov et al. 2017, arXiv 1708.00853, without the
    factor 10 there). The default floor is the audio modality's default ``log_floor``: pass the modality's
    ``cfg.log_floor`` so that what its log-mel features cannot see (digital silence, padding) does not count.
    A gain ``g`` on the power gives ``10 log10 g`` dB where no bin is floored (amplitude x2: 6.02 dB).
    """
    _check_pair(wave, wave_rec)
    p, p_rec = (stft_power(w, n_fft, hop_length).clamp(min=power_floor) for w in (wave, wave_rec))
    diff_db = 10 * (p.log10() - p_rec.log10())  # (B, F, T)
    return diff_db.square().mean(dim=1).sqrt().mean(dim=1)


@torch.no_grad()
def real_time_factor(vocoder: Vocoder, features: Tensor, sample_rate: int | None = None, repeats: int = 5,
                     threads: int = 1) -> dict[str, Any]:
    """A vocoder's seconds of compute per second of audio it makes, on the CPU with ``threads`` threads.

    ``torch.set_num_threads(threads)`` for the measurement (the previous count is restored after); one
    warm-up call (lazy buffers, allocator), then ``repeats`` timed calls on the whole batch ``features``
    (moved to the CPU). ``RTF = seconds / (B * N / sample_rate)`` for an output ``[B, N]``: below 1 is faster
    than real time.

    Returns:
        ``{"rtf": median RTF, "rtf_best": the fastest repeat's, "seconds": [per repeat], "audio_seconds",
        "clips", "repeats", "threads", "device": "cpu"}``.
    """
    if repeats < 1 or threads < 1:
        raise ValueError(f"real_time_factor needs repeats >= 1 and threads >= 1, got {repeats} and {threads}")
    features = features.detach().cpu()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wave = vocoder(features)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            vocoder(features)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    audio = wave.shape[0] * wave.shape[-1] / (sample_rate or vocoder.sample_rate)
    return {"rtf": statistics.median(seconds) / audio, "rtf_best": min(seconds) / audio, "seconds": seconds,
            "audio_seconds": audio, "clips": int(wave.shape[0]), "repeats": repeats, "threads": threads,
            "device": "cpu"}


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


# ---------------------------------------------------------------------------- judges of spoken digits
#: Frames whose log energy lies within this many nepers (x 400 in power) of a clip's loudest frame are voiced.
VOICED_RANGE = 6.0


def clip_statistics(logmel: Tensor) -> Tensor:
    """Per clip, the mean and standard deviation of each mel bin over its voiced frames (:data:`VOICED_RANGE`):
    ``logmel [B, n_mels, T]`` -> ``[B, 2 n_mels]``. A long-term spectrum: what a voice sounds like, not what
    it says (the classic features of text-independent speaker recognition)."""
    energy = logmel.float().logsumexp(dim=1)  # (B, T)
    rows = []
    for clip, e in zip(logmel.float(), energy):
        voiced = clip[:, e >= e.max() - VOICED_RANGE]  # (n_mels, T_voiced), at least the loudest frame
        rows.append(torch.cat([voiced.mean(1), voiced.std(1, correction=0)]))
    return torch.stack(rows)


class SpeakerJudge:
    """Who speaks a clip: linear discriminant analysis with Ledoit-Wolf shrinkage of the shared covariance
    (scikit-learn, on standardized features) over :func:`clip_statistics` of the log-mel: Gaussian speakers
    with one covariance, the classic back end of text-independent speaker recognition. Fits in well under a
    second on FSDD's 2,000 training clips, and on clips of (digit, speaker) pairs it never saw it stays at
    ~99% (a logistic regression on the same features: ~97%).
    """

    def __init__(self) -> None:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))

    def fit(self, logmel: Tensor, speakers: Sequence[str]) -> "SpeakerJudge":
        """Learn from log-mels ``[N, n_mels, T]`` (the modality's ``to_logmel``) and their speakers."""
        self.model.fit(clip_statistics(logmel).numpy(), list(speakers))
        return self

    def predict(self, logmel: Tensor) -> list[str]:
        """The speaker of each log-mel ``[B, n_mels, T]``."""
        return [str(s) for s in self.model.predict(clip_statistics(logmel).numpy())]

    @property
    def speakers(self) -> list[str]:
        return [str(s) for s in self.model.classes_]


def clip_names(dataset: Any) -> list[str]:
    """The file name of each item of an audio dataset (its ``data.names``), through torch's ``Subset`` and
    ``ConcatDataset`` of such datasets; ``ValueError`` when the clips have none."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, Subset):
        names = clip_names(dataset.dataset)
        return [names[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [n for part in dataset.datasets for n in clip_names(part)]
    names = getattr(getattr(dataset, "data", None), "names", None)
    if not names:
        raise ValueError("digit and speaker attributes need the clips' file names (source 'folder', FSDD names)")
    return list(names)


def clip_attributes(dataset: Any) -> list[dict[str, str]]:
    """``{"digit", "speaker"}`` of each item of an audio dataset read from FSDD-named files (:func:`clip_names`,
    :func:`.sources.digit_speaker`)."""
    from .sources import digit_speaker

    return [dict(zip(("digit", "speaker"), digit_speaker(n))) for n in clip_names(dataset)]


def _features(dataset: Any) -> Tensor:
    """All ``x`` of a dataset, stacked ``[N, C, *s]``."""
    return torch.stack([dataset[i]["x"] for i in range(len(dataset))])


def train_speaker_judge(modality: Any, train: Any, val: Any | None = None) -> tuple[SpeakerJudge, dict[str, Any]]:
    """A :class:`SpeakerJudge` fitted on the clips of ``train`` (an audio dataset of FSDD-named files), with
    ``{"val_accuracy", "val_accuracy_n", "val_accuracy_ci", "seconds"}`` on ``val`` (when given)."""
    from mmldm.evaluation.classifier import accuracy_stats

    start = time.perf_counter()
    judge = SpeakerJudge().fit(modality.to_logmel(_features(train)),
                               [a["speaker"] for a in clip_attributes(train)])
    report: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 1)}
    if val is not None:
        said = judge.predict(modality.to_logmel(_features(val)))
        hits = torch.tensor([s == a["speaker"] for s, a in zip(said, clip_attributes(val))])
        report.update(accuracy_stats(hits, "val_accuracy"))
    return judge, report


def train_digit_judge(modality: Any, train: Any, val: Any, epochs: int = 4, seed: int = 0,
                      shifts: Sequence[int] = range(-3, 4)) -> tuple[Any, dict[str, Any]]:
    """The digit judge of ``benchmarks.generation``'s FSDD task: the independent classifier
    (:func:`mmldm.evaluation.classifier.train_classifier`) on the training clips, each shifted by every
    mel-bin count of ``shifts`` (:class:`.augment.MelShiftDataset`, a vocal-tract-length warp: 98.8% on
    held-out clips of the training speakers there). Returns the classifier and its report on ``val``."""
    from mmldm.evaluation.classifier import train_classifier

    from .augment import MelShiftDataset

    return train_classifier(MelShiftDataset(train, modality, shifts), val, modality.dims, modality.channels,
                            modality.num_classes, epochs=epochs, seed=seed)


def judge_clips(digit_judge: Any, speaker_judge: SpeakerJudge, modality: Any, x: Tensor) -> list[dict[str, str]]:
    """``{"digit", "speaker"}`` of each clip ``x [B, C, *s]`` (the modality's normalized features): the digit by
    ``digit_judge`` (:func:`train_digit_judge`), the speaker by ``speaker_judge``. Independent of any generative
    model: real clips are judged the same way."""
    from mmldm.evaluation.classifier import predict

    logits, _ = predict(digit_judge, x.float().cpu())
    digits = [modality.class_names[k] for k in logits.argmax(-1).tolist()]
    speakers = speaker_judge.predict(modality.to_logmel(x.float().cpu()))
    return [{"digit": d, "speaker": s} for d, s in zip(digits, speakers)]
