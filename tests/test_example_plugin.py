"""The example third-party plugin (docs/examples/mmldm-timeseries) installs, is listed and trains.

It is installed with pip into a throw-away target folder (a wheel build, as a
user's ``pip install`` would do) and put on ``PYTHONPATH`` for the ``mmldm``
command; the repository's own environment is left untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli

EXAMPLE = ROOT / "docs" / "examples" / "mmldm-timeseries"
TINY = [
    "modality.num_samples=24", "autoencoder.channels=8", "denoiser.model_channels=16",
    "trainer.max_steps=2", "diffusion.max_steps=2", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
    "data.batch_size=4", "data.stats_batches=2", "sample.num_samples=4", "sampler.steps=3",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """``pip install --no-deps --target`` of a copy of the example (in-tree builds leave ``build/`` behind)."""
    tmp = tmp_path_factory.mktemp("example_plugin")
    source = shutil.copytree(EXAMPLE, tmp / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {"PYTHONPATH": str(target), "MMLDM_CACHE": str(tmp / "cache"), "SOURCE": str(source)}


def test_installed_plugin_is_listed(installed):
    out = run_cli("plugins", env_extra=installed)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "modality: timeseries" in rows["timeseries"] and "0.1.0" in rows["timeseries"]
    assert "[mmldm_timeseries]" in rows["timeseries"]


def test_preset_from_mmldm_config_dirs_is_applied(installed):
    """``modality=timeseries`` selects ``preset/timeseries.yaml`` from the plugin's ``mmldm_config_dirs``."""
    out = run_cli("train", "modality=timeseries", "--cfg", "job", env_extra=installed)
    assert out.returncode == 0, out.stderr
    assert "name: timeseries" in out.stdout and "name: unet1d" in out.stdout
    assert "max_steps: 1000" in out.stdout  # phase1.max_steps of the preset
    bad = run_cli("train", "modality=timeseries", "modality.length=abc", env_extra=installed)
    assert bad.returncode == 2 and "invalid value 'abc' for config key 'modality.length'" in bad.stderr


def test_trains_both_phases_from_the_command_line(installed, tmp_path):
    run = tmp_path / "run"
    out = run_cli("train", "modality=timeseries", *TINY, f"hydra.run.dir={run}", env_extra=installed, cwd=tmp_path,
                  timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diffusion"]["steps"] == 2
    assert set(metrics["autoencoder"]["reconstruction"]) == {"rmse", "snr_db"}
    assert 0 <= metrics["diffusion"]["generation"]["band_accuracy"] <= 1
    for path in ("autoencoder/checkpoints/last.ckpt", "export/denoiser.safetensors", "samples/sample_grid.png",
                 "autoencoder/reconstructions/input_0000.csv"):
        assert (run / path).is_file(), f"{path} missing"
    header, *rows = (run / "samples" / "sample_0003.csv").read_text().splitlines()
    assert header == "t,ch0" and len(rows) == 64


def test_example_tests_pass_with_the_contracts(installed):
    """The example's own suite (mmldm.testing.ModalityContract and more) passes against the installed plugin."""
    source = Path(installed["SOURCE"])
    env = {**os.environ, "PYTHONPATH": installed["PYTHONPATH"]}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True, text=True, env=env, cwd=source, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:]
    from mmldm.testing import ModalityContract

    contract_checks = sum(name.startswith("test_") for name in dir(ModalityContract))
    passed = int(re.search(r"(\d+) passed", out.stdout).group(1))
    assert passed >= 2 * contract_checks  # two ModalityContract subclasses, plus the plugin's own tests
