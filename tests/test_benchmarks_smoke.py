"""The phase-1 benchmark script: its helpers (fast) and its quick path on real MNIST (slow)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from benchmarks import phase1
from benchmarks.budget import TimeBudget


def test_even_batch_divides_the_held_out_set():
    assert phase1.even_batch(1000) == 50
    assert phase1.even_batch(200) == 50
    assert phase1.even_batch(97) == 1  # a prime: batches of one
    assert phase1.even_batch(30, target=50) == 30


def test_loss_ratio_reads_the_lightning_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/rec,train/total"] + [f"0,{s},,{v}" for s, v in [(4, 100.0), (9, 40.0), (14, 21.0), (19, 19.0), (24, 20.0)]]
    rows.insert(2, "0,5,3.0,")  # a row of another key: skipped
    csv.write_text("\n".join(rows) + "\n")
    curve = phase1.loss_curve(csv)
    assert curve == [(4, 100.0), (9, 40.0), (14, 21.0), (19, 19.0), (24, 20.0)]
    assert phase1.loss_ratio(curve, tail=3) == pytest.approx(100.0 / 20.0)
    assert math.isnan(phase1.loss_ratio(curve[:1]))


def test_time_budget_sizes_max_steps_from_the_measured_rate(monkeypatch):
    clock = iter([0.0, 1.0, 3.0])  # train start, step 5, step 25
    monkeypatch.setattr("mmldm.training.callbacks.time.perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(global_step=0, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=10**9)))
    budget = TimeBudget(seconds=103.0, skip=5, calibrate=25, checkpoints=(), margin=1.0)
    budget.on_train_start(trainer, None)
    for step in (5, 25):
        trainer.global_step = step
        budget.on_train_batch_end(trainer, None)
    assert budget.seconds_per_step == pytest.approx(0.1)  # 20 steps in 2 s
    assert trainer.fit_loop.epoch_loop.max_steps == 25 + 1000  # 100 s left at 0.1 s/step


def test_markdown_table_puts_variants_side_by_side():
    diag = {"reconstruction": {"psnr": 31.25}, "latent": {"shape": [4, 8, 8], "normalization": {"mean": [0.0]}}}
    run = {"steps": 10, "train_seconds": 5.0, "seconds_per_step": 0.5, "parameters": 7, "loss_ratio": 3.0}
    table = phase1.markdown_table({"kl": {**run, "diagnostics": diag}, "ae": {**run, "steps": 12, "diagnostics": diag}})
    lines = table.splitlines()
    assert lines[0] == "| quantity | kl | ae |"
    assert "| steps | 10 | 12 |" in lines
    assert "| reconstruction.psnr | 31.25 | 31.25 |" in lines
    assert "| latent.shape | 4, 8, 8 | 4, 8, 8 |" in lines
    assert not any("normalization" in line for line in lines)


def test_mnist_variant_composes_the_image_autoencoder_preset(tmp_path):
    cfg = phase1.compose_variant(phase1.tasks(tmp_path)["mnist"], "vq", ["phase1.lr=2e-3"])
    assert (cfg.modality.source, cfg.modality.root) == ("mnist", str(tmp_path / "mnist"))
    assert (cfg.autoencoder.channels, list(cfg.autoencoder.channel_mult), cfg.autoencoder.attention) == (32, [1, 2, 4], False)
    assert cfg.regularizer.name == "vq" and cfg.phase1.lr == 2e-3
    assert cfg.stage.autoencoder and not cfg.stage.diffusion


@pytest.mark.slow
def test_quick_run_measures_every_held_out_image(shared_data, tmp_path):
    out = tmp_path / "bench"
    results = phase1.main(["--quick", "--variants", "ae", "--out", str(out), "--data", str(shared_data)])
    r = results["ae"]
    assert r["held_out_items"] == 1000 and r["steps"] > 0
    assert r["train_seconds"] < phase1.QUICK_SECONDS + 15
    assert math.isfinite(r["diagnostics"]["reconstruction"]["psnr"])
    assert r["diagnostics"]["latent"]["shape"] == [4, 8, 8]
    assert r["curve"] and r["curve"][-1]["step"] == r["steps"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["ae"]["steps"] == r["steps"]
    assert "| quantity | ae |" in (out / "results.md").read_text()


def test_generation_tasks_compose_and_report(tmp_path):
    from benchmarks import generation

    args = generation.parse_args(["--task", "mnist", "--data", str(tmp_path), "--set", "diffusion.lr=1e-4"])
    args.ae_minutes, args.diffusion_minutes = 5.0, 14.5
    cfg = generation.compose_config(args)
    assert (cfg.modality.source, cfg.modality.root) == ("mnist", str(tmp_path / "mnist"))
    assert (cfg.phase1.max_minutes, cfg.diffusion.max_minutes, cfg.diffusion.lr) == (5.0, 14.5, 1e-4)
    assert cfg.regularizer.name == "kl" and cfg.autoencoder.latent_channels == 4
    voxel = generation.compose_config(generation.parse_args(["--task", "voxel"]))
    assert voxel.modality.name == "voxel" and voxel.denoiser.name == "unet3d"
    fsdd = generation.compose_config(generation.parse_args(["--task", "fsdd", "--data", str(tmp_path)]))
    assert (fsdd.modality.root, fsdd.modality.val_pattern, fsdd.modality.layout) == (str(tmp_path / "fsdd"), "_theo_", "1d")
    m = {"class_accuracy": 0.975, "frechet_distance": 1.5, "sampling_seconds": 3.0, "modality": {"1nna_cd": 0.6}}
    results = {
        "settings": {"task": "voxel", "ae_minutes": 1, "diffusion_minutes": 2, "per_class": 5, "real": 10, "overrides": ["a=b"]},
        "training": {"wall_seconds": 200.0, "metrics": {"diffusion": {"steps": 7}, "autoencoder": {"reconstruction": {"iou": 0.9}}}},
        "classifier": {"val_accuracy": 0.99, "epochs": 2, "seconds": 3.0},
        "samples": {"dpmpp_2m-25-g3": m, "ddpm-250-g3": {**m, "class_accuracy": 0.96}},
        "extra": {"ceiling": {"real_vocoded": {"logmel_l1": 0.25, "items": 3}}},
    }
    text = generation.report(results)
    assert "| dpmpp_2m-25-g3 | 0.9750 | 1.500 | 0.6 | 3.0 |" in text
    assert "| real_vocoded | 3 | 0.25 |" in text
    assert "+1.50 accuracy points" in text and "3.3 min wall clock" in text and "iou 0.9" in text
    assert "Modality.finalize" in text
    results["settings"]["note"] = "Resumed from an earlier run."
    assert generation.report(results).split("\n")[2] == "Resumed from an earlier run."
    assert generation.parse_args(["--note", "n"]).note == "n"


def test_latent_vs_pixel_measures_both_sides(tmp_path):
    from benchmarks import latent_vs_pixel

    r = latent_vs_pixel.main(["--resolution", "16", "--repeats", "1", "--sample-steps", "2", "--batch", "1",
                              "--out", str(tmp_path)])
    assert r["shapes"] == {"latent": [4, 4, 4, 4], "pixel": [1, 16, 16, 16]}
    assert set(r["ratio_pixel_over_latent"]) == {"train_step", "sample"}
    assert all(v > 0 for v in r["ratio_pixel_over_latent"].values())
    assert "pixel / latent" in (tmp_path / "results.md").read_text()


def test_time_budget_follows_a_machine_that_speeds_up(monkeypatch):
    """A run calibrated while the machine was slow re-plans when it reaches its end early."""
    now = [0.0]
    monkeypatch.setattr("mmldm.training.callbacks.time.perf_counter", lambda: now[0])
    trainer = SimpleNamespace(global_step=0, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=10**9)))
    budget = TimeBudget(seconds=100.0, skip=5, calibrate=25, checkpoints=(), margin=1.0)
    budget.on_train_start(trainer, None)
    step_time = 2.0  # slow at first: 20 steps in 40 s
    while trainer.global_step < trainer.fit_loop.epoch_loop.max_steps and now[0] < 100:
        trainer.global_step += 1
        now[0] += step_time if trainer.global_step <= 25 else 0.1  # then 20x faster
        budget.on_train_batch_end(trainer, None)
    assert now[0] > 90  # the run used its time instead of stopping at the first plan (~30 steps)
    assert trainer.global_step > 400


def test_upsample_benchmark_times_both_forms_and_reports_the_auto_choice(tmp_path):
    from benchmarks import upsample

    rows = upsample.main(["--quick", "--out", str(tmp_path)])
    assert [r["shape"] for r in rows] == [list(s) for s in upsample.QUICK]
    assert [r["auto_picks"] for r in rows] == ["interpolate", "transposed", "interpolate"]  # 2D 128, 3D 128, 1D 128
    assert all(r["ratio_transposed_to_interpolate"] > 0 for r in rows)
    text = (tmp_path / "results.md").read_text()
    assert "| (2, 32, 4, 4, 4) | 128 |" in text and "auto picks" in text
