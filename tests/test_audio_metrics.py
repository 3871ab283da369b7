"""Waveform measures of the audio plugin (multi-resolution STFT distance, log-spectral distance, real-time
factor), its listening files of reconstructions, and the vocoder benchmark's core on synthesized clips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from benchmarks import vocoder as bench
from mmldm.evaluation.classifier import FeatureClassifier
from mmldm_audio import metrics
from mmldm_audio.config import AudioConfig, GriffinLimConfig
from mmldm_audio.listening import PANELS
from mmldm_audio.modality import AudioModality

SR = 8000


def make(**kw) -> AudioModality:
    """A tiny synthesized-sound modality: 16 mels x 16 frames of 64-sample hops (960 samples at 8 kHz)."""
    kw = {"num_samples": 12, "sample_rate": SR, "n_fft": 256, "hop_length": 64, "n_mels": 16, "num_frames": 16,
          "val_fraction": 0.25, **kw}
    return AudioModality(AudioConfig(name="audio", **kw))


def noise(b: int = 3, n: int = 4000, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(b, n, generator=torch.Generator().manual_seed(seed))


def test_stft_resolutions_keep_parallel_wavegan_durations():
    assert metrics.stft_resolutions(24000) == list(metrics.PWG_RESOLUTIONS)
    assert metrics.stft_resolutions(8000) == [(256, 40, 200), (512, 80, 400), (128, 17, 80)]
    for sr in (8000, 16000, 22050, 44100):
        assert all(win <= n_fft for n_fft, _, win in metrics.stft_resolutions(sr))


def test_mr_stft_is_zero_for_identical_waves_and_grows_with_noise():
    wave = noise()
    assert torch.equal(metrics.multi_resolution_stft_distance(wave, wave, SR), torch.zeros(3))
    d = [metrics.multi_resolution_stft_distance(wave, wave + level * noise(seed=1), SR) for level in (0.01, 0.1, 1.0)]
    assert d[0].shape == (3,) and bool((d[0] > 0).all() and (d[1] > d[0]).all() and (d[2] > d[1]).all())


def test_mr_stft_of_a_gain_is_its_closed_form():
    # (almost) no bin of white noise is floored: SC = |g - 1| and MAG = |ln g| at every resolution
    wave = noise()
    assert torch.allclose(metrics.multi_resolution_stft_distance(wave, 2 * wave, SR), torch.full((3,), 1 + math.log(2)),
                          atol=1e-4)


def test_mr_stft_matches_a_numpy_computation():
    n_fft, hop, win = 16, 4, 12
    wave, other = noise(2, 64, seed=2), noise(2, 64, seed=3)

    def magnitude(x: np.ndarray) -> np.ndarray:  # (F, T): centred frames, reflect padding, Hann window centred
        x = np.pad(x, n_fft // 2, mode="reflect")
        w = np.zeros(n_fft)
        w[(n_fft - win) // 2:(n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
        frames = np.stack([x[t:t + n_fft] * w for t in range(0, len(x) - n_fft + 1, hop)], 1)
        return np.sqrt(np.maximum(np.abs(np.fft.rfft(frames, axis=0)) ** 2, 1e-7))

    expected = []
    for a, b in zip(wave.double().numpy(), other.double().numpy()):
        s, s2 = magnitude(a), magnitude(b)
        expected.append(np.linalg.norm(s - s2) / np.linalg.norm(s) + np.abs(np.log(s) - np.log(s2)).mean())
    got = metrics.multi_resolution_stft_distance(wave, other, SR, resolutions=[(n_fft, hop, win)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_wave_lsd_of_a_doubled_wave_is_6_02_db():
    wave = noise()
    lsd = metrics.wave_log_spectral_distance(wave, 2 * wave, n_fft=256, hop_length=64)
    assert torch.allclose(lsd, torch.full((3,), 10 * math.log10(4)), atol=1e-3)
    assert torch.equal(metrics.wave_log_spectral_distance(wave, wave, 256, 64), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        metrics.wave_log_spectral_distance(wave, wave[:, :-1], 256, 64)


def test_real_time_factor_runs_on_one_thread_and_restores_the_count():
    m = make()
    threads = torch.get_num_threads()
    x = m.features(torch.stack([m.dataset("val").data.waves[0]] * 2))
    r = metrics.real_time_factor(m.vocoder(GriffinLimConfig(name="griffinlim", n_iter=4)), x, repeats=2)
    assert torch.get_num_threads() == threads
    assert math.isfinite(r["rtf"]) and 0 < r["rtf_best"] <= r["rtf"]
    assert (r["threads"], r["repeats"], r["clips"], len(r["seconds"])) == (1, 2, 2, 2)
    assert r["audio_seconds"] == pytest.approx(2 * m.length / SR)


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_save_reconstructions_writes_listening_files(tmp_path, layout):
    m = make(layout=layout)
    x = torch.stack([m.dataset("train")[i]["x"] for i in range(3)])
    paths = m.save_reconstructions(x, x + 0.2 * torch.randn_like(x), tmp_path)
    names = [f"{kind}_{i:04d}.{ext}" for i in range(3) for kind, ext in
             (("input", "wav"), ("reconstruction", "wav"), ("compare", "png"))]
    assert [p.name for p in paths] == [*names, "compare_grid.png"] and all(p.is_file() for p in paths)
    wave, rate = sf.read(paths[0])
    assert rate == SR and len(wave) == m.length
    panel = 16 * 3 * 2  # 16 mels x scale 3, enlarged x2 so that a title fits (tiles narrower than 64 px)
    single, grid = Image.open(paths[2]), Image.open(paths[-1])
    assert single.size == (3 * (panel + 2) + 2, panel + 12 + 4)  # three titled panels side by side
    assert grid.size == (single.width, 3 * (panel + 12 + 2) + 2) and len(PANELS) == 3


def test_vocoder_benchmark_core_on_synthesized_clips(tmp_path):
    m = make()
    vocoders = {"griffinlim_4": m.vocoder(GriffinLimConfig(name="griffinlim", n_iter=4)),
                "griffinlim_8": m.vocoder(GriffinLimConfig(name="griffinlim", n_iter=8)),
                "other": m.vocoder(GriffinLimConfig(name="griffinlim", n_iter=2))}  # stands in for a trained one
    torch.manual_seed(0)
    judge = bench.Judge(FeatureClassifier(1, 16, m.num_classes, width=4, levels=1).eval(), m.stats, "1d", {}, "test")
    waves, labels = bench.held_out(m)  # the "val" clips as the dataset's items are made
    val = m.dataset("val")
    assert torch.allclose(m.features(waves), torch.stack([val[i]["x"] for i in range(len(val))]))
    assert labels.tolist() == [val[i]["cond"]["class"] for i in range(len(val))]
    r = bench.compare_vocoders(m, vocoders, max_clips=3, rtf_clips=2, rtf_repeats=1, judge=judge)
    assert r["clips"] == 3 and set(r["vocoders"]) == set(vocoders) and r["real"]["judge_accuracy_n"] == 3
    for row in r["vocoders"].values():
        for key in bench.INTERVALS:
            assert row[key]["n"] == 3 and row[key]["low"] <= row[key]["mean"] <= row[key]["high"]
        assert row["mr_stft"]["mean"] == pytest.approx(row["mr_stft_sc"] + row["mr_stft_log_mag"], rel=1e-5)
        assert row["judge_accuracy_n"] == 3 and row["rtf"]["rtf"] > 0
    # the vocoder that is not Griffin-Lim, paired clip by clip with each reference on the same 3 clips
    assert set(r["judge_paired"]) == {"other vs real", "other vs griffinlim_4", "other vs griffinlim_8"}
    for pair, m_ in r["judge_paired"].items():
        b = pair.split(" vs ")[1]
        share_a, share_b = r["vocoders"]["other"]["judge_accuracy"], (r["real"] if b == "real" else
                                                                        r["vocoders"][b])["judge_accuracy"]
        assert m_["n"] == 3 and m_["difference"] == pytest.approx(share_a - share_b, abs=1e-6)
    text = bench.report({"settings": {"data_note": "synth", "overrides": []}, "results": r})
    assert "| griffinlim_8 | 3 |" in text and "| real clips, no vocoder | 3 |" in text
    assert "| other vs griffinlim_4 |" in text and "exact McNemar" in text


def test_a_trained_judge_is_saved_with_its_statistics(tmp_path):
    m = make()
    judge = bench.train_judge(m, tmp_path, epochs=1)
    loaded = bench.load_judge(tmp_path / "classifier.pt", tmp_path)
    assert loaded.layout == "1d" and loaded.report == judge.report and judge.report["val_accuracy_n"] == 3
    assert all(torch.allclose(loaded.stats[k], m.stats[k]) for k in ("mean", "std"))
    waves, labels = bench.held_out(m)
    assert torch.equal(loaded.hits(m.logmel(waves), labels), judge.hits(m.logmel(waves), labels))


def test_mean_interval_is_students_t():
    r = bench.mean_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), sd = 1
    assert (r["mean"], r["n"]) == (2.0, 3) and r["low"] == pytest.approx(2 - half) and r["high"] == pytest.approx(2 + half)
