"""Synthesized sounds: the audio modality's embedded default data.

Seven classes with captions: pure, buzzy and plucked notes of several pitches,
rising and falling chirps, noise bursts and short melodies. Clip ``i`` of seed
``s`` depends only on ``(s, i)``. All functions return float32 ``[N]`` in [-1, 1].
"""

from __future__ import annotations

import numpy as np

CLASSES = ("pure", "buzzy", "plucked", "chirp_up", "chirp_down", "noise", "melody")


def midi_hz(note: float) -> float:
    """Frequency of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((note - 69) / 12)


def pitch_word(note: int) -> str:
    return "low" if note < 60 else "middle" if note < 72 else "high"


def envelope(n: int, sr: int, attack: float = 0.01, release: float = 0.05) -> np.ndarray:
    """Linear attack, flat, linear release over ``n`` samples."""
    env = np.ones(n, dtype=np.float64)
    a, r = min(n // 2, int(attack * sr)), min(n // 2, int(release * sr))
    env[:a] = np.linspace(0, 1, a, endpoint=False)
    if r:
        env[n - r :] = np.linspace(1, 0, r)
    return env


def harmonic_note(freq: float, n: int, sr: int, timbre: str) -> np.ndarray:
    """A note of ``n`` samples: ``pure`` sine, ``buzzy`` odd harmonics 1/k (square-like)
    or ``plucked`` harmonics 1/k with decay faster for higher ones."""
    t = np.arange(n) / sr
    if timbre == "pure":
        return np.sin(2 * np.pi * freq * t)
    ks = np.arange(1, int(sr / 2 / freq) + 1)
    if timbre == "buzzy":
        ks = ks[ks % 2 == 1]
    decay = np.exp(-t[None, :] * 3.0 * ks[:, None]) if timbre == "plucked" else 1.0
    wave = (np.sin(2 * np.pi * freq * ks[:, None] * t[None, :]) / ks[:, None] * decay).sum(0)
    return wave / max(np.abs(wave).max(), 1e-8)


def chirp(f0: float, f1: float, n: int, sr: int) -> np.ndarray:
    """Exponential sweep from ``f0`` to ``f1`` Hz over ``n`` samples."""
    duration = n / sr
    k = np.log(f1 / f0) / duration
    t = np.arange(n) / sr
    return np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)


def band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to ``[lo, hi]`` Hz by zeroing FFT bins."""
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0
    wave = np.fft.irfft(spec, n)
    return wave / max(np.abs(wave).max(), 1e-8)


def _event(rng: np.random.Generator, label: int, n: int, sr: int) -> tuple[np.ndarray, str]:
    """The sound of class ``label`` over ``n`` samples and its caption."""
    kind = CLASSES[label]
    if kind in ("pure", "buzzy", "plucked"):
        note = int(rng.integers(48, 85))
        noun = "tone" if kind == "pure" else "note"
        return harmonic_note(midi_hz(note), n, sr, kind), f"a {kind} {pitch_word(note)} {noun}"
    if kind in ("chirp_up", "chirp_down"):
        lo, hi = rng.uniform(150, 400), rng.uniform(1500, min(5000, 0.45 * sr))
        up = kind == "chirp_up"
        return chirp(lo, hi, n, sr) if up else chirp(hi, lo, n, sr), f"a {'rising' if up else 'falling'} chirp"
    if kind == "noise":
        band = ("low", 100, 800) if rng.random() < 0.5 else ("high", 2000, 0.45 * sr)
        return band_noise(rng, n, sr, band[1], band[2]), f"a burst of {band[0]} noise"
    return _melody(rng, n, sr)


def _melody(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, str]:
    """3-5 pure notes of equal length, going up, down or jumping around."""
    count = int(rng.integers(3, 6))
    contour = ("up", "down", "around")[int(rng.integers(3))]
    notes = np.sort(rng.choice(np.arange(55, 80), size=count, replace=False))
    notes = notes[::-1] if contour == "down" else rng.permutation(notes) if contour == "around" else notes
    step = n // count
    parts = [harmonic_note(midi_hz(k), step, sr, "pure") * envelope(step, sr) for k in notes]
    wave = np.concatenate(parts + [np.zeros(n - step * count)])
    verb = {"up": "going up", "down": "going down", "around": "jumping around"}[contour]
    return wave, f"a short melody of {count} notes {verb}"


def synthesize(seed: int, index: int, sample_rate: int, length: int) -> tuple[np.ndarray, int, str]:
    """Clip ``index`` of ``seed``: float32 ``[length]``, its class id and its caption.

    The sound starts at a random onset in the first fifth, lasts 40-80 % of the
    clip, has a random level and a faint noise floor.
    """
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    n = int(length * rng.uniform(0.4, 0.8))
    onset = int(rng.integers(0, length // 5 + 1))
    sound, caption = _event(rng, label, n, sample_rate)
    wave = np.zeros(length)
    wave[onset : onset + n] = sound * envelope(n, sample_rate) * rng.uniform(0.3, 0.8)
    wave += rng.normal(0, 1e-3, size=length)
    return np.clip(wave, -1, 1).astype(np.float32), label, caption
