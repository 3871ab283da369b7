"""Shared fixtures: repository paths, real data, throw-away plugin packages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real data for tests); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def fsdd(shared_data) -> Path:
    """The FSDD recordings in ``../shared/data/fsdd`` (``{digit}_{speaker}_{index}.wav``); skip when absent."""
    root = shared_data / "fsdd"
    if not root.is_dir():
        pytest.skip(f"FSDD recordings not found at {root}")
    return root


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Data caches (voxelized shapes, ...) of the whole session go to a temporary folder, not the
    user's ``~/.cache/mmldm``; subprocesses inherit it through the environment."""
    if "MMLDM_CACHE" in os.environ:
        yield os.environ["MMLDM_CACHE"]
        return
    path = str(tmp_path_factory.mktemp("mmldm-cache"))
    os.environ["MMLDM_CACHE"] = path
    yield path
    os.environ.pop("MMLDM_CACHE", None)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny-tensor tests (avoids oversubscribing small
    machines; much faster). torch is imported here, not at the top, so CLI-only tests stay fast."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_plugin_package(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.2.3") -> Path:
    """Create an importable package with an ``mmldm`` entry point, discoverable by importlib.metadata.

    Writes the modules and a ``<dist>-<version>.dist-info`` folder (METADATA +
    entry_points.txt) into ``root``, the same files ``pip install`` would leave
    in site-packages; putting ``root`` on ``sys.path``/``PYTHONPATH`` installs it.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mmldm]\n{eps}\n")
    return root


def run_cli(*args: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m mmldm.cli <args>`` in a subprocess and capture its output."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mmldm.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
