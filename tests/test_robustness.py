"""Faults a long run meets: several processes, NaN losses, half precision, unsafe files, bad configs,
and reproducibility of sampling. (Kills and resumes: test_resume.py; damaged data: test_fuzz.py.)"""

from __future__ import annotations

import copy
import json
import os

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from mmldm.build import build_autoencoder, build_denoiser, build_modality
from mmldm.configuration import compose
from mmldm.export import ExportError
from mmldm.latents import LatentStats
from mmldm.pipeline import LatentDiffusion
from mmldm.training.callbacks import NonFiniteLossError
from mmldm.training.data import make_loader
from mmldm.training.phase1 import AutoencoderModule
from mmldm.training.trainer import make_trainer

from .conftest import run_cli

TINY = [
    "modality=image", "modality.num_samples=24", "autoencoder.channels=8", "denoiser.model_channels=16",
    "trainer.max_steps=3", "diffusion.max_steps=3", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
    "data.batch_size=4", "data.stats_batches=2", "sample.num_samples=2", "sampler.steps=3",
]
PIPE_KEYS = ("modality", "autoencoder", "regularizer", "denoiser", "diffusion", "sampler")


def _train(tmp_path, *extra, name="run"):
    run = tmp_path / name
    out = run_cli("train", *TINY, *extra, f"hydra.run.dir={run}", env_extra={"MMLDM_CACHE": str(tmp_path / "cache")},
                  cwd=tmp_path, timeout=600)
    return run, out


# ---------------------------------------------------------------------------- several processes
def test_ddp_preset_trains_both_phases_with_two_processes_through_the_cli(tmp_path):
    run, out = _train(tmp_path, "trainer=ddp", "trainer.accelerator=cpu")
    assert out.returncode == 0, out.stderr[-4000:]
    rank0, rank1 = (run / "mmldm.log").read_text(), (run / "train_ddp_process_1.log").read_text()
    for phase in ("phase 1 (autoencoder): 3 steps", "phase 2 (diffusion): 3 steps"):
        assert f"{phase} on cpu, rank 0 of 2 process(es)" in rank0
        assert f"{phase} on cpu, rank 1 of 2 process(es)" in rank1
    for once in ("caching the latents", "exporting to"):  # latent cache, samples and metrics: rank 0 only
        assert once in rank0 and once not in rank1
    assert json.loads((run / "metrics.json").read_text())["diffusion"]["steps"] == 3
    assert (run / "export" / "denoiser.safetensors").is_file()


@pytest.mark.slow  # 25 s: a job per variant through submitit; test_train_e2e covers the basic launcher's multirun
def test_multirun_through_hydras_submitit_launcher(tmp_path):
    """`-m hydra/launcher=submitit_local`: the launcher that `submitit_slurm` shares its code with
    (the `slurm` extra) runs each variant as its own job, pickling the task with cloudpickle."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    out = run_cli("train", "-m", "hydra/launcher=submitit_local", *TINY, "regularizer=kl,ae", f"hydra.sweep.dir={sweep}",
                  "hydra.launcher.timeout_min=10", env_extra={"MMLDM_CACHE": str(tmp_path / "cache")}, cwd=tmp_path,
                  timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    for job, regularizer in ((0, "kl"), (1, "ae")):
        exported = LatentDiffusion.from_pretrained(sweep / str(job) / "export")
        assert exported.config["regularizer"]["name"] == regularizer
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # one submitit job per variant


# ---------------------------------------------------------------------------- numerics
def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    run, out = _train(tmp_path, "trainer.precision=bf16-mixed")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "bfloat16 Automatic Mixed Precision" in out.stdout + out.stderr  # Lightning's line, via the root logger
    for name in ("autoencoder.safetensors", "denoiser.safetensors"):
        weights = load_file(run / "export" / name)
        assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())


@pytest.fixture(scope="module")
def parts():
    """A tiny image modality, autoencoder and config (built, not trained)."""
    torch.manual_seed(0)
    cfg = compose(["modality=image", "modality.num_samples=16", "autoencoder.channels=8", "denoiser.model_channels=16",
                   "phase1.warmup_steps=0"])
    modality = build_modality(cfg.modality)
    return cfg, modality, build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)


class _Poisoned(torch.utils.data.Dataset):
    """Items of ``dataset`` with item ``bad`` filled with NaN."""

    def __init__(self, dataset, bad):
        self.dataset, self.bad = dataset, bad

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = self.dataset[i]["x"].clone()
        return {"x": x.fill_(float("nan")) if i == self.bad else x}


class _Weights(L.Callback):
    """Autoencoder weights after every step."""

    def __init__(self):
        self.after = []

    def on_train_batch_end(self, trainer, module, *args):
        self.after.append(torch.cat([p.detach().flatten().clone() for p in module.autoencoder.parameters()]))


def _fit_poisoned(parts, tmp_path, nonfinite, max_share=0.5):
    cfg, modality, autoencoder = parts
    ae = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    ae.load_state_dict(autoencoder.state_dict())
    module = AutoencoderModule.from_config(ae, cfg.phase1, modality.reconstruction_loss)
    trainer_cfg = compose(["modality=image", "trainer=cpu", f"trainer.nonfinite={nonfinite}",
                           f"trainer.nonfinite_max_share={max_share}",
                           "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]).trainer
    weights = _Weights()
    trainer = make_trainer(trainer_cfg, tmp_path, 4, callbacks=[weights], limit_val_batches=0,
                           enable_model_summary=False)
    loader = make_loader(_Poisoned(modality.dataset("train"), bad=5), 2, shuffle=False)  # item 5: the batch of step 2
    trainer.fit(module, loader)
    return trainer, weights.after


def test_nan_loss_stops_the_run_naming_the_step_and_the_term(parts, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2: rec=nan.*trainer.nonfinite=skip"):
        _fit_poisoned(parts, tmp_path, "error")
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_nan_loss_step_is_skipped_when_configured(parts, tmp_path):
    trainer, after = _fit_poisoned(parts, tmp_path, "skip")
    assert trainer.global_step == 4 and len(after) == 4
    assert torch.equal(after[2], after[1]), "the skipped step changed weights"
    assert not torch.equal(after[3], after[2]) and all(torch.isfinite(w).all() for w in after)
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_phase_that_skipped_too_many_steps_fails(parts, tmp_path):
    """1 of 4 steps skipped is over the default bound (5%): the phase fails instead of reporting success."""
    with pytest.raises(NonFiniteLossError, match=r"1 of 4 steps \(25%\).*nonfinite_max_share=0.05"):
        _fit_poisoned(parts, tmp_path, "skip", max_share=0.05)


def test_nan_weights_are_never_exported(parts, tmp_path):
    _, modality, autoencoder = parts
    broken = copy.deepcopy(autoencoder)
    key, weight = next((k, v) for k, v in broken.state_dict().items() if v.is_floating_point())
    weight.view(-1)[0] = float("nan")
    pipe = LatentDiffusion(modality, broken, LatentStats.identity(4), {})
    with pytest.raises(ExportError, match=rf"refusing to write .*autoencoder\.safetensors: non-finite .*{key}"):
        pipe.save_pretrained(tmp_path / "export")
    assert not (tmp_path / "export" / "autoencoder.safetensors").exists()


def test_decode_stays_float32_under_half_precision_autocast(parts):
    _, modality, autoencoder = parts
    stats = LatentStats([0.0] * 4, [1e5] * 4)  # large latents: a float16 decoder overflows
    pipe = LatentDiffusion(modality, autoencoder, stats, {})
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.float16):
        raw = autoencoder.decode(stats.denormalize(z))
        x = pipe.decode(z)
    assert not torch.isfinite(raw).all(), "expected the float16 decoder to overflow (the failure guarded against)"
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, pipe.decode(z))


# ---------------------------------------------------------------------------- safe loading
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def pipe(parts):
    """A tiny untrained model with a denoiser whose weights are perturbed (so samples depend on it)."""
    cfg, modality, autoencoder = parts
    torch.manual_seed(1)
    denoiser = build_denoiser(cfg.denoiser, autoencoder.latent_shape(modality.sample_shape), [])
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LatentDiffusion(modality, autoencoder, LatentStats.identity(4), {k: cfg[k] for k in PIPE_KEYS}, denoiser)


def test_export_loads_through_safetensors_only(pipe, tmp_path):
    export = pipe.save_pretrained(tmp_path / "export")
    marker = tmp_path / "pwned"
    torch.save({"weight": _Evil(marker)}, export / "denoiser.safetensors")
    with pytest.raises(ExportError, match=r"cannot read weights file .*denoiser\.safetensors"):
        LatentDiffusion.from_pretrained(export)
    assert not marker.exists()


# ---------------------------------------------------------------------------- determinism
def test_sample_is_reproducible_across_calls_and_batch_sizes(pipe):
    latents = {}
    for sampler, opts in (("dpmpp_2m", {}), ("ddim", {}), ("euler", {}), ("ddpm", {}), ("ddim", {"eta": 1.0})):
        kw = {"seed": 7, "steps": 4, "sampler": sampler, "progress": False, "return_latents": True, **opts}
        four, again, two = pipe.sample(4, **kw), pipe.sample(4, **kw), pipe.sample(2, **kw)
        assert torch.equal(four, again), sampler
        # equal up to float32 rounding: batched convolutions round differently for another batch size
        assert torch.allclose(four[:2], two, atol=1e-5, rtol=1e-5), f"{sampler}: sample i depends on the batch size"
        assert not torch.allclose(four[0], four[1])
        latents[(sampler, *opts.values())] = two
    other = pipe.sample(2, seed=8, steps=4, progress=False, return_latents=True)
    assert not torch.allclose(other, latents[("dpmpp_2m",)])
    decoded = pipe.sample(2, seed=7, steps=4, sampler="euler", progress=False)
    assert torch.allclose(decoded, pipe.decode(latents[("euler",)]), atol=1e-5)


def test_stochastic_sampler_is_reproducible_per_call(pipe):
    a, b = (pipe.sample(3, seed=3, steps=4, sampler="ddpm", progress=False, return_latents=True) for _ in range(2))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- config errors before training
def test_latent_channel_and_modality_mismatch_with_the_phase1_export_fail_before_training(tmp_path):
    export = tmp_path / "ae_export"
    export.mkdir()
    (export / "config.yaml").write_text("modality:\n  name: image\nlatent:\n  shape: [8, 8, 8]\n")
    run, out = _train(tmp_path, "stage=diffusion", f"phase1.checkpoint={export}")
    assert out.returncode != 0
    assert "latent channel mismatch" in out.stderr and "autoencoder.latent_channels=4" in out.stderr
    assert f"phase1.checkpoint={export}" in out.stderr and "set autoencoder.latent_channels=8" in out.stderr
    assert not (run / "diffusion").exists() and not (run / "latents").exists()
    run, out = _train(tmp_path, "modality=audio", "stage=diffusion", f"phase1.checkpoint={export}", name="audio")
    assert out.returncode != 0 and "for modality 'image', but the run has modality=audio" in out.stderr


def test_denoiser_that_cannot_fit_the_latents_fails_before_training(tmp_path):
    run, out = _train(tmp_path, "denoiser.channel_mult=[1,2,2,2,2]")
    assert out.returncode != 0
    assert "denoiser=unet2d cannot take latents of shape [4, 8, 8]" in out.stderr
    assert "must be divisible by 16" in out.stderr and "denoiser.channel_mult" in out.stderr
    assert not (run / "autoencoder" / "checkpoints").exists()


def test_invalid_nonfinite_mode_fails_before_training(tmp_path):
    run, out = _train(tmp_path, "trainer.nonfinite=ignore")
    assert out.returncode == 2
    assert "invalid value 'ignore' for config key 'trainer.nonfinite': expected one of: error, skip" in out.stderr
    assert not (run / "autoencoder").exists()


def test_invalid_phase2_batch_size_fails_before_training(tmp_path):
    run, out = _train(tmp_path, "diffusion.batch_size=0")
    assert out.returncode == 2
    assert "invalid value '0' for config key 'diffusion.batch_size': expected >= 1" in out.stderr
    assert not (run / "autoencoder").exists()


def test_phase2_reads_batches_of_diffusion_batch_size(tmp_path):
    """Phase 1 trains on data.batch_size; phase 2's loader takes diffusion.batch_size (here too large, so the
    run stops at phase 2 naming that key, after phase 1 finished)."""
    run, out = _train(tmp_path, "diffusion.batch_size=999")
    assert out.returncode != 0
    assert "diffusion.batch_size=999 is larger than the" in out.stderr and "training items per process" in out.stderr
    assert (run / "autoencoder" / "export" / "config.yaml").is_file()
    assert not (run / "diffusion" / "checkpoints").exists()


def test_a_batch_larger_than_the_training_data_names_the_key(parts):
    _, modality, _ = parts
    data = modality.dataset("train")
    with pytest.raises(ValueError, match=rf"diffusion.batch_size=999 is larger than the {len(data)} training items"):
        make_loader(data, 999, True, drop_last=True, key="diffusion.batch_size")
    assert len(make_loader(data, 999, False)) == 1  # evaluation loaders keep the partial batch


def test_item_randomness_is_a_function_of_seed_epoch_and_position(parts):
    """Loaders give the same batches (augmentations included) whatever the global RNG and the worker count,
    a new order each epoch, and resume at any batch."""
    _, modality, _ = parts
    data = modality.dataset("train")
    torch.manual_seed(123)
    loader = make_loader(data, 4, True, seed=5)
    first, second = ([b["x"] for b in loader] for _ in range(2))  # epochs 0 and 1
    torch.manual_seed(456)
    workers = [b["x"] for b in make_loader(data, 4, True, num_workers=2, seed=5)]
    assert len(first) == len(workers) == 4 and all(torch.equal(x, y) for x, y in zip(first, workers))
    assert not any(torch.equal(x, y) for x, y in zip(first, second))
    loader.batch_sampler.resume(len(first) + 1)  # one epoch and one batch consumed
    assert torch.equal(next(iter(loader))["x"], second[1])


def test_nonfinite_gradients_name_the_parameter():
    from types import SimpleNamespace

    from mmldm.training.callbacks import NonFiniteGuard

    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    trainer = SimpleNamespace(precision="32-true", global_step=7)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    module[1].weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 7 in 1 parameter\(s\), first 1.weight"):
        NonFiniteGuard("error").on_before_optimizer_step(trainer, module, opt)
    module[1].weight.grad[0, 0] = 3e38  # finite, but the total norm overflows
    module[0].weight.grad[0, 0] = 3e38
    with pytest.raises(NonFiniteLossError, match=r"norm overflows; largest entry 3e\+38 in 0.weight"):
        NonFiniteGuard("error").on_before_optimizer_step(trainer, module, opt)
