"""End to end through the `mmldm` command: both phases, export, sample, evaluate, multirun.

Sizes are tiny (a few steps) so the whole file runs in about a minute; the
quality of trained models is measured in benchmarks/.
"""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli

TINY = [
    "trainer.max_steps=3", "diffusion.max_steps=3", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
    "data.batch_size=4", "data.stats_batches=2", "sample.num_samples=2", "sampler.steps=3",
]
TINY_MODALITY = {
    "voxel": ["preset=voxel_quick", "modality.num_shapes=24", "modality.resolution=16"],
    "image": ["modality.num_samples=24", "autoencoder.channels=8", "denoiser.model_channels=16"],
    "audio": ["modality.num_samples=24", "autoencoder.channels=16", "denoiser.model_channels=16"],
}


def _train(tmp_path, modality, *extra, name=None):
    run = tmp_path / (name or f"run_{modality}")
    env = {"MMLDM_CACHE": str(tmp_path / "cache")}
    out = run_cli("train", f"modality={modality}", *TINY_MODALITY[modality], *TINY, *extra,
                  f"hydra.run.dir={run}", env_extra=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return run, env


@pytest.mark.parametrize("modality", ["voxel", "image", "audio"])
def test_train_leaves_a_complete_run_directory(tmp_path, modality):
    run, _ = _train(tmp_path, modality)
    for path in ("export/config.yaml", "export/autoencoder.safetensors", "export/denoiser.safetensors",
                 "autoencoder/export/config.yaml", "autoencoder/checkpoints/last.ckpt",
                 "diffusion/checkpoints/last.ckpt", "autoencoder/diagnostics.md", "latents/manifest.json",
                 "mmldm.log"):
        assert (run / path).is_file(), f"{path} missing"
    assert len(list((run / "samples").glob("sample_*"))) >= 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diffusion"]["steps"] == 3 and metrics["diffusion"]["num_samples"] == 2
    assert set(metrics["autoencoder"]) == {"reconstruction", "latent", "regularizer", "robustness"}
    assert len(metrics["autoencoder"]["latent"]["normalization"]["std"]) == 4
    # precision=auto resolved for the dims each phase trains (3D stays float32 where bf16 3D convs are wrong)
    from mmldm.training.trainer import resolve_precision

    dims = len(metrics["autoencoder"]["latent"]["shape"]) - 1
    assert metrics["precision"] == metrics["diffusion"]["precision"] == resolve_precision("auto", "cpu", dims)


def test_sample_evaluate_and_reuse_of_a_trained_autoencoder(tmp_path):
    run, env = _train(tmp_path, "voxel")
    out = run_cli("sample", str(run / "export"), "n=3", "steps=2", "class=1", f"out={tmp_path / 's'}", env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "s").glob("sample_*.ply"))) == 3
    bad = run_cli("sample", str(run / "export"), "n=three")
    assert bad.returncode == 2 and "invalid value 'three' for 'n'" in bad.stderr
    _check_damaged_exports(run / "export", tmp_path)

    ev = run_cli("evaluate", "modality=voxel", *TINY_MODALITY["voxel"], "stage=autoencoder",
                 f"phase1.checkpoint={run / 'autoencoder' / 'export'}", f"hydra.run.dir={tmp_path / 'ev'}",
                 env_extra=env, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "reconstruction iou" in ev.stdout
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["autoencoder"]["reconstruction"]["iou"] >= 0

    reuse, _ = _train(tmp_path, "voxel", "stage=diffusion", f"phase1.checkpoint={run / 'autoencoder' / 'export'}",
                      name="reuse")
    assert (reuse / "export" / "denoiser.safetensors").is_file()
    assert not (reuse / "autoencoder").exists()


def _check_damaged_exports(export, tmp_path):
    """Loading never unpickles; a truncated weights file or a bad config names the file."""
    import shutil

    from mmldm import LatentDiffusion
    from mmldm.export import ExportError

    pipe = LatentDiffusion.from_pretrained(export)
    assert pipe.denoiser is not None and pipe.latent_shape == (4, 4, 4, 4)
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    weights = damaged / "denoiser.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ExportError, match=r"cannot read weights file .*denoiser\.safetensors"):
        LatentDiffusion.from_pretrained(damaged)
    config = damaged / "config.yaml"
    config.write_text(config.read_text().replace("resolution: 16", "resolution: 16\n  colour: red"))
    with pytest.raises(ExportError, match=r"config\.yaml does not describe a model.*colour"):
        LatentDiffusion.from_pretrained(damaged)


def test_multirun_sweeps_regularizers(tmp_path):
    env = {"MMLDM_CACHE": str(tmp_path / "cache")}
    out = run_cli("train", "-m", "modality=voxel", *TINY_MODALITY["voxel"], *TINY, "stage=autoencoder",
                  "regularizer=kl,ae", f"hydra.sweep.dir={tmp_path / 'sweep'}", env_extra=env, cwd=tmp_path,
                  timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    for job, reg in ((0, "kl"), (1, "ae")):
        cfg = (tmp_path / "sweep" / str(job) / "autoencoder" / "export" / "config.yaml").read_text()
        assert f"name: {reg}" in cfg


def test_input_size_not_divisible_by_f_fails_before_training(tmp_path):
    out = run_cli("train", "modality=image", "modality.size=36", "autoencoder.channel_mult=[1,2,4,4]",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env_extra={"MMLDM_CACHE": str(tmp_path / "cache")})
    assert out.returncode != 0
    assert "not divisible by the autoencoder's downsampling factor f=8" in out.stderr
    assert "36" in out.stderr
    assert not (tmp_path / "run" / "autoencoder" / "checkpoints").exists()


def test_phases_train_for_a_wall_clock_budget(tmp_path):
    """``max_minutes`` stops a phase by time; the phase's ``max_steps`` and ``trainer.max_steps`` still bound it."""
    run = tmp_path / "budget"
    untimed = [o for o in TINY if not o.startswith(("trainer.max_steps", "diffusion.max_steps"))]
    out = run_cli("train", "modality=image", *TINY_MODALITY["image"], *untimed, "phase1.max_minutes=0.1",
                  "diffusion.max_minutes=0.1", "diffusion.max_steps=40", "trainer.log_every_n_steps=1",
                  f"hydra.run.dir={run}", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = (run / "autoencoder" / "logs" / "metrics.csv").read_text().splitlines()
    step = rows[0].split(",").index("step")
    assert 3 < max(int(r.split(",")[step]) for r in rows[1:]) < 2000
    metrics = json.loads((run / "metrics.json").read_text())
    assert 3 < metrics["diffusion"]["steps"] <= 40
    assert metrics["diffusion"]["train_seconds"] < 0.1 * 60 + 5


def test_voxel_2d_latent_layout_trains_and_samples_meshes(tmp_path):
    run = tmp_path / "flat"
    out = run_cli("train", "modality=voxel", "preset=voxel_2d", "modality.num_shapes=24", "modality.resolution=16",
                  "autoencoder.channels=16", "autoencoder.latent_channels=8", "denoiser.model_channels=16", *TINY,
                  f"hydra.run.dir={run}", env_extra={"MMLDM_CACHE": str(tmp_path / "cache")}, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["autoencoder"]["latent"]["shape"] == [8, 4, 4]  # 16 channels of 16x16 -> 4x4 x 8 at f=4
    assert len(list((run / "samples").glob("sample_*.ply"))) == 2
