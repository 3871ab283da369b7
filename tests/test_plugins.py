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


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    with pytest.raises(RegistryError, match=r"modality 'voxel' is registered by two plugins: 'voxel' and 'clash'"):
        load_plugins(extra={"clash": _Clash}, report=False)


def test_plugin_failing_in_registration_is_dropped_whole():
    loaded = load_plugins(extra={"fails": _Fails}, report=False)
    assert any("plugin 'fails' failed to register" in e and "bad state" in e for e in loaded.errors)
    assert "half" not in loaded.registry.names("modality")
    assert "fails" not in loaded.info


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
