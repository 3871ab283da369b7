"""A run never reports success with a model assembled from mismatched parts.

Each test reproduces a way an earlier mmldm trained or exported the wrong
thing with exit 0: a latent cache of another autoencoder reused, a phase-2
checkpoint of other latents or settings resumed, two runs sharing one
directory, a damaged ``metrics.json``, a weights file swapped in an export,
``trainer.nonfinite=skip`` exporting a model that skipped most of its steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from mmldm.pipeline import LatentDiffusion
from mmldm.provenance import differences, read_provenance, weights_digest
from mmldm.training.callbacks import NonFiniteGuard, NonFiniteLossError
from mmldm.training.rundir import LOCK_FILE, RunDirectoryBusy, RunLock

from .conftest import run_cli

TINY = [
    "modality=image", "modality.num_samples=24", "autoencoder.channels=8", "denoiser.model_channels=16",
    "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", "data.batch_size=4", "data.stats_batches=2",
    "sample.num_samples=2", "sampler.steps=3", "phase1.max_steps=6", "diffusion.max_steps=6",
    "trainer.checkpoint_every_n_steps=3",
]
ENV = {"OMP_NUM_THREADS": "1"}


def _train(run: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("train", *TINY, *extra, f"hydra.run.dir={run}", env_extra=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished runs whose autoencoders differ (seeds 0 and 1)."""
    base = tmp_path_factory.mktemp("integrity")
    for seed in (0, 1):
        out = _train(base / f"seed{seed}", f"seed={seed}")
        assert out.returncode == 0, out.stderr[-3000:]
    return base / "seed0", base / "seed1"


def _autoencoder_digest(export: Path) -> str:
    return weights_digest(LatentDiffusion.from_pretrained(export).autoencoder)


def test_resume_false_encodes_the_latent_cache_again(two_runs, tmp_path):
    """Before: ``latents/`` was reused whenever its manifest existed, so ``resume=false`` retrained phase 1
    and trained phase 2 on the previous autoencoder's latents, exit 0."""
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    (run / LOCK_FILE).unlink(missing_ok=True)
    out = _train(run, "seed=1", "resume=false")
    assert out.returncode == 0, out.stderr[-3000:]
    new = _autoencoder_digest(run / "export")
    assert new != _autoencoder_digest(two_runs[0] / "export")  # phase 1 really changed
    manifest = json.loads((run / "latents" / "manifest.json").read_text())
    assert manifest["producer"]["autoencoder"] == new
    assert read_provenance(run / "export")["autoencoder"] == new
    assert "latent cache" in (run / "mmldm.log").read_text() and "is stale" in (run / "mmldm.log").read_text()
    # the cached latents are the new autoencoder's: encode the first items again and compare
    pipe = LatentDiffusion.from_pretrained(run / "export")
    train = pipe.modality.dataset("train")
    import numpy as np

    with torch.no_grad():
        mean = pipe.autoencoder.encode(torch.stack([train[i]["x"] for i in range(2)])).mode()
    cached = torch.from_numpy(np.load(run / "latents" / "mean.npy")[:2])
    torch.testing.assert_close(cached, mean, rtol=1e-4, atol=1e-4)


def test_phase2_checkpoint_of_another_autoencoder_is_refused(two_runs, tmp_path):
    """Before: ``stage=diffusion`` with another ``phase1.checkpoint`` resumed the old denoiser's checkpoint and
    exported it beside the new autoencoder."""
    run = tmp_path / "run"
    first = _train(run, "stage.autoencoder=false", f"phase1.checkpoint={two_runs[0] / 'autoencoder' / 'export'}")
    assert first.returncode == 0, first.stderr[-3000:]
    start = time.monotonic()
    out = _train(run, "stage.autoencoder=false", f"phase1.checkpoint={two_runs[1] / 'autoencoder' / 'export'}",
                 "diffusion.max_steps=9")
    assert out.returncode == 2, out.stderr[-3000:]
    a, b = (_autoencoder_digest(r / "autoencoder" / "export") for r in two_runs)
    ckpt = run / "diffusion" / "checkpoints" / "last.ckpt"
    assert f"{ckpt} trained on the latents of autoencoder {a}, but this run's autoencoder is {b}" in out.stderr
    assert "resume=false" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - start < 60
    # the cache was not silently kept either: a fresh phase 2 on the new autoencoder encodes again
    fresh = _train(run, "stage.autoencoder=false", f"phase1.checkpoint={two_runs[1] / 'autoencoder' / 'export'}",
                   "resume=false")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads((run / "latents" / "manifest.json").read_text())["producer"]["autoencoder"] == b


def test_rerun_with_changed_settings_names_the_keys(two_runs, tmp_path):
    """Before: rerunning a finished directory with another width printed 994 size-mismatch lines
    (phase 2) or silently reused the old autoencoder (phase 1)."""
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    out = _train(run, "denoiser.model_channels=32")
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "denoiser.model_channels: 16 -> 32" in lines[0] and "resume=false" in lines[0]
    assert "size mismatch" not in out.stderr
    out = _train(run, "autoencoder.channels=16")
    assert out.returncode == 2 and "autoencoder.channels: 8 -> 16" in out.stderr
    assert f"{run / 'autoencoder' / 'export'} holds the phase 1 of a run with other settings" in out.stderr
    out = _train(run, "data.latent_scale=none")  # the export's statistics were measured per channel
    assert out.returncode == 2 and "data.latent_scale: 'per_channel' -> 'none'" in out.stderr, out.stderr[-2000:]
    out = _train(run, "diffusion.lr=0.001")  # an optimizer setting the checkpoint's optimizer state would override
    assert out.returncode == 2 and "diffusion.lr: 0.0002 -> 0.001" in out.stderr
    same = _train(run, "diffusion.max_steps=8")  # the budget may change: the run goes on
    assert same.returncode == 0, same.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["diffusion"]["steps"] == 8


def test_swapped_weights_in_an_export_are_refused(two_runs, tmp_path):
    """Before: an export whose autoencoder.safetensors was replaced by another run's loaded silently."""
    export = tmp_path / "export"
    shutil.copytree(two_runs[0] / "autoencoder" / "export", export)
    shutil.copy(two_runs[1] / "autoencoder" / "export" / "autoencoder.safetensors", export / "autoencoder.safetensors")
    out = _train(tmp_path / "run", "stage.autoencoder=false", f"phase1.checkpoint={export}")
    assert out.returncode == 2
    assert f"{export / 'autoencoder.safetensors'} holds weights with digest" in out.stderr
    assert "was replaced after the export was written" in out.stderr


HOLD = """
import sys, time
from mmldm.training.rundir import RunLock
lock = RunLock(sys.argv[1], "mmldm train (holder)").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_in_a_busy_directory_is_refused(tmp_path):
    """Before: two runs in one directory deleted each other's temporary checkpoints and the survivor exported
    one seed's autoencoder with a denoiser trained on the other's latents, exit 0."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        out = _train(run)
        assert out.returncode == 2, out.stderr[-3000:]
        assert time.monotonic() - start < 60
        assert f"run directory {run} is in use by mmldm pid {holder.pid} on host" in out.stderr
        assert "another hydra.run.dir" in out.stderr
        assert not (run / "autoencoder").exists()  # nothing was trained or written
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid}"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the directory is usable again
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_ranks_above_zero_do_not_lock(tmp_path, monkeypatch):
    from mmldm.training.rundir import is_launcher_rank_zero

    assert is_launcher_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_launcher_rank_zero()


def test_damaged_metrics_json_is_kept_aside_and_the_run_goes_on(tmp_path, caplog):
    """Before: a truncated ``metrics.json`` broke every later run in the directory with a bare JSONDecodeError."""
    from mmldm.training.run import _update_metrics

    (tmp_path / "metrics.json").write_text('{"autoencoder": {"psnr": 31.')
    with caplog.at_level("WARNING", logger="mmldm"):
        _update_metrics(tmp_path, {"diffusion": {"steps": 3}})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"diffusion": {"steps": 3}}
    assert (tmp_path / "metrics.json.damaged").read_text() == '{"autoencoder": {"psnr": 31.'
    assert f"{tmp_path / 'metrics.json'} could not be read" in caplog.text


class _Broken(L.LightningModule):
    """A model whose loss is NaN on the steps ``bad`` selects."""

    def __init__(self, bad):
        super().__init__()
        self.layer, self.bad = nn.Linear(2, 1), bad

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if self.bad(self.global_step) else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_broken(bad, steps: int) -> NonFiniteGuard:
    guard = NonFiniteGuard("skip")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Broken(bad), data)
    return guard


def test_nonfinite_skip_fails_a_phase_that_skipped_most_steps():
    """Before: ``trainer.nonfinite=skip`` exported a phase 1 where most steps were skipped and marked it finished."""
    with pytest.raises(NonFiniteLossError, match=r"the last 20 steps were all skipped"):
        _fit_broken(lambda step: True, 30)
    with pytest.raises(NonFiniteLossError, match=r"6 of 30 steps \(20%\) .* trainer.nonfinite_max_share=0.05"):
        _fit_broken(lambda step: step % 5 == 0, 30)
    assert _fit_broken(lambda step: step == 3, 30).skipped == 1  # one bad batch in 30: skipped, the run goes on


def test_differences_lists_changed_keys():
    assert differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": [1, 2], "d": 0}}) == [
        "a.b: 1 -> 2", "a.d: '<absent>' -> 0"]
