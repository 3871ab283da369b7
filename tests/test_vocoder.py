"""The audio modality's vocoders: the neural (Vocos-style) vocoder's shapes, training, trained folder and
selection by config, and exports that carry its weights; `mmldm train-vocoder` end to end.

Everything is tiny (8 kHz synthesized clips of 16 frames, a 2-block network of 16 channels), so the file
runs in well under a minute; the quality of a trained vocoder is measured on real speech, not here."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import torch
import yaml

from mmldm.interfaces import Vocoder
from mmldm.plugins import registry
from mmldm_audio.config import AudioConfig, VocosConfig
from mmldm_audio.modality import AudioModality
from mmldm_audio.neural_vocoder import WEIGHTS_FILE
from mmldm_audio.vocoder_training import VocoderLoss, random_crops

from .conftest import run_cli

#: A tiny modality: 16 frames of hop 64 at 8 kHz (960 samples), 32 mel bins.
FEATURES = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "num_frames": 16}
#: A tiny network and recipe (crops of 10 frames = 576 samples: the loss's longest STFT at 8 kHz is 512).
TINY = {"dim": 16, "hidden_dim": 32, "layers": 2, "kernel_size": 3, "segment_frames": 10, "batch_size": 4,
        "warmup_steps": 0, "eval_clips": 4, "listen_clips": 2}


def make(**kw) -> AudioModality:
    return AudioModality(AudioConfig(name="audio", **{"num_samples": 20, **FEATURES, **kw}))


def vocos(**kw) -> VocosConfig:
    return VocosConfig(name="vocos", **{**TINY, **kw})


def features(m: AudioModality, n: int = 3) -> torch.Tensor:
    val = m.dataset("val")
    return torch.stack([val[i % len(val)]["x"] for i in range(n)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A vocoder folder trained for a few steps by ``Vocoder.fit`` (what ``mmldm train-vocoder`` runs)."""
    m, folder = make(), tmp_path_factory.mktemp("vocoder")
    torch.manual_seed(0)
    vocoder = m.vocoder(vocos(max_steps=3))
    record = vocoder.fit(m, folder, seed=0, progress=False)
    return folder, record, vocoder


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_shapes_and_lengths_match_griffinlim(layout, one_thread):
    m = make(layout=layout)
    x = features(m)
    assert x.shape == (3, *m.sample_shape)
    torch.manual_seed(0)
    neural = registry().build("vocoder", vocos(), modality=m)
    griffinlim = m.vocoder()  # the default: modality.vocoder=griffinlim
    assert isinstance(neural, Vocoder) and neural.sample_rate == 8000 == griffinlim.sample_rate
    wave = neural(x)
    assert wave.shape == griffinlim(x).shape == (3, (16 - 1) * 64) == (3, m.length)
    assert torch.isfinite(wave).all() and wave.abs().max() > 0
    # one network frame is one hop: the denormalized log-mel of any length T gives (T - 1) * hop samples
    assert neural.net(m.to_logmel(x)[..., :5]).shape == (3, 4 * 64)
    assert torch.allclose(neural.to_logmel(x), m.to_logmel(x))


def test_training_steps_reduce_the_loss(tmp_path, one_thread):
    m = make()
    torch.manual_seed(0)
    vocoder = m.vocoder(vocos(lr=3e-3))
    loss_fn = VocoderLoss(m.logmel, m.sample_rate, mel_weight=1.0)
    target = random_crops(m.waveforms("train").waves, 9 * 64, 8, torch.Generator().manual_seed(1))

    def loss() -> float:
        with torch.no_grad():
            return float(loss_fn(vocoder.net(m.logmel(target)), target)[0])

    before = loss()
    record = vocoder.fit(m, tmp_path, seed=0, max_steps=25, progress=False)
    assert record["provenance"]["steps"] == 25
    assert loss() < 0.8 * before
    # crops shorter than the loss's longest STFT (512 samples at 8 kHz) are refused before any step
    with pytest.raises(ValueError, match=r"vocoder.segment_frames=8 gives crops of 448 samples.* at least 9"):
        m.vocoder(vocos(segment_frames=8)).fit(m, tmp_path / "short", progress=False)


def test_trained_folder_round_trips(trained, tmp_path, one_thread):
    folder, record, vocoder = trained
    assert (folder / WEIGHTS_FILE).is_file() and (folder / "config.yaml").is_file()
    written = yaml.safe_load((folder / "config.yaml").read_text())
    assert written["vocoder"]["name"] == "vocos" and written["vocoder"]["dim"] == 16
    assert written["features"] == {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32,
                                   "f_min": 0.0, "f_max": 4000.0, "log_floor": 1e-5}
    provenance = written["provenance"]
    assert provenance["steps"] == 3 and provenance["train_seconds"] > 0
    assert provenance["data"]["source"] == "synth" and provenance["data"]["split"] == "train"
    heldout = written["metrics"]["heldout"]
    assert heldout["split"] == "val" and heldout["clips"] == 2  # 20 clips, val_fraction 0.1: 2 held out
    for name in ("vocos", "griffinlim"):
        assert set(heldout[name]) == {"mrstft_distance", "spectral_convergence", "log_magnitude_l1", "logmel_l1"}
        assert heldout[name]["mrstft_distance"] > 0
    assert sorted(p.name for p in (folder / "heldout").iterdir()) == [
        f"{i:03d}_{n}.wav" for i in range(2) for n in ("griffinlim", "real", "vocos")]
    # selected by config, the folder gives the same vocoder: identical output
    m = make(vocoder="vocos", vocoder_path=str(folder))
    x = features(m)
    loaded = m.vocoder()
    assert loaded is m.vocoder() and loaded is not vocoder  # cached
    assert torch.equal(loaded(x), vocoder(x))
    # the modality's files are vocoded by it (save() is unchanged)
    paths = m.save(x, tmp_path, prefix="s")
    wave, rate = sf.read(paths[0], dtype="float32")
    assert rate == 8000 and wave.shape == (m.length,)
    assert torch.allclose(torch.from_numpy(wave), vocoder(x)[0].clamp(-1, 1), atol=1 / 2**14)


def test_selection_errors_name_the_key(tmp_path):
    from mmldm.configuration import ConfigProblem, compose

    with pytest.raises(ValueError, match=r"modality.vocoder=vocos needs modality.vocoder_path"):
        make(vocoder="vocos")
    with pytest.raises(ConfigProblem, match=r"modality.vocoder=vocos needs modality.vocoder_path: the folder "
                                            r"`mmldm train-vocoder` writes"):
        compose(["modality=audio", "modality.vocoder=vocos"])
    with pytest.raises(ConfigProblem, match=r"'modality.vocoder': expected one of: griffinlim, vocos"):
        compose(["modality=audio", "modality.vocoder=hifigan"])
    assert compose(["modality=audio"]).modality.vocoder == "griffinlim"
    # a folder that is not there: refused when the vocoder is needed (an export carries its own weights)
    m = make(vocoder="vocos", vocoder_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"modality.vocoder_path=.*missing: no such folder"):
        m.vocoder()
    with pytest.raises(NotImplementedError, match="needs no training"):
        make().vocoder().fit(make(), tmp_path)


def test_mismatched_feature_settings_are_refused_naming_the_file(trained):
    from mmldm.configuration import ConfigProblem, compose

    folder = trained[0]
    config = str(folder / "config.yaml")
    with pytest.raises(ValueError, match=rf"{config} \(modality.vocoder_path=.*\): the vocoder was trained on "
                                         r"features.hop_length=64, but modality.hop_length=128"):
        make(vocoder="vocos", vocoder_path=str(folder), hop_length=128)
    with pytest.raises(ConfigProblem, match=r"features.n_mels=32, but modality.n_mels=64"):
        compose(["modality=audio", *(f"modality.{k}={v}" for k, v in FEATURES.items() if k != "n_mels"),
                 "modality.vocoder=vocos", f"modality.vocoder_path={folder}"])
    make(vocoder="vocos", vocoder_path=str(folder), num_frames=24, layout="2d")  # frames and layout may differ


def test_export_carries_the_vocoder(trained, tmp_path, one_thread):
    from mmldm.build import build_autoencoder
    from mmldm.configuration import compose
    from mmldm.latents import LatentStats
    from mmldm.pipeline import LatentDiffusion

    folder = tmp_path / "vocoder"
    shutil.copytree(trained[0], folder)
    cfg = compose(["modality=audio", "preset=audio_1d", *(f"modality.{k}={v}" for k, v in FEATURES.items()),
                   "modality.num_samples=20",
                   "modality.vocoder=vocos", f"modality.vocoder_path={folder}", "autoencoder.channels=8",
                   "autoencoder.norm_groups=8"])
    m = registry().build("modality", cfg.modality)
    torch.manual_seed(0)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, m)
    pipe = LatentDiffusion(m, autoencoder, LatentStats.identity(autoencoder.latent_channels),
                           {k: cfg[k] for k in ("modality", "autoencoder", "regularizer")})
    export = pipe.save_pretrained(tmp_path / "export")
    assert (export / WEIGHTS_FILE).is_file()
    shutil.rmtree(folder)  # the export no longer needs the vocoder's folder
    loaded = LatentDiffusion.from_pretrained(export)
    x = features(m)
    assert torch.equal(loaded.modality.vocoder()(x), trained[2](x))
    assert loaded.modality.state_dict()["vocoder"]["provenance"]["steps"] == 3
    paths = loaded.modality.save(loaded.decode(loaded.encode(x)), tmp_path / "files")
    assert sf.read(paths[0])[0].shape == (m.length,)
    (export / WEIGHTS_FILE).unlink()
    with pytest.raises(Exception, match=r"weights file not found: .*vocoder\.safetensors"):
        LatentDiffusion.from_pretrained(export)


def test_train_vocoder_command(tmp_path):
    run = tmp_path / "voc"
    keys = {**TINY, "max_steps": 2}
    out = run_cli("train-vocoder", *(f"modality.{k}={v}" for k, v in FEATURES.items()), "modality.num_samples=20",
                  *(f"vocoder.{k}={v}" for k, v in keys.items()), f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"modality.vocoder=vocos modality.vocoder_path={run}" in out.stdout
    assert (run / WEIGHTS_FILE).is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["provenance"]["steps"] == 2
    bad = run_cli("train-vocoder", "vocoder.dim=-1", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid value '-1' for config key 'vocoder.dim': expected > 0" in bad.stderr
    helped = run_cli("train-vocoder", "--help")
    assert helped.returncode == 0 and "vocoder.safetensors" in helped.stdout and "  vocos: dim=" in helped.stdout


def test_a_missing_vocoder_folder_fails_before_training(tmp_path):
    from mmldm.build import build_modality
    from mmldm.configuration import compose
    from mmldm.training.preflight import PreflightError, check_run

    gone = tmp_path / "no_such_vocoder"
    cfg = compose(["modality=audio", *(f"modality.{k}={v}" for k, v in FEATURES.items()), "modality.num_samples=20",
                   "modality.vocoder=vocos", f"modality.vocoder_path={gone}", "autoencoder.channels=8",
                   "denoiser.model_channels=16"])
    with pytest.raises(PreflightError, match=f"modality=audio: .*{gone.name}"):
        check_run(cfg, build_modality(cfg.modality))
