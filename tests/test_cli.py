"""The `mmldm` command: help, validation before work, config composition, installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from mmldm.configuration import ConfigProblem, compose, validate

from .conftest import ROOT, run_cli


def test_unknown_modality_fails_fast_listing_choices(tmp_path):
    start = time.perf_counter()
    out = run_cli("train", "modality=nope", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert out.returncode == 2
    assert "unknown modality 'nope'" in out.stderr
    assert "valid choices for modality: audio, image, voxel" in out.stderr
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert not (tmp_path / "outputs").exists(), "no run directory may be created for a bad override"


def test_unknown_key_names_key_value_and_valid_keys():
    with pytest.raises(ConfigProblem) as e:
        validate(["trainer.max_stepz=10"])
    msg = str(e.value)
    assert "unknown config key 'trainer.max_stepz' (value '10')" in msg
    assert "max_steps" in msg and "valid keys under 'trainer'" in msg


def test_bad_value_type_is_reported():
    with pytest.raises(ConfigProblem, match="invalid value 'ten' for config key 'trainer.max_steps'"):
        validate(["trainer.max_steps=ten"])


def test_sweep_values_are_checked_one_by_one():
    with pytest.raises(ConfigProblem, match="unknown regularizer 'kk'.*valid choices for regularizer: ae, kl, vq"):
        validate(["regularizer=kl,kk"])
    assert validate(["regularizer=kl,vq"]).config.regularizer.name == "kl"


def test_modality_selects_its_preset():
    for modality in ("voxel", "image", "audio"):
        cfg = compose([f"modality={modality}", "trainer=quick"])
        assert cfg.modality.name == modality
        assert cfg.trainer.accelerator == "cpu"
    assert compose(["trainer.max_steps=10"]).trainer.max_steps == 10


@pytest.mark.parametrize("verb", ["train", "sample", "encode", "evaluate", "plugins"])
def test_every_verb_has_help(verb):
    out = run_cli(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: mmldm {verb}" in out.stdout
    if verb in ("train", "encode", "evaluate"):
        assert "modality" in out.stdout and "voxel" in out.stdout and "--multirun" in out.stdout


def test_main_help_and_unknown_command():
    out = run_cli("--help")
    assert out.returncode == 0 and "train" in out.stdout and "plugins" in out.stdout
    bad = run_cli("trian")
    assert bad.returncode == 2 and "unknown command; valid commands:" in bad.stderr


def test_cfg_job_prints_composed_config_without_work(tmp_path):
    out = run_cli("train", "modality=audio", "trainer=quick", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: audio" in out.stdout and "max_steps: 300" in out.stdout


def test_non_editable_install_finds_configs_and_plugins(tmp_path):
    """`pip install .` (a wheel, not a source link): the CLI works from another directory."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # reuse this environment's dependencies, install only mmldm itself
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        check=True, capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import mmldm, mmldm_configs; print(mmldm.__file__); print(mmldm_configs.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert all(str(target) in line for line in where.stdout.splitlines()), where.stdout
    out = subprocess.run([str(python), "-m", "mmldm.cli", "plugins"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("image", "voxel", "audio"):
        assert f"modality: {name}" in out.stdout
    cfg = subprocess.run([str(python), "-m", "mmldm.cli", "train", "modality=voxel", "trainer=quick", "--cfg", "job"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cfg.returncode == 0, cfg.stderr
    assert "name: voxel" in cfg.stdout


def test_phase_steps_come_from_the_preset_and_trainer_max_steps_caps_them():
    from mmldm.training.callbacks import TimeBudget
    from mmldm.training.run import _budget

    full = compose(["modality=voxel"])
    assert _budget(full.phase1, full) == (350, {}) and _budget(full.diffusion, full) == (16000, {})
    quick = compose(["modality=voxel", "trainer=quick"])
    for phase in (quick.phase1, quick.diffusion):  # 300 steps or 4 minutes, whichever comes first
        steps, extra = _budget(phase, quick)
        assert steps == 300 and extra["max_time"].total_seconds() == 240 and extra["callbacks"][0].limit == 300
    shorter = compose(["modality=voxel", "trainer=quick", "phase1.max_minutes=1"])
    assert _budget(shorter.phase1, shorter)[1]["max_time"].total_seconds() == 60  # the smaller budget wins
    image = compose(["modality=image", "trainer.max_steps=500", "diffusion.max_minutes=2"])
    assert _budget(image.phase1, image) == (500, {})
    steps, extra = _budget(image.diffusion, image)
    assert steps == 500 and extra["max_time"].total_seconds() == 120
    assert isinstance(extra["callbacks"][0], TimeBudget) and extra["callbacks"][0].limit == 500
    from mmldm.configuration import ConfigProblem

    with pytest.raises(ConfigProblem, match="invalid value '-1' for config key 'phase1.max_minutes': expected > 0"):
        compose(["phase1.max_minutes=-1"])


def test_entries_of_a_conditioner_list_are_checked_before_training():
    cfg = compose(["modality=image", "conditioner=class_text"])
    assert [n.name for n in cfg.conditioner] == ["class", "text"]
    with pytest.raises(ConfigProblem, match=r"'conditioner.1' \(text\): .*max_lenght"):
        validate(["modality=image", "conditioner=class_text", "+conditioner.1.max_lenght=16"])
    with pytest.raises(ConfigProblem, match=r"'conditioner.0.name': no conditioner named 'klass'"):
        validate(["modality=image", "conditioner=class_text", "conditioner.0.name=klass"])


def test_sample_help_names_the_sampler_options():
    out = run_cli("sample", "--help")
    assert out.returncode == 0, out.stderr
    assert "sampler options: any other key=value is an option of the sampler" in out.stdout
    assert "eta=0.5           ddim: noise of each step, >= 0" in out.stdout and "spacing=karras" in out.stdout


LAZY = {  # a plugin whose module imports, but whose modality's module does not
    "lazy_pkg/__init__.py": '''
        from dataclasses import dataclass
        from mmldm import hookimpl
        from mmldm.config import ComponentConfig

        @dataclass
        class LazyConfig(ComponentConfig):
            size: int = 8

        @hookimpl
        def mmldm_register_components(registry):
            registry.add("modality", "lazy", "lazy_pkg.modality:build", config=LazyConfig)
    ''',
    "lazy_pkg/modality.py": "import libfoo_not_there\n",
}


def test_train_names_a_component_whose_module_does_not_import_in_one_line(tmp_path):
    """Before: a RegistryError traceback once the run started."""
    from .conftest import make_plugin_package

    site = make_plugin_package(tmp_path / "site", "lazy", LAZY, {"lazy": "lazy_pkg"})
    out = run_cli("train", "modality=lazy", "denoiser=dit", "trainer=quick", f"hydra.run.dir={tmp_path / 'run'}",
                  env_extra={"PYTHONPATH": str(site)}, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines() == [
        "mmldm train: error: modality 'lazy' from plugin 'lazy': cannot import its factory 'lazy_pkg.modality:build': "
        "No module named 'libfoo_not_there'"]
