"""`mmldm sample` and export loading: bad settings, damaged or crafted exports fail at once, in one line
naming the setting or the file (exit code 2, no traceback)."""

from __future__ import annotations

import shutil
import time

import pytest

from .conftest import run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def export(tmp_path_factory, one_thread):
    """A tiny untrained class-conditioned image model (3 classes), exported."""
    from mmldm.build import build_autoencoder, build_conditioners, build_denoiser, build_modality
    from mmldm.configuration import compose
    from mmldm.latents import LatentStats
    from mmldm.pipeline import LatentDiffusion

    torch.manual_seed(0)
    cfg = compose(["modality=image", "modality.num_samples=12", "autoencoder.channels=8", "autoencoder.norm_groups=8",
                   "denoiser.model_channels=16", "denoiser.channel_mult=[1,2]", "denoiser.attention_levels=[1]",
                   "conditioner.num_classes=3", "sampler.steps=2"])
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    shape = autoencoder.latent_shape(modality.sample_shape)
    conditioners = build_conditioners(cfg.conditioner, modality, shape)
    denoiser = build_denoiser(cfg.denoiser, shape, conditioners)
    keys = ("modality", "autoencoder", "regularizer", "denoiser", "conditioner", "diffusion", "sampler")
    pipe = LatentDiffusion(modality, autoencoder, LatentStats.identity(shape[0]), {k: cfg[k] for k in keys},
                           denoiser, conditioners)
    return pipe.save_pretrained(tmp_path_factory.mktemp("model") / "export")


def _sample(capsys, *args):
    """``mmldm sample`` in this process (the settings are checked before any sampling)."""
    from mmldm.cli import main

    code = main(["sample", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    assert err.startswith("mmldm sample: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("setting, message", [
    ("n=0", "invalid value '0' for 'n': expected >= 1"),
    ("n=-1", "invalid value '-1' for 'n': expected >= 1"),
    ("steps=0", "invalid value '0' for 'steps': expected >= 1"),  # was: silently 25 steps
    ("seed=-1", "invalid value '-1' for 'seed': expected >= 0"),
    ("guidance=nan", "invalid value 'nan' for 'guidance': expected a finite number"),  # was: black samples
    ("guidance=inf", "invalid value 'inf' for 'guidance': expected a finite number"),
    ("class=abc", "invalid value 'abc' for 'class': expected class indices (integers >= 0), comma-separated"),
    ("class=-2", "invalid value '-2' for 'class'"),
])
def test_bad_settings_fail_before_the_model_loads(capsys, tmp_path, setting, message):
    code, err = _sample(capsys, tmp_path / "nowhere", setting)
    assert code == 2 and message in _one_line(err)


def test_settings_the_model_cannot_take_are_refused(capsys, export):
    code, err = _sample(capsys, export, "class=7")
    assert code == 2 and "invalid value '7' for 'class': expected class indices in 0..2 (the model has 3 classes)" in \
        _one_line(err)
    code, err = _sample(capsys, export, "text=a red star")  # was: silently ignored
    assert code == 2 and "'text=a red star' given, but the model has no text conditioner (it is conditioned on " \
        "class); drop text=" in _one_line(err)
    code, err = _sample(capsys, export, "sampler=nope")
    assert code == 2 and "invalid value 'nope' for 'sampler': expected one of: ddim, ddpm" in _one_line(err)


def test_valid_settings_still_sample(capsys, export, tmp_path):
    code, err = _sample(capsys, export, "n=2", "steps=1", "class=0,2", "seed=3", "guidance=2", f"out={tmp_path}")
    assert code == 0, err
    assert len(list(tmp_path.glob("sample_0*.png"))) == 2


def test_missing_or_damaged_export_is_one_line_naming_the_file(capsys, export, tmp_path):
    code, err = _sample(capsys, tmp_path / "nowhere")
    assert code == 2 and "nowhere is not an exported model folder (no config.yaml)" in _one_line(err)
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    (damaged / "denoiser.safetensors").unlink()
    code, err = _sample(capsys, damaged)
    assert code == 2 and f"weights file not found: {damaged / 'denoiser.safetensors'}" in _one_line(err)
    (damaged / "config.yaml").write_text("modality: [unclosed\n")
    code, err = _sample(capsys, damaged)
    assert code == 2 and f"cannot parse {damaged / 'config.yaml'}" in _one_line(err)
    config = (export / "config.yaml").read_text()
    (damaged / "config.yaml").write_text(config.replace("  size: 32\n", "  size: 32\n  colour: red\n"))
    code, err = _sample(capsys, damaged)  # was: a multi-line OmegaConf message
    assert code == 2 and "does not describe a model the installed plugins can build: ConfigKeyError: Key 'colour' " \
        "not in 'ImageConfig' full_key: colour" in _one_line(err)
    (damaged / "config.yaml").write_text("modality:\n  name: image\n")
    code, err = _sample(capsys, damaged)
    assert code == 2 and "lacks the key(s)" in _one_line(err)


def test_an_autoencoder_only_export_says_so(capsys, export, tmp_path):
    from omegaconf import OmegaConf

    only = tmp_path / "ae"
    shutil.copytree(export, only)
    cfg = OmegaConf.load(only / "config.yaml")
    for key in ("denoiser", "conditioner"):
        cfg.pop(key)
    OmegaConf.save(cfg, only / "config.yaml")
    code, err = _sample(capsys, only)
    assert code == 2 and "holds an autoencoder only" in _one_line(err)


# ---------------------------------------------------------------------------- crafted files
def _billion_laughs(levels: int = 10) -> str:
    """~1 KB of YAML whose aliases expand to 9**levels strings."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join([*lines, "modality: {name: image}", ""])


@pytest.mark.timeout(30)
def test_a_yaml_alias_bomb_in_config_yaml_fails_at_once_naming_the_file(tmp_path):
    """Before: OmegaConf expanded the aliases of a 1 KB config.yaml into 9**10 nodes (`mmldm sample` ran
    for minutes). Exported configs never hold aliases (mmldm writes them resolved), so any is refused."""
    from mmldm.export import ExportError, load_config

    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "config.yaml").write_text(_billion_laughs())
    assert (bomb / "config.yaml").stat().st_size < 1200
    start = time.perf_counter()
    with pytest.raises(ExportError, match=rf"{bomb / 'config.yaml'} uses YAML anchors/aliases"):
        load_config(bomb)
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    out = run_cli("sample", str(bomb), timeout=25)
    assert out.returncode == 2 and "config.yaml uses YAML anchors/aliases" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and time.perf_counter() - start < 10


def test_interpolation_bombs_and_huge_configs_are_refused(tmp_path):
    from mmldm.export import MAX_CONFIG_BYTES, ExportError, load_config

    doubling = "".join(f"a{i}: ${{a{i - 1}}}${{a{i - 1}}}\n" for i in range(1, 60))  # 2**59 characters resolved
    (tmp_path / "config.yaml").write_text("a0: lol\n" + doubling)
    with pytest.raises(ExportError, match="holds an interpolation"):
        load_config(tmp_path)
    (tmp_path / "config.yaml").write_text("a: " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ExportError, match="is larger than 1 MB"):
        load_config(tmp_path)


def test_an_export_mmldm_writes_has_no_aliases_and_loads(export):
    from mmldm.export import load_config

    text = (export / "config.yaml").read_text()
    assert "&" not in text.replace("'&'", "") and "*" not in text
    assert load_config(export).modality.name == "image"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_file_and_tensor(capsys, export, tmp_path, value):
    """Before: NaN weights loaded and every sample came out black (NaN decoded, clipped)."""
    from safetensors.torch import load_file, save_file

    from mmldm.export import ExportError
    from mmldm.pipeline import LatentDiffusion

    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    weights = load_file(broken / "denoiser.safetensors")
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[3]
    weights[name].view(-1)[0] = value
    save_file(weights, str(broken / "denoiser.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=rf"{broken / 'denoiser.safetensors'} holds non-finite .* tensor '{name}'"):
        LatentDiffusion.from_pretrained(broken)
    code, err = _sample(capsys, broken, "n=1", "steps=1")
    assert code == 2 and f"tensor '{name}'" in _one_line(err)
