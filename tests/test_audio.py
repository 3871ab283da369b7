"""The audio modality plugin: synthesized data, folder input and splits, log-mel features, Griffin-Lim,
files, metrics, the mel-shift augmentation, and a tiny 2D-layout run through the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmldm.interfaces import Autoencoder, AutoencoderOutput, LatentDistribution, Modality, Vocoder
from mmldm.plugins import load_plugins
from mmldm_audio import metrics
from mmldm_audio.augment import MelShiftDataset, mel_shift
from mmldm_audio.config import AudioConfig, GriffinLimConfig
from mmldm_audio.features import fix_length, normalize
from mmldm_audio.modality import AudioModality
from mmldm_audio.sources import normalize_peak
from mmldm_audio.synth import CLASSES, synthesize

from .conftest import run_cli

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
    zeros = {"logmel_l1": 0.0, "spectral_convergence": 0.0, "log_spectral_distance": 0.0}
    assert m.reconstruction_metrics(x, x) == zeros
    c = 0.3  # a constant log-mel offset scales power by exp(c), magnitudes by exp(c / 2)
    shifted = normalize(m.to_logmel(x) + c, m.stats, "1d")
    out = m.reconstruction_metrics(x, shifted)
    assert out["logmel_l1"] == pytest.approx(c, abs=1e-4)
    assert out["spectral_convergence"] == pytest.approx(math.exp(c / 2) - 1, abs=1e-4)
    assert out["log_spectral_distance"] == pytest.approx(10 * math.log10(math.exp(c)), abs=1e-3)  # dB
    # values a decoder puts below the log floor are silence: clamped like the features
    silent = torch.full_like(x, -1e3)
    assert m.to_logmel(silent).min() == pytest.approx(math.log(m.cfg.log_floor))


def test_metrics_match_numpy_formulas():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 5, generator=gen) - 4, torch.randn(3, 8, 5, generator=gen) - 4  # log mel power
    na, nb = a.double().numpy(), b.double().numpy()
    sa, sb = np.exp(na / 2), np.exp(nb / 2)
    sc = [np.linalg.norm(sa[i] - sb[i]) / np.linalg.norm(sa[i]) for i in range(3)]
    db_a, db_b = 10 * np.log10(np.exp(na)), 10 * np.log10(np.exp(nb))
    lsd = [np.mean(np.sqrt(np.mean((db_a[i] - db_b[i]) ** 2, axis=0))) for i in range(3)]
    assert np.allclose(metrics.spectral_convergence(a, b).numpy(), sc, rtol=1e-5)
    assert np.allclose(metrics.log_spectral_distance(a, b).numpy(), lsd, rtol=1e-5)
    assert np.allclose(metrics.logmel_l1(a, b).numpy(), np.abs(na - nb).mean(axis=(1, 2)), rtol=1e-5)
    assert metrics.spectral_metrics(a, b)["log_spectral_distance"] == pytest.approx(np.mean(lsd), rel=1e-5)


def test_generation_metrics_compare_spectrum_statistics():
    m = make()
    real = torch.stack([m.dataset("train")[i]["x"] for i in range(12)])
    assert m.generation_metrics(real, real) == {"mean_spectrum_l1": 0.0, "std_spectrum_l1": 0.0}
    louder = normalize(m.to_logmel(real) + 0.5, m.stats, "1d")
    out = m.generation_metrics(real, louder, torch.zeros(12, dtype=torch.long))
    assert out == pytest.approx({"mean_spectrum_l1": 0.5, "std_spectrum_l1": 0.0}, abs=1e-4)
    flat = normalize(m.to_logmel(real).mean(dim=(0, 2), keepdim=True).expand_as(real), m.stats, "1d")
    assert m.generation_metrics(real, flat)["std_spectrum_l1"] > 0.5  # a collapsed set has no spread


class IdentityAutoencoder(Autoencoder):
    """``decode(encode(x).mode()) == x``: isolates what the vocoder loses."""

    class Point(LatentDistribution):
        def __init__(self, z):
            self.z = z

        def sample(self, generator=None):
            return self.z

        def mode(self):
            return self.z

        def kl(self):
            return torch.zeros(len(self.z))

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, x):
        return self.Point(x)

    def decode(self, z):
        return z * self.scale

    def forward(self, x):
        return AutoencoderOutput(x, x, self.Point(x), torch.zeros(()), {})


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_griffinlim_ceiling(layout):
    m = make(layout=layout, n_mels=32)
    x = torch.stack([m.dataset("val")[i]["x"] for i in range(4)])
    fast = m.vocoder(GriffinLimConfig(name="griffinlim", n_iter=8))
    out = metrics.griffinlim_ceiling(m, x, IdentityAutoencoder(), fast, batch_size=3)
    assert set(out) == {"real_vocoded", "autoencoder", "autoencoder_vocoded"} and out["real_vocoded"]["items"] == 4
    real = out["real_vocoded"]
    assert 0 < real["spectral_convergence"] < 1 and 0 < real["logmel_l1"] < 2 and real["log_spectral_distance"] > 0
    assert out["autoencoder"] == {"logmel_l1": 0.0, "spectral_convergence": 0.0, "log_spectral_distance": 0.0,
                                  "items": 4}
    assert out["autoencoder_vocoded"] == pytest.approx(real, rel=1e-5)  # a perfect autoencoder hits the ceiling
    more = metrics.griffinlim_ceiling(m, x, vocoder=m.vocoder(GriffinLimConfig(name="griffinlim", n_iter=64)))
    assert set(more) == {"real_vocoded"}
    assert more["real_vocoded"]["spectral_convergence"] < real["spectral_convergence"]  # more iterations, less loss


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
def fsdd_folder(tmp_path, fsdd):
    """Five FSDD recordings (one per speaker) beside a corrupt, an empty and a NaN file."""
    names = ["0_george_0.wav", "3_jackson_1.wav", "3_lucas_2.wav", "7_nicolas_3.wav", "7_theo_4.wav"]
    for name in names:
        (tmp_path / name).symlink_to(fsdd / name)
    (tmp_path / "9_broken_0.wav").write_bytes(b"RIFF\x00\x00garbage")
    (tmp_path / "8_empty_0.wav").write_bytes(b"")
    sf.write(tmp_path / "5_nan_0.wav", np.full(800, np.nan, np.float32), 8000, subtype="FLOAT")
    return tmp_path, names


def test_fsdd_folder_labels_resampling_and_corrupt_files(fsdd_folder, fsdd, caplog):
    root, names = fsdd_folder
    m = make(source="folder", root=str(root), val_fraction=0.0)
    data = m.waveforms("train")
    assert re.search(r"skipped 3 unreadable file\(s\): 5_nan_0.wav \(ValueError: non-finite samples\); "
                     r"8_empty_0.wav .*9_broken_0.wav", caplog.text)
    assert sorted(data.names) == names  # paths relative to the folder
    assert data.class_names == ["0", "3", "7"] and len(data.waves) == 5
    assert sorted(data.class_names[k] for k in data.labels) == ["0", "3", "3", "7", "7"]
    # FSDD is 8 kHz: resampled to 16 kHz the clips have twice the samples
    frames = sorted(sf.info(str(fsdd / n)).frames * 2 for n in names)
    assert sorted(len(w) for w in data.waves) == frames
    item = m.dataset("train")[0]
    assert item["x"].shape == (64, 64) and item["cond"]["text"].startswith("a recording of ")


def test_speaker_holdout_split_by_val_pattern(fsdd_folder):
    root, names = fsdd_folder
    m = make(source="folder", root=str(root), val_pattern="_theo_", val_fraction=0.5)  # the pattern wins
    assert m.waveforms("val").names == ["7_theo_4.wav"]
    assert m.waveforms("train").names == names[:4] and len(m.dataset("train")) == 4
    assert [m.waveforms("val").class_names[k] for k in m.waveforms("val").labels] == ["7"]
    # the statistics come from the training speakers only
    train_only = make(source="folder", root=str(root), val_fraction=0.0)
    train_only._sets["train"] = m.waveforms("train")
    assert torch.allclose(m.stats["mean"], train_only.stats["mean"])
    for pattern, what in (("_nobody_", "none"), ("wav$", "all")):
        bad = make(source="folder", root=str(root), val_pattern=pattern)
        message = rf"audio.val_pattern='{re.escape(pattern)}' matches {what} of the 5 readable files"
        with pytest.raises(ValueError, match=message):
            bad.waveforms("train")
    with pytest.raises(ValueError, match="audio.val_pattern='_theo_' needs audio.source='folder'"):
        make(val_pattern="_theo_")
    with pytest.raises(ValueError, match=r"audio.val_pattern='\(' is not a valid regex"):
        make(source="folder", root=str(root), val_pattern="(")


def test_peak_level_equalizes_recording_gain(fsdd_folder):
    root, names = fsdd_folder
    raw = make(source="folder", root=str(root), val_fraction=0.0).waveforms("train")
    m = make(source="folder", root=str(root), val_fraction=0.0, peak_level=0.5)
    waves = m.waveforms("train").waves
    assert max(float(w.abs().max()) for w in raw.waves) / min(float(w.abs().max()) for w in raw.waves) > 5
    for wave, before in zip(waves, raw.waves):
        assert float(wave.abs().max()) == pytest.approx(0.5) and abs(float(wave.mean())) < 1e-6
        assert float(torch.corrcoef(torch.stack([wave, before]))[0, 1]) > 0.999  # a gain and an offset only
    silent = normalize_peak(type(raw)([torch.zeros(5)]), 0.5)
    assert torch.equal(silent.waves[0], torch.zeros(5))
    with pytest.raises(ValueError, match=r"audio.peak_level=2.0 must be in \(0, 1\]"):
        make(peak_level=2.0)


def test_folder_captions_from_text_files(tmp_path):
    for name in ("1_a_0", "2_a_0"):
        sf.write(tmp_path / f"{name}.wav", 0.1 * np.ones(900, np.float32), 8000)
    (tmp_path / "1_a_0.txt").write_text("  someone says one \n")
    m = make(source="folder", root=str(tmp_path), val_fraction=0.0)
    assert m.waveforms("train").texts == ["someone says one", "a recording of 2"]


def test_mel_shift_moves_a_tone_by_whole_bins():
    m = make()
    x = m.features(tone(1000.0, m.length)[None])  # (1, n_mels, T)
    peak = int(m.to_logmel(x)[0].mean(1).argmax())
    for k in (-3, 2):
        assert int(m.to_logmel(mel_shift(m, x, k))[0].mean(1).argmax()) == peak + k
    data = [m.dataset("val")[i] for i in range(2)]
    shifted = MelShiftDataset(data, m, [0, -1, 1])
    assert len(shifted) == 6 and torch.equal(shifted[1]["x"], data[1]["x"]) and shifted[3]["cond"] == data[1]["cond"]
    assert torch.allclose(shifted[4]["x"], mel_shift(m, data[0]["x"][None], 1)[0])
    with pytest.raises(ValueError, match="needs at least one shift"):
        MelShiftDataset(data, m, [])


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


def test_2d_layout_trains_and_samples_through_the_cli(tmp_path):
    """The 2D layout ``[B, 1, n_mels, T]`` takes the same path as the 1D one (test_train_e2e): both
    phases, export, samples as WAV + PNG, then the `sample` verb on the export."""
    from .test_train_e2e import TINY, TINY_MODALITY

    run, env = tmp_path / "run", {"MMLDM_CACHE": str(tmp_path / "cache")}
    out = run_cli("train", "modality=audio", "modality.layout=2d", "denoiser=unet2d", "modality.n_mels=32",
                  *TINY_MODALITY["audio"], *TINY,
                  f"hydra.run.dir={run}", env_extra=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((run / "metrics.json").read_text())
    assert results["autoencoder"]["latent"]["shape"] == [4, 8, 16]  # [c, n_mels / 4, T / 4]
    assert set(results["autoencoder"]["reconstruction"]) == set(metrics.PER_CLIP)
    assert set(results["diffusion"]["generation"]) == {"mean_spectrum_l1", "std_spectrum_l1"}
    wave, rate = sf.read(run / "samples" / "sample_0001.wav")
    assert rate == SR and wave.shape == (63 * 256,)
    assert Image.open(run / "samples" / "sample_0001.png").size == (64 * 3, 32 * 3)  # T x n_mels, 3x
    out = run_cli("sample", str(run / "export"), "n=3", "steps=2", "class=1", f"out={tmp_path / 's'}", env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "s").glob("sample_*.wav"))) == 3 and (tmp_path / "s" / "sample_grid.png").is_file()


def test_presets_compose_audio_defaults_and_the_fsdd_holdout(fsdd):
    from mmldm.configuration import compose

    cfg = compose(["modality=audio"])
    assert (cfg.modality.layout, cfg.denoiser.name, list(cfg.autoencoder.channel_mult)) == ("2d", "unet2d", [1, 2, 4])
    assert cfg.autoencoder.latent_channels == 4  # [1, 64, 64] -> [4, 16, 16]: 4x fewer numbers
    assert "crossattn" in cfg.conditioner.outputs and cfg.denoiser.attention_levels  # the U-Net cross-attends
    cfg = compose(["modality=audio", "preset=audio_1d"])  # the same latent size with mel bins as channels
    assert (cfg.modality.layout, cfg.denoiser.name, cfg.autoencoder.latent_channels) == ("1d", "unet1d", 64)
    cfg = compose(["modality=audio", "preset=audio_fsdd", f"modality.root={fsdd}"])
    m = load_plugins(report=False).registry.build("modality", cfg.modality)
    assert (m.cfg.val_pattern, m.cfg.peak_level, m.sample_rate, m.length) == ("_theo_", 0.5, 8000, 63 * 128)
    # the text recipe: captions from the file names, every speaker in training (takes 40-49 are "val")
    cfg = compose(["modality=audio", "preset=audio_fsdd_text", f"modality.root={fsdd}"])
    assert (cfg.conditioner.name, list(cfg.conditioner.outputs), cfg.diffusion.process.name) == (
        "text", ["crossattn", "vector"], "flow")
    m = load_plugins(report=False).registry.build("modality", cfg.modality)
    train, val = m.dataset("train"), m.dataset("val")
    assert (len(train), len(val)) == (2000, 500)
    from mmldm_audio.metrics import clip_attributes

    assert {a["speaker"] for a in clip_attributes(train)} == {a["speaker"] for a in clip_attributes(val)}
    assert train[0]["cond"]["text"] == "zero, spoken by george"


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_dataset_features_computed_once_equal_per_clip_analysis_and_long_clips_stay_randomly_cropped(tmp_path, layout):
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.3, 0.6, 1.5, 2.0]):  # two clips shorter than a 1.008 s clip, two longer
        sf.write(tmp_path / f"{i % 2}_alice_{i}.wav", 0.3 * rng.standard_normal(int(8000 * seconds)), 8000)
    m = AudioModality(AudioConfig(name="audio", source="folder", root=str(tmp_path), sample_rate=8000, n_fft=512,
                                  hop_length=128, layout=layout, val_fraction=0.0))
    data = m.dataset("train")
    waves = data.data.waves
    for i, wave in enumerate(waves):
        if wave.shape[-1] <= m.length:  # cached: exactly what analysing the padded clip alone gives
            expected = m.features(fix_length(wave, m.length, random_crop=False)[None])[0]
            assert torch.allclose(data[i]["x"], expected, atol=1e-5)
    long = [i for i, w in enumerate(waves) if w.shape[-1] > m.length]
    assert len(long) == 2
    torch.manual_seed(0)
    draws = [data[long[0]]["x"] for _ in range(4)]  # a fresh random crop per access
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    centred = type(data)(data.data, m, random_crop=False)  # without random crops every clip is cached
    expected = m.features(fix_length(waves[long[0]], m.length, random_crop=False)[None])[0]
    assert torch.allclose(centred[long[0]]["x"], expected, atol=1e-5)
