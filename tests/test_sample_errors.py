"""`mmldm sample` and export loading: bad settings, damaged or crafted exports fail at once, in one line
naming the setting or the file (exit code 2, no traceback)."""

from __future__ import annotations

import shutil
import time

import pytest

from .conftest import run_cli

torch = pytest.importorskip("torch")


def _tiny_export(directory, *overrides, captions=None):
    """A tiny untrained image model of ``overrides``, exported to ``directory``; ``captions`` teach a text
    conditioner's tokenizer."""
    from mmldm.build import build_autoencoder, build_conditioners, build_denoiser, build_modality
    from mmldm.configuration import compose
    from mmldm.latents import LatentStats
    from mmldm.pipeline import LatentDiffusion

    torch.manual_seed(0)
    cfg = compose(["modality=image", "modality.num_samples=12", "autoencoder.channels=8", "autoencoder.norm_groups=8",
                   "denoiser.model_channels=16", "denoiser.channel_mult=[1,2]", "denoiser.attention_levels=[1]",
                   *overrides])
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    shape = autoencoder.latent_shape(modality.sample_shape)
    conditioners = build_conditioners(cfg.conditioner, modality, shape)
    if captions:
        conditioners[0].fit(captions)
    denoiser = build_denoiser(cfg.denoiser, shape, conditioners)
    keys = ("modality", "autoencoder", "regularizer", "denoiser", "conditioner", "diffusion", "sampler")
    pipe = LatentDiffusion(modality, autoencoder, LatentStats.identity(shape[0]), {k: cfg[k] for k in keys},
                           denoiser, conditioners)
    return pipe.save_pretrained(directory)


@pytest.fixture(scope="module")
def export(tmp_path_factory, one_thread):
    """A tiny untrained class-conditioned image model (3 classes), exported."""
    return _tiny_export(tmp_path_factory.mktemp("model") / "export", "conditioner.num_classes=3", "sampler.steps=2")


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
    code, err = _sample(capsys, export, "compose=class")  # a class label has no parts
    assert code == 2 and "compose names 'class', but conditioner 'class' (ClassConditioner) cannot split its " \
        "condition into parts" in _one_line(err)
    code, err = _sample(capsys, export, "compose=text")
    assert code == 2 and "compose names unknown condition key(s) ['text']; the conditioners read ['class']" in \
        _one_line(err)
    code, err = _sample(capsys, export, "sampler=nope")
    assert code == 2 and "invalid value 'nope' for 'sampler': expected one of: ddim, ddpm" in _one_line(err)


SETTINGS = "n, steps, sampler, guidance, class, text, seed, out, compose"


@pytest.mark.parametrize("args, message", [
    (["eta=0.5"], "unknown setting 'eta=0.5': sampler 'dpmpp_2m' has no option 'eta' (its options: spacing); "
                  f"the settings of mmldm sample are {SETTINGS}"),  # the export's sampler
    (["sampler=euler", "etta=1"], "unknown setting 'etta=1': sampler 'euler' has no option 'etta' (its options: "
                                  f"spacing); the settings of mmldm sample are {SETTINGS}"),
    (["sampler=ddim", "etta=1"], "unknown setting 'etta=1': sampler 'ddim' has no option 'etta' (its options: "
                                 f"spacing, eta); the settings of mmldm sample are {SETTINGS}"),
    (["sampler=ddim", "eta=-1"], "invalid value '-1' for 'eta' (option of sampler 'ddim'): expected >= 0"),
    (["sampler=ddim", "eta=abc"], "invalid value 'abc' for 'eta' (option of sampler 'ddim'): expected a number"),
    (["sampler=ddim", "eta=nan"], "invalid value 'nan' for 'eta' (option of sampler 'ddim'): expected a finite "
                                  "number >= 0"),
    (["spacing=sideways"], "invalid value 'sideways' for 'spacing' (option of sampler 'dpmpp_2m'): expected one of: "
                           "auto, leading, trailing, linspace, karras"),
    (["steps"], f"unknown setting 'steps'; valid keys: {SETTINGS} or an option of the sampler (as key=value)"),
])
def test_sampler_options_the_sampler_does_not_take_are_refused_naming_them(capsys, export, args, message):
    code, err = _sample(capsys, export, *args)
    assert code == 2 and _one_line(err) == f"mmldm sample: error: {message}\n"


def test_sampler_options_reach_the_sampler(capsys, export, tmp_path, monkeypatch):
    """Before: `mmldm sample <export> eta=0.5` was refused as an unknown setting."""
    from mmldm.diffusion import samplers

    seen = []
    ddim = samplers.sample_ddim

    def spy(*args, **kwargs):
        seen.append(kwargs.get("eta"))
        return ddim(*args, **kwargs)

    monkeypatch.setattr(samplers, "sample_ddim", spy)
    code, err = _sample(capsys, export, "n=1", "steps=2", "sampler=ddim", "eta=0.5", "spacing=linspace",
                        f"out={tmp_path}")
    assert code == 0, err
    assert seen == [0.5] and len(list(tmp_path.glob("sample_0*.png"))) == 1


def test_an_export_recording_a_sampler_that_is_not_installed_says_so(capsys, export, tmp_path):
    from omegaconf import OmegaConf

    other = tmp_path / "other"
    shutil.copytree(export, other)
    cfg = OmegaConf.load(other / "config.yaml")
    cfg.sampler.name = "unipc"
    OmegaConf.save(cfg, other / "config.yaml")
    code, err = _sample(capsys, other, "n=1")  # was: a RegistryError traceback from the sampling call
    assert code == 2 and _one_line(err) == (
        f"mmldm sample: error: {other / 'config.yaml'} records sampler 'unipc', which is not installed; choose one "
        "of ddim, ddpm, dpmpp_2m, euler, heun with sampler=\n")


def test_an_export_of_a_plugin_that_does_not_import_is_one_line_naming_the_plugin(export, tmp_path):
    from omegaconf import OmegaConf

    from .conftest import make_plugin_package

    site = make_plugin_package(tmp_path / "site", "acme", {"acme_pkg/__init__.py": "import libfoo_not_there\n"},
                               {"acme": "acme_pkg"})
    other = tmp_path / "other"
    shutil.copytree(export, other)
    cfg = OmegaConf.load(other / "config.yaml")
    cfg.denoiser = {"name": "acme_net"}
    OmegaConf.save(cfg, other / "config.yaml")
    out = run_cli("sample", str(other), "n=1", env_extra={"PYTHONPATH": str(site)})
    skipped = ("plugin 'acme' (entry point acme = acme_pkg) skipped: it failed to import: ModuleNotFoundError: No "
               "module named 'libfoo_not_there'")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    warning, error = out.stderr.splitlines()
    assert warning == f"mmldm: {skipped}; update or uninstall it, or set MMLDM_DISABLED_PLUGINS=acme"
    assert error.startswith(f"mmldm sample: error: {other / 'config.yaml'} does not describe a model the installed "
                            "plugins can build: RegistryError: no denoiser named 'acme_net'; valid choices: dit, unet")
    assert error.endswith("; skipped plugin(s) that may provide it: 'acme' (entry point acme = acme_pkg): it failed to "
                          "import: ModuleNotFoundError: No module named 'libfoo_not_there'")


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


# ---------------------------------------------------------------------------- encode / evaluate
def _edited(export, where, **changes):
    """A copy of ``export`` at ``where`` whose config.yaml has ``changes`` (dotted keys) applied."""
    from omegaconf import OmegaConf

    shutil.copytree(export, where)
    cfg = OmegaConf.load(where / "config.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, where / "config.yaml")
    return where


def _hydra_verb(verb, tmp_path, *args, env=None):
    out = run_cli(verb, "modality=image", f"hydra.run.dir={tmp_path / 'run'}", *args, env_extra=env, cwd=tmp_path)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    return lines


def test_evaluate_of_an_export_recording_an_uninstalled_sampler_is_one_line(export, tmp_path):
    """Before: a RegistryError traceback from the sampling call, after the autoencoder was measured."""
    other = _edited(export, tmp_path / "other", **{"sampler.name": "unipc"})
    lines = _hydra_verb("evaluate", tmp_path, f"phase1.checkpoint={other}", "sample.num_samples=2")
    assert lines == ["mmldm evaluate: error: no sampler named 'unipc'; valid choices: ddim, ddpm, dpmpp_2m, euler, heun"]


def test_encode_and_evaluate_name_a_plugin_that_does_not_import(export, tmp_path):
    from .conftest import make_plugin_package

    site = make_plugin_package(tmp_path / "site", "acme", {"acme_pkg/__init__.py": "import libfoo_not_there\n"},
                               {"acme": "acme_pkg"})
    other = _edited(export, tmp_path / "other", **{"modality.name": "acme_modality"})
    for verb in ("encode", "evaluate"):
        warning, error = _hydra_verb(verb, tmp_path, f"phase1.checkpoint={other}", env={"PYTHONPATH": str(site)})
        assert warning == ("mmldm: plugin 'acme' (entry point acme = acme_pkg) skipped: it failed to import: "
                           "ModuleNotFoundError: No module named 'libfoo_not_there'; update or uninstall it, or set "
                           "MMLDM_DISABLED_PLUGINS=acme")
        assert error == (
            f"mmldm {verb}: error: {other / 'config.yaml'} does not describe a model the installed plugins can build: "
            "RegistryError: no modality named 'acme_modality'; valid choices: audio, image, voxel; skipped plugin(s) "
            "that may provide it: 'acme' (entry point acme = acme_pkg): it failed to import: ModuleNotFoundError: No "
            "module named 'libfoo_not_there'")


def test_encode_and_evaluate_name_a_missing_or_damaged_export(export, tmp_path):
    lines = _hydra_verb("encode", tmp_path, f"phase1.checkpoint={tmp_path / 'nowhere'}")
    assert lines == [f"mmldm encode: error: {tmp_path / 'nowhere' / 'config.yaml'} not found: expected an exported mmldm "
                     "folder (config.yaml + *.safetensors)"]
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    (damaged / "autoencoder.safetensors").write_bytes(b"not safetensors")
    lines = _hydra_verb("evaluate", tmp_path, f"phase1.checkpoint={damaged}")
    assert len(lines) == 1 and lines[0].startswith(
        f"mmldm evaluate: error: cannot read weights file {damaged / 'autoencoder.safetensors'} (corrupted or truncated?)")


@pytest.fixture(scope="module")
def text_export(tmp_path_factory, one_thread):
    """A tiny untrained text-conditioned image model whose tokenizer learned 'a {red,blue} {star,ring}'."""
    return _tiny_export(tmp_path_factory.mktemp("model") / "export", "conditioner=text", "conditioner.hidden_size=16",
                        "conditioner.num_heads=2", "conditioner.num_layers=1", "sampler.steps=1",
                        captions=[f"a {c} {s}" for c in ("red", "blue") for s in ("star", "ring")] * 4)


def test_sample_warns_about_words_the_training_captions_never_held(capsys, text_export, tmp_path):
    code, err = _sample(capsys, text_export, "text=a purple star|A BLUE ring.|a red ring", "n=3", "steps=1",
                        f"out={tmp_path / 'samples'}")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("mmldm sample:")]  # not the progress bar
    assert len(lines) == 1, err  # one caption of three has a word the tokenizer does not know
    assert lines[0].startswith("mmldm sample: warning: text='a purple star': 1 word(s) the model's tokenizer does "
                               "not know: 'purple' (tokens ")
    assert len(list((tmp_path / "samples").glob("*.png"))) >= 3  # a warning, not an error: the samples are written
    code, err = _sample(capsys, text_export, "text=a red star", "n=1", "steps=1", f"out={tmp_path / 'more'}")
    assert code == 0 and "warning" not in err


def test_unknown_words_of_each_tokenizer():
    from transformers import BertTokenizerFast

    from mmldm_conditioners.text import TextConditioner

    bpe = TextConditioner(vocab_size=300, hidden_size=16, num_heads=2, num_layers=1)
    bpe.fit(["a small red star on the left", "a large blue ring on the right"] * 3)
    assert bpe.unknown_words("A small RED star, on the left!") == {}
    assert list(bpe.unknown_words("a tiny red star on the far left")) == ["tiny", "far"]
    byte = TextConditioner(tokenizer="byte", vocab_size=300, hidden_size=16, num_heads=2, num_layers=1)
    assert byte.unknown_words("anything at all") == {}  # bytes: no vocabulary of words to check against
    wordpiece = BertTokenizerFast(vocab=dict((w, i) for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "star"])), do_lower_case=True)
    bpe._tokenizer = wordpiece  # a pretrained encoder's tokenizer: only [UNK] pieces are unknown
    bpe.tokenizer_kind = "given"
    assert bpe.unknown_words("a red star") == {} and bpe.unknown_words("a red moon") == {"moon": ["[UNK]"]}
