"""Runs that survive a kill: SIGKILL mid-phase, rerun the same command, get the uninterrupted result.

A tiny image run (24 steps per phase, a checkpoint every 4 steps, several
epochs) is killed with SIGKILL right after a phase writes its first
checkpoint and started again with the same command and ``hydra.run.dir``.
The exported weights, the final checkpoints (model, EMA, optimizer and
scheduler state, step) and the sample files must equal those of an
uninterrupted run with the same seed, bit for bit: data order, augmentations
and RNG states are checkpointed (see :mod:`mmldm.training.order` and
:class:`mmldm.training.callbacks.ResumeState`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmldm.training.trainer import CheckpointError, SafeCheckpointIO, load_checkpoint

from .conftest import run_cli

STEPS = 24
RUN = [
    "modality=image", "modality.num_samples=24", "autoencoder.channels=8", "denoiser.model_channels=16",
    "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", "data.batch_size=4", "data.stats_batches=2",
    "sample.num_samples=2", "sampler.steps=3", f"phase1.max_steps={STEPS}", f"diffusion.max_steps={STEPS}",
    "trainer.checkpoint_every_n_steps=4",
]


def _command(run: Path) -> list[str]:
    return [sys.executable, "-m", "mmldm.cli", "train", *RUN, f"hydra.run.dir={run}"]


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "MMLDM_CACHE": str(base / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    out = subprocess.run(_command(base / "reference"), env=_env(base), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return base / "reference"


def _kill_after_first_checkpoint(run: Path, phase: str, env: dict[str, str]) -> int:
    """Start the run, SIGKILL it as soon as ``<phase>/checkpoints/last.ckpt`` exists; the checkpoint's step."""
    proc = subprocess.Popen(_command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / phase / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(load_checkpoint(ckpt)["global_step"])


def _same(a, b, where: str = "") -> None:
    """Deep equality of checkpoint structures (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_result(run: Path, reference: Path) -> None:
    for name in ("autoencoder.safetensors", "denoiser.safetensors"):
        ours, theirs = load_file(run / "export" / name), load_file(reference / "export" / name)
        _same(ours, theirs, name)
    for phase in ("autoencoder", "diffusion"):
        ours, theirs = (load_checkpoint(r / phase / "checkpoints" / "last.ckpt") for r in (run, reference))
        assert ours["global_step"] == theirs["global_step"] == STEPS
        for key in ("state_dict", "optimizer_states", "lr_schedulers"):  # weights + EMA, Adam moments, schedule
            _same(ours[key], theirs[key], f"{phase}.{key}")
    samples = sorted(p.name for p in (reference / "samples").iterdir())
    assert samples and samples == sorted(p.name for p in (run / "samples").iterdir())
    for name in samples:
        assert (run / "samples" / name).read_bytes() == (reference / "samples" / name).read_bytes(), name


# the autoencoder case repeats the diffusion case's resume path through phase 1 (kept in the slow suite)
@pytest.mark.parametrize("phase", [pytest.param("autoencoder", marks=pytest.mark.slow), "diffusion"])
def test_sigkill_mid_phase_then_rerun_equals_uninterrupted_run(reference, tmp_path, phase):
    run, env = tmp_path / "run", _env(reference.parent)
    step = _kill_after_first_checkpoint(run, phase, env)
    assert 4 <= step < STEPS, f"killed at step {step}: not mid-phase"
    assert not (run / "export").exists()
    assert not (run / phase / "export").exists()
    out = subprocess.run(_command(run), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    if phase == "diffusion":  # phase 1 had finished: it is loaded from its export, not trained again
        assert "phase 1 already finished" in (run / "mmldm.log").read_text()
    _assert_same_result(run, reference)


def _signal_after_first_checkpoint(run: Path, phase: str, env: dict[str, str], signum: int) -> tuple[int, str, int]:
    """Start the run, send ``signum`` once ``<phase>/checkpoints/last.ckpt`` exists; (exit status, stderr, the
    step of the checkpoint that existed when the signal was sent)."""
    proc = subprocess.Popen(_command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = run / phase / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    step = int(load_checkpoint(ckpt)["global_step"])
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, step


@pytest.mark.parametrize(("phase", "signum"), [("autoencoder", signal.SIGTERM), ("diffusion", signal.SIGTERM),
                                               pytest.param("autoencoder", signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_saves_the_current_step_exits_nonzero_and_resumes_identically(reference, tmp_path, phase, signum):
    """Before: SIGTERM (what SLURM and Kubernetes send to preempt a job) exited 0 and saved nothing, so the
    scheduler saw success and every step since the last periodic checkpoint was lost."""
    run, env = tmp_path / "run", _env(reference.parent)
    code, err, before = _signal_after_first_checkpoint(run, phase, env, signum)
    assert code == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    saved = int(load_checkpoint(run / phase / "checkpoints" / "last.ckpt")["global_step"])
    assert before <= saved < STEPS, f"checkpoint at step {saved}"
    ckpt = run / phase / "checkpoints" / "last.ckpt"
    assert f"stopped by {name}: checkpoint saved at step {saved} to {ckpt}" in err, err[-3000:]
    assert not (run / "export").exists() and not (run / phase / "export").exists()
    out = subprocess.run(_command(run), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    _assert_same_result(run, reference)


def test_kill_between_the_phases_resumes_identically(reference, tmp_path):
    """Before: a kill after phase 1's export and before phase 2's first checkpoint resumed to another denoiser
    (max abs difference 0.5): phase 2 drew its initial weights from an RNG state that depended on what
    phase 1 had done in the same process."""
    run, env = tmp_path / "run", _env(reference.parent)
    proc = subprocess.Popen(_command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    export = run / "autoencoder" / "export" / "config.yaml"
    deadline = time.monotonic() + 300
    while not export.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert export.exists() and not (run / "diffusion" / "checkpoints" / "last.ckpt").exists()
    out = subprocess.run(_command(run), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "phase 1 already finished" in (run / "mmldm.log").read_text()
    _assert_same_result(run, reference)


KILL_WHILE_SAVING = textwrap.dedent('''
    import sys, time, torch
    from mmldm.training.trainer import SafeCheckpointIO

    io = SafeCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, sys.argv[1])

    def slow_save(obj, f):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        print("writing", flush=True)
        time.sleep(120)

    torch.save = slow_save
    io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, sys.argv[1])
''')


def test_sigkill_while_saving_keeps_the_previous_checkpoint(tmp_path):
    script, ckpt = tmp_path / "save.py", tmp_path / "checkpoints" / "last.ckpt"
    script.write_text(KILL_WHILE_SAVING)
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(ckpt.parent.glob(".last.ckpt.*.tmp")), "the interrupted write should be in a temporary file"
    state = load_checkpoint(ckpt)
    assert state["global_step"] == 1 and torch.equal(state["w"], torch.ones(3))
    SafeCheckpointIO().save_checkpoint({"global_step": 3}, ckpt)  # the next save clears the leftover
    assert not list(ckpt.parent.glob(".last.ckpt.*.tmp")) and load_checkpoint(ckpt)["global_step"] == 3


class _Evil:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_truncated_checkpoint_is_refused_with_its_name(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(64)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {ckpt} \(truncated or corrupted"):
        SafeCheckpointIO().load_checkpoint(ckpt)


def test_malicious_last_checkpoint_stops_the_resume_without_running_code(tmp_path):
    run, env = tmp_path / "run", {"MMLDM_CACHE": str(tmp_path / "cache")}
    args = ["train", *RUN, "stage=autoencoder", "phase1.max_steps=2", f"hydra.run.dir={run}"]
    assert run_cli(*args, env_extra=env, timeout=600).returncode == 0
    ckpt = run / "autoencoder" / "checkpoints" / "last.ckpt"
    (run / "autoencoder" / "export" / "config.yaml").unlink()  # phase 1 unfinished: it resumes from last.ckpt
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _Evil(marker)}, ckpt)
    out = run_cli(*args, env_extra=env, timeout=600)
    assert out.returncode != 0 and f"refusing to load {ckpt}" in out.stderr, out.stderr[-3000:]
    assert not marker.exists(), "the checkpoint's pickle ran code"
