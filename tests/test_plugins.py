"""The plugin system: entry-point loading, registry errors, blocking, config selection."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from mmldm import hookimpl
from mmldm.config import ComponentConfig
from mmldm.plugins import load_plugins
from mmldm.registry import KINDS, Registry, RegistryError

from .conftest import make_plugin_package, run_cli

THIRD_PARTY = {
    "mmldm_tiny/__init__.py": '''
        from dataclasses import dataclass
        from mmldm import hookimpl
        from mmldm.config import ComponentConfig

        @dataclass
        class TinyConfig(ComponentConfig):
            width: int = 8  # channels of the only hidden layer

        @hookimpl
        def mmldm_register_components(registry):
            registry.add("denoiser", "tiny", "mmldm_tiny.model:build", config=TinyConfig,
                         description="a one-layer test denoiser")
    ''',
    "mmldm_tiny/model.py": '''
        from torch import nn
        from mmldm.nn import conv_nd

        def build(cfg, *, dims, in_channels, out_channels, **_):
            return nn.Sequential(conv_nd(dims, in_channels, cfg.width, 3, padding=1), nn.SiLU(),
                                 conv_nd(dims, cfg.width, out_channels, 3, padding=1))
    ''',
    "mmldm_broken/__init__.py": "raise ImportError('needs libfoo, which is not installed')\n",
}


@pytest.fixture()
def third_party(tmp_path, monkeypatch):
    root = make_plugin_package(
        tmp_path / "site", "mmldm-tiny", THIRD_PARTY, {"tiny": "mmldm_tiny", "broken": "mmldm_broken"}
    )
    monkeypatch.syspath_prepend(str(root))
    for mod in ("mmldm_tiny", "mmldm_broken"):
        sys.modules.pop(mod, None)
    return root


def test_builtin_plugins_load_through_entry_points():
    loaded = load_plugins(report=False)
    assert {"image", "voxel", "audio", "autoencoders", "unet", "conditioners", "diffusion"} <= set(loaded.info)
    assert loaded.errors == []
    kinds = {c.kind for c in loaded.registry}
    assert {"modality", "autoencoder", "regularizer", "denoiser", "conditioner", "sampler"} <= kinds
    assert {"image", "voxel", "audio"} <= set(loaded.registry.names("modality"))


def test_third_party_plugin_is_registered_and_buildable(third_party):
    loaded = load_plugins(report=False)
    assert "tiny" in loaded.info and loaded.info["tiny"].version == "1.2.3"
    assert loaded.info["tiny"].components == [("denoiser", "tiny")]
    comp = loaded.registry.get("denoiser", "tiny")
    assert comp.plugin == "tiny" and comp.config.__name__ == "TinyConfig"
    import torch

    net = loaded.registry.build("denoiser", {"name": "tiny", "width": 4}, dims=2, in_channels=3, out_channels=3)
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 8, 8)


def test_broken_plugin_is_named_and_others_still_load(third_party):
    loaded = load_plugins(report=False)
    assert len(loaded.errors) == 1
    assert "plugin 'broken'" in loaded.errors[0] and "needs libfoo" in loaded.errors[0]
    assert "tiny" in loaded.info and "voxel" in loaded.info


def test_disabled_plugins_are_not_loaded(third_party, monkeypatch):
    monkeypatch.setenv("MMLDM_DISABLED_PLUGINS", "broken, audio")
    loaded = load_plugins(report=False)
    assert loaded.errors == []
    assert "audio" not in loaded.info and "audio" not in loaded.registry.names("modality")
    assert set(loaded.blocked) == {"broken", "audio"}


class _Clash:
    @staticmethod
    @hookimpl
    def mmldm_register_components(registry):
        registry.add("modality", "voxel", "x:y")


class _Fails:
    @staticmethod
    @hookimpl
    def mmldm_register_components(registry):
        registry.add("modality", "half", "x:y")
        raise RuntimeError("bad state")


def test_a_plugin_claiming_a_builtin_name_is_skipped_and_named_the_builtin_kept():
    """Before: a RegistryError (a traceback in every command) naming both, as if either could go."""
    loaded = load_plugins(extra={"clash": _Clash}, report=False)
    assert loaded.errors == [
        "plugin 'clash' (plugin object _Clash) skipped: component 'voxel' of kind 'modality' is already registered "
        "by built-in plugin 'voxel'; remove or rename it, or set MMLDM_DISABLED_PLUGINS=clash"
    ]
    assert loaded.registry.get("modality", "voxel").plugin == "voxel" and "clash" not in loaded.info


def test_plugin_failing_in_registration_is_dropped_whole():
    loaded = load_plugins(extra={"fails": _Fails}, report=False)
    assert loaded.errors == [
        "plugin 'fails' (plugin object _Fails) skipped: its hook mmldm_register_components raised RuntimeError: "
        "bad state; update or uninstall it, or set MMLDM_DISABLED_PLUGINS=fails"
    ]
    assert "half" not in loaded.registry.names("modality")
    assert "fails" not in loaded.info and "fails" in loaded.skipped
    assert loaded.manager.get_plugin("fails") is None  # its other hooks are gone too


def test_registry_errors_are_explicit():
    reg = Registry().for_plugin("p")
    with pytest.raises(RegistryError, match="unknown kind 'model'.*valid kinds"):
        reg.add("model", "x", "a:b")

    @dataclass
    class NotAComponentConfig:
        width: int = 1

    with pytest.raises(RegistryError, match="must be a dataclass derived from mmldm.config.ComponentConfig"):
        reg.add("denoiser", "x", "a:b", config=NotAComponentConfig)
    with pytest.raises(RegistryError, match="no denoiser named 'nope'; valid choices: \\(none installed\\)"):
        reg.registry.get("denoiser", "nope")
    reg.add("denoiser", "lazy", "mmldm_does_not_exist.module:build")
    with pytest.raises(RegistryError, match="plugin 'p': cannot import its factory 'mmldm_does_not_exist.module:build'"):
        reg.registry.build("denoiser", {"name": "lazy"})
    assert "sampler" in KINDS and "vocoder" in KINDS
    assert "dataset" not in KINDS and "metric" not in KINDS  # nothing consumed them


def test_cli_lists_third_party_and_reports_broken_plugin(third_party):
    out = run_cli("plugins", env_extra={"PYTHONPATH": str(third_party)})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "denoiser: tiny" in lines["tiny"] and "1.2.3" in lines["tiny"]
    for name in ("image", "voxel", "audio"):
        assert "modality: " + name in lines[name]
    assert "plugin 'broken'" in out.stderr and "needs libfoo" in out.stderr


def test_third_party_component_is_selectable_from_the_command_line(third_party):
    out = run_cli(
        "train", "denoiser=tiny", "denoiser.width=5", "--cfg", "job", env_extra={"PYTHONPATH": str(third_party)}
    )
    assert out.returncode == 0, out.stderr
    assert "name: tiny" in out.stdout and "width: 5" in out.stdout
    bad = run_cli("train", "denoiser=tiny", "denoiser.width=abc", env_extra={"PYTHONPATH": str(third_party)})
    assert bad.returncode == 2
    assert "invalid value 'abc' for config key 'denoiser.width'" in bad.stderr


# ---------------------------------------------------------------------------- isolation of failing plugins
BUILTINS = {"image", "voxel", "audio", "autoencoders", "unet", "dit", "conditioners", "diffusion"}

ACME = {  # 'acme' sorts before 'unet': the built-in must win by loading first, not by name
    "acme_pkg/__init__.py": "",
    "acme_pkg/plugin.py": '''
        from mmldm import hookimpl

        @hookimpl
        def mmldm_register_components(registry):
            registry.add("denoiser", "acme_net", "acme_pkg.model:build", description="registered before the clash")
            registry.add("denoiser", "unet", "acme_pkg.model:build")
    ''',
}
ACME_LINE = ("plugin 'acme' (entry point acme = acme_pkg.plugin) skipped: component 'unet' of kind 'denoiser' is "
             "already registered by built-in plugin 'unet'; remove or rename it, or set MMLDM_DISABLED_PLUGINS=acme")


@pytest.fixture()
def acme(third_party, monkeypatch):
    """The third-party plugins above plus 'acme', whose second component clashes with the built-in 'unet'."""
    make_plugin_package(third_party, "acme", ACME, {"acme": "acme_pkg.plugin"}, version="0.3.0")
    sys.modules.pop("acme_pkg", None)
    sys.modules.pop("acme_pkg.plugin", None)
    return third_party


def test_a_third_party_clash_with_a_builtin_skips_the_third_party_plugin_whole(acme):
    loaded = load_plugins(report=False)
    assert ACME_LINE in loaded.errors and len(loaded.errors) == 2  # and 'broken', which does not import
    assert BUILTINS | {"tiny"} == set(loaded.info)
    assert loaded.registry.get("denoiser", "unet").plugin == "unet"
    assert "acme_net" not in loaded.registry.names("denoiser")  # registered before the clash, dropped with it
    assert loaded.skipped["acme"].components == (("denoiser", "acme_net"),)
    assert loaded.manager.get_plugin("acme") is None


def test_selecting_a_component_of_a_skipped_plugin_says_why(acme):
    loaded = load_plugins(report=False)
    choices = ", ".join(loaded.registry.names("denoiser"))
    with pytest.raises(RegistryError) as e:
        loaded.registry.get("denoiser", "acme_net")
    assert str(e.value) == (
        f"no denoiser named 'acme_net'; valid choices: {choices}; plugin 'acme' (entry point acme = acme_pkg.plugin) "
        "registers it but was skipped: component 'unet' of kind 'denoiser' is already registered by built-in plugin "
        "'unet'"
    )
    with pytest.raises(RegistryError) as e:  # a plugin that did not import may be the one that has it
        loaded.registry.get("modality", "mri")
    assert str(e.value) == (
        "no modality named 'mri'; valid choices: audio, image, voxel; skipped plugin(s) that may provide it: "
        "'broken' (entry point broken = mmldm_broken): it failed to import: ImportError: needs libfoo, which is not "
        "installed; 'acme' (entry point acme = acme_pkg.plugin): component 'unet' of kind 'denoiser' is already "
        "registered by built-in plugin 'unet'"
    )


class _Metric:
    @staticmethod
    @hookimpl
    def mmldm_register_components(registry):
        registry.add("denoiser", "metric_net", "x:y")
        registry.add("metric", "fid", "x:y")


class _Swallows:
    """Catches the registry's error and goes on: still skipped whole, not kept half."""

    @staticmethod
    @hookimpl
    def mmldm_register_components(registry):
        registry.add("denoiser", "mine", "x:y")
        try:
            registry.add("sampler", "ddim", "x:y")
        except RegistryError:
            pass
        registry.add("denoiser", "mine_too", "x:y")


class _Misspelled:
    @staticmethod
    @hookimpl
    def mmldm_register_componets(registry):
        registry.add("denoiser", "typo", "x:y")


class _BadConfigDirs:
    @staticmethod
    @hookimpl
    def mmldm_register_components(registry):
        registry.add("denoiser", "dirs_net", "x:y")

    @staticmethod
    @hookimpl
    def mmldm_config_dirs():
        raise OSError("no such folder")


def test_every_kind_of_plugin_failure_is_one_line_and_the_plugin_is_skipped_whole(monkeypatch, capsys):
    monkeypatch.setenv("MMLDM_DISABLED_PLUGINS", "audio")
    extra = {"metric": _Metric, "swallows": _Swallows, "misspelled": _Misspelled, "dirs": _BadConfigDirs}
    loaded = load_plugins(extra=extra, report=True)
    kinds = "modality, autoencoder, regularizer, denoiser, conditioner, sampler, process, vocoder"
    block = "or set MMLDM_DISABLED_PLUGINS=audio,"  # the hint keeps what is blocked already
    assert loaded.errors == [  # 'misspelled' when registered with pluggy, then the others by name as they load
        "plugin 'misspelled' (plugin object _Misspelled) skipped: it implements unknown hook(s) mmldm_register_componets "
        "(misspelled?); mmldm's hooks: mmldm_config_dirs, mmldm_load_phase1, mmldm_phase1_latent_shape, "
        f"mmldm_register_components; update or uninstall it, {block}misspelled",
        "plugin 'dirs' (plugin object _BadConfigDirs) skipped: its hook mmldm_config_dirs raised OSError: no such "
        f"folder; update or uninstall it, {block}dirs",
        f"plugin 'metric' (plugin object _Metric) skipped: component 'fid' has unknown kind 'metric'; valid kinds: {kinds}; "
        f"update or uninstall it, {block}metric",
        "plugin 'swallows' (plugin object _Swallows) skipped: component 'ddim' of kind 'sampler' is already registered "
        f"by built-in plugin 'diffusion'; remove or rename it, {block}swallows",
    ]
    assert capsys.readouterr().err.splitlines() == [f"mmldm: {line}" for line in loaded.errors]
    assert set(loaded.info) == BUILTINS - {"audio"}
    denoisers = set(loaded.registry.names("denoiser"))
    assert denoisers.isdisjoint({"metric_net", "mine", "mine_too", "typo", "dirs_net"}) and "unet2d" in denoisers
    assert loaded.registry.get("sampler", "ddim").plugin == "diffusion"
    assert all(loaded.manager.get_plugin(name) is None for name in extra)


class _Shared:
    @staticmethod
    @hookimpl
    def mmldm_register_components(registry):
        registry.add("denoiser", "shared", "x:y")


class _SharedToo(_Shared):
    pass


def test_two_third_party_plugins_claiming_one_name_keep_the_first_by_name():
    loaded = load_plugins(extra={"zeta": _SharedToo, "alpha": _Shared}, report=False)
    assert loaded.registry.get("denoiser", "shared").plugin == "alpha"
    assert loaded.errors == [
        "plugin 'zeta' (plugin object _SharedToo) skipped: component 'shared' of kind 'denoiser' is already registered "
        "by plugin 'alpha'; remove or rename it, or set MMLDM_DISABLED_PLUGINS=zeta"
    ]
    twice = load_plugins(extra={"beta": _Shared, "alpha": _Shared}, report=False)  # one module, two entry points
    assert twice.errors == [
        "plugin 'beta' (plugin object _Shared) skipped: it is the plugin 'alpha' again (one module, two names); "
        "update or uninstall it, or set MMLDM_DISABLED_PLUGINS=beta"
    ]
    assert twice.registry.get("denoiser", "shared").plugin == "alpha"


def test_mmldm_plugins_lists_the_others_and_names_a_clashing_plugin_in_one_line(acme):
    """Before: `mmldm plugins` (and every other command) died with a 25-line traceback."""
    out = run_cli("plugins", env_extra={"PYTHONPATH": str(acme)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [  # in load order: imports first
        "mmldm: plugin 'broken' (entry point broken = mmldm_broken) skipped: it failed to import: ImportError: needs "
        "libfoo, which is not installed; update or uninstall it, or set MMLDM_DISABLED_PLUGINS=broken",
        f"mmldm: {ACME_LINE}",
    ]
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert BUILTINS | {"tiny"} <= set(lines) and "acme" not in lines
    assert "denoiser: unet, unet1d, unet2d, unet3d" in lines["unet"]
    assert out.stdout.splitlines()[-1] == "skipped (failed to load, see the 'mmldm: plugin ...' lines): acme, broken"


def test_other_commands_warn_in_one_line_and_go_on(acme):
    env = {"PYTHONPATH": str(acme), "MMLDM_DISABLED_PLUGINS": "broken"}
    out = run_cli("train", "denoiser=unet3d", "--cfg", "job", env_extra=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [f"mmldm: {ACME_LINE.replace('=acme', '=broken,acme')}"]
    assert "name: unet3d" in out.stdout
    bad = run_cli("train", "denoiser=acme_net", "--cfg", "job", env_extra=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines()[1].startswith("mmldm train: error: unknown denoiser 'acme_net' (in 'denoiser=acme_net')")
    assert bad.stderr.splitlines()[1].endswith(
        "; plugin 'acme' (entry point acme = acme_pkg.plugin) registers it but was skipped: component 'unet' of kind "
        "'denoiser' is already registered by built-in plugin 'unet'")
