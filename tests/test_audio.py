"""The audio modality plugin: synthesized data, folder input, log-mel features, Griffin-Lim, files, metrics."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmldm.interfaces import Modality, Vocoder
from mmldm.plugins import load_plugins
from mmldm_audio.config import AudioConfig
from mmldm_audio.features import fix_length, normalize
from mmldm_audio.modality import AudioModality
from mmldm_audio.synth import CLASSES, synthesize

FSDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd"
SR = 16000


def make(**kw) -> AudioModality:
    kw.setdefault("num_samples", 40)
    return AudioModality(AudioConfig(name="audio", **kw))


def tone(freq: float, n: int, sr: int = SR) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(n) / sr)


def dominant_frequency(wave: torch.Tensor, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


def test_registered_modality_and_vocoder():
    reg = load_plugins(report=False).registry
    m = reg.build("modality", {"name": "audio", "num_samples": 10})
    assert isinstance(m, Modality) and m.dims == 1 and m.sample_shape == (64, 64)
    voc = reg.build("vocoder", {"name": "griffinlim", "n_iter": 4}, modality=m)
    assert isinstance(voc, Vocoder) and voc.sample_rate == SR


def test_synth_deterministic_shapes_and_layouts():
    a, b = synthesize(0, 3, SR, 16128), synthesize(0, 3, SR, 16128)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert not np.array_equal(a[0], synthesize(1, 3, SR, 16128)[0])
    m = make()
    train, val = m.dataset("train"), m.dataset("val")
    assert (len(train), len(val)) == (36, 4) and m.length == 63 * 256
    item = train[0]
    assert item["x"].shape == (64, 64) and set(item["cond"]) == {"class", "text"}
    assert torch.equal(item["x"], make().dataset("train")[0]["x"])
    assert {CLASSES[train[i]["cond"]["class"]] for i in range(len(train))} == set(CLASSES)
    m2 = make(layout="2d", n_mels=32)
    assert m2.dims == 2 and m2.channels == 1 and m2.dataset("val")[0]["x"].shape == (1, 32, 64) == m2.sample_shape


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="audio.num_frames=60 must be a positive multiple of 8"):
        make(num_frames=60)
    with pytest.raises(ValueError, match="audio.n_mels=20 .* layout '2d'"):
        make(layout="2d", n_mels=20)
    with pytest.raises(ValueError, match="audio.source='folder' needs audio.root"):
        make(source="folder")


def test_normalization_stats_measured_on_train():
    m = make()
    state = m.state_dict()
    assert len(state["stats"]["mean"]) == 64 == len(state["stats"]["std"])
    assert all(isinstance(v, float) for v in state["stats"]["std"])  # plain numbers: they go to config.yaml
    x = torch.stack([m.dataset("train")[i]["x"] for i in range(36)])  # (B, n_mels, T)
    assert torch.allclose(x.mean(dim=(0, 2)), torch.zeros(64), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2)), torch.ones(64), atol=1e-2)
    other = make(seed=5)
    other.load_state_dict(state)
    assert torch.equal(other.stats["mean"], torch.tensor(state["stats"]["mean"]))


def mel_centres(n_mels: int = 64, f_max: float = 8000.0) -> np.ndarray:
    """HTK mel filter centres in Hz, equally spaced in mel between 0 and ``f_max``."""
    mel = 2595 * math.log10(1 + f_max / 700)
    return np.array([700 * (10 ** (q / 2595) - 1) for q in np.linspace(0, mel, n_mels + 2)[1:-1]])


def test_440hz_tone_peaks_in_the_nearest_mel_bin():
    m = make()
    logmel = m.logmel(tone(440.0, m.length)[None])[0]  # (n_mels, T)
    expected = int(np.argmin(np.abs(mel_centres() - 440)))
    assert expected == 12
    assert int(logmel.mean(dim=1).argmax()) == expected


def test_griffinlim_round_trip_keeps_dominant_frequency():
    m = make()
    centres = mel_centres()
    for freq in (440.0, 1000.0):
        wave = m.vocoder()(m.features(tone(freq, m.length)[None]))[0]
        assert wave.shape == (m.length,)
        # the mel scale keeps frequency only to within the band of the tone's filter
        k = int(np.argmin(np.abs(centres - freq)))
        assert centres[k - 1] < dominant_frequency(wave[2000:-2000]) < centres[k + 1]
    assert abs(dominant_frequency(wave[2000:-2000]) - 1000.0) < 10


def test_reconstruction_metrics():
    m = make()
    x = torch.stack([m.dataset("val")[i]["x"] for i in range(4)])
    assert m.reconstruction_metrics(x, x) == {"logmel_l1": 0.0, "spectral_convergence": 0.0}
    c = 0.3  # a constant log-mel offset scales magnitudes by exp(c / 2)
    shifted = normalize(m.to_logmel(x) + c, m.stats, "1d")
    metrics = m.reconstruction_metrics(x, shifted)
    assert metrics["logmel_l1"] == pytest.approx(c, abs=1e-4)
    assert metrics["spectral_convergence"] == pytest.approx(math.exp(c / 2) - 1, abs=1e-4)


def test_save_writes_wav_and_png(tmp_path):
    m = make()
    x = torch.stack([m.dataset("val")[i]["x"] for i in range(3)])
    paths = m.save(x, tmp_path, prefix="a")
    names = [p.name for p in paths]
    assert names == ["a_0000.wav", "a_0000.png", "a_0001.wav", "a_0001.png", "a_0002.wav", "a_0002.png", "a_grid.png"]
    data, rate = sf.read(paths[0])
    assert rate == SR and data.shape == (m.length,) and np.abs(data).max() > 0.01
    assert Image.open(paths[1]).size == (64 * 3, 64 * 3)
    assert Image.open(paths[-1]).format == "PNG"


@pytest.fixture
def fsdd_folder(tmp_path):
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    names = ["0_george_0.wav", "3_jackson_1.wav", "3_lucas_2.wav", "7_nicolas_3.wav", "7_theo_4.wav"]
    for name in names:
        (tmp_path / name).symlink_to(FSDD / name)
    (tmp_path / "9_broken_0.wav").write_bytes(b"RIFF\x00\x00garbage")
    (tmp_path / "8_empty_0.wav").write_bytes(b"")
    return tmp_path, names


def test_fsdd_folder_labels_resampling_and_corrupt_files(fsdd_folder, caplog):
    root, names = fsdd_folder
    m = make(source="folder", root=str(root), val_fraction=0.0)
    data = m.waveforms("train")
    assert re.search(r"skipped 2 unreadable file\(s\): 8_empty_0.wav .*9_broken_0.wav", caplog.text)
    assert data.class_names == ["0", "3", "7"] and len(data.waves) == 5
    assert sorted(data.class_names[k] for k in data.labels) == ["0", "3", "3", "7", "7"]
    # FSDD is 8 kHz: resampled to 16 kHz the clips have twice the samples
    frames = sorted(sf.info(str(FSDD / n)).frames * 2 for n in names)
    assert sorted(len(w) for w in data.waves) == frames
    item = m.dataset("train")[0]
    assert item["x"].shape == (64, 64) and item["cond"]["text"].startswith("a recording of ")


def test_folder_label_pattern_mismatch_names_the_file(tmp_path):
    sf.write(tmp_path / "hello.wav", np.zeros(800, np.float32), 8000)
    m = make(source="folder", root=str(tmp_path))
    with pytest.raises(ValueError, match="'hello.wav' does not match audio.label_pattern"):
        m.waveforms("train")


def test_folder_subfolder_labels_flac_stereo_resampled(tmp_path):
    t = np.arange(22050) / 22050
    for label, freq in (("high", 2000.0), ("low", 300.0)):
        (tmp_path / label).mkdir()
        stereo = np.stack([np.sin(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t)], axis=1) * 0.5
        sf.write(tmp_path / label / "clip.flac", stereo.astype(np.float32), 22050)
    m = make(source="folder", root=str(tmp_path), label_pattern=None, val_fraction=0.0)
    data = m.waveforms("train")
    assert data.class_names == ["high", "low"] and [w.shape for w in data.waves] == [(SR,), (SR,)]
    for wave, k in zip(data.waves, data.labels):
        assert abs(dominant_frequency(wave) - (2000.0, 300.0)[k]) < 5
    a = m.dataset("train")
    assert a[0]["x"].shape == (64, 64) and a[0]["cond"]["text"] in ("a recording of high", "a recording of low")


def test_fix_length_crops_and_pads():
    wave = torch.arange(10.0)
    assert fix_length(wave, 4, random_crop=False).tolist() == [3.0, 4.0, 5.0, 6.0]  # centred
    assert fix_length(torch.ones(3), 7, random_crop=False).tolist() == [0, 0, 1, 1, 1, 0, 0]
    torch.manual_seed(0)
    starts = {int(fix_length(wave, 4, random_crop=True)[0]) for _ in range(30)}
    assert len(starts) > 3 and starts <= set(range(7))
