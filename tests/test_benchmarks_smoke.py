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


def test_fsdd_references_are_the_unseen_speaker_and_held_out_clips_of_the_training_speakers(tmp_path):
    import re
    from types import SimpleNamespace

    from benchmarks import generation

    fsdd = generation.compose_config(generation.parse_args(["--task", "fsdd", "--data", str(tmp_path)]))
    names = [f"{d}_{s}_{i}.wav" for d in range(10) for s in ("george", "jackson", "lucas", "nicolas", "theo")
             for i in range(50)]
    val = [n for n in names if re.search(fsdd.modality.val_pattern, n)]  # held out from generator and judge
    assert len(val) == 500 + 4 * 10 * 10
    subsets = generation.reference_subsets(SimpleNamespace(data=SimpleNamespace(names=val)),
                                           generation.FSDD_REFERENCES)
    unseen, seen = (set(v.tolist()) for v in subsets.values())
    assert (len(unseen), len(seen)) == (500, 400) and not unseen & seen and len(unseen | seen) == len(val)
    assert all("_theo_" in val[i] for i in unseen) and not any("_theo_" in val[i] for i in seen)
    with pytest.raises(ValueError, match=r"reference 'x': pattern '_nobody_' matches none of the 900 held-out"):
        generation.reference_subsets(SimpleNamespace(data=SimpleNamespace(names=val)), {"x": "_nobody_"})


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
    assert (fsdd.modality.root, fsdd.modality.val_pattern, fsdd.modality.layout) == (
        str(tmp_path / "fsdd"), "_theo_|_4[0-9][.]wav$", "2d")
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


LATENT_CACHE_TINY = ["modality=voxel", "modality.resolution=16", "modality.num_shapes=40"]


def test_latent_cache_end_to_end_and_break_even_follow_from_the_rates():
    from benchmarks.latent_cache import end_to_end

    e2e = end_to_end(10.0, {"cache": 4.0, "no_cache": 1.0}, 100)
    assert e2e["seconds"] == {"cache": pytest.approx(35.0), "no_cache": pytest.approx(100.0)}
    assert e2e["ratio_no_cache_over_cache"] == pytest.approx(100 / 35)
    assert e2e["break_even_steps"] == pytest.approx(10 / 0.75)  # 10 s saved back at 0.75 s per step
    assert end_to_end(10.0, {"cache": 1.0, "no_cache": 1.0}, 100)["break_even_steps"] is None


def test_latent_cache_on_the_fly_latents_match_the_cached_ones(tmp_path, one_thread):
    """The uncached side's batched encoding trains on the cache's distribution: the same normalized
    posterior mean, and posterior samples that are that mean plus std-scaled standard normal noise."""
    import torch

    from benchmarks.latent_cache import BatchEncoder
    from mmldm.build import build_autoencoder, build_modality
    from mmldm.configuration import compose
    from mmldm.latents import LatentStats
    from mmldm.training.data import LatentCacheDataset, encode_dataset

    cfg = compose(LATENT_CACHE_TINY)
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality).eval()
    train = modality.dataset("train")
    x = torch.stack([train[i]["x"] for i in range(8)])
    stats = LatentStats.measure(autoencoder, [x])
    encode_dataset(autoencoder, train, tmp_path, batch_size=4, progress=False)
    cached = torch.stack([LatentCacheDataset(tmp_path, stats, sample=False)[i]["z"] for i in range(8)])
    mode = BatchEncoder(autoencoder, stats, sample=False)(x)
    torch.testing.assert_close(mode, cached, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        scale = autoencoder.encode(x).std / torch.tensor(stats.std).view(1, -1, 1, 1, 1)
    noise = (BatchEncoder(autoencoder, stats)(x) - mode) / scale
    assert abs(noise.mean().item()) < 0.15 and abs(noise.std().item() - 1) < 0.15


def test_latent_cache_reports_measured_and_computed_figures(tmp_path):
    from benchmarks import latent_cache

    r = latent_cache.main(["--steps", "2", "--rounds", "1", "--set", *LATENT_CACHE_TINY[1:], "diffusion.batch_size=4",
                           "diffusion.max_steps=500", "--out", str(tmp_path)])
    med, e2e, encode = r["steps_per_second"], r["end_to_end"], r["encode_once_seconds"]
    assert (r["batch_size"], r["num_workers"], e2e["steps"]) == (4, 0, 500)
    assert min(med.values()) > 0 and encode > 0 and len(r["rounds"]["encode_once"]) == 1
    assert r["ratio_cache_over_no_cache"] == pytest.approx(med["cache"] / med["no_cache"])
    assert e2e["seconds"]["cache"] == pytest.approx(encode + 500 / med["cache"])
    assert e2e["seconds"]["no_cache"] == pytest.approx(500 / med["no_cache"])
    assert e2e["ratio_no_cache_over_cache"] == pytest.approx(e2e["seconds"]["no_cache"] / e2e["seconds"]["cache"])
    if e2e["break_even_steps"] is not None:  # there, both sides have taken the same time
        even = e2e["break_even_steps"]
        assert encode + even / med["cache"] == pytest.approx(even / med["no_cache"])
    assert json.loads((tmp_path / "results.json").read_text()) == r
    md = (tmp_path / "results.md").read_text()
    assert "encoded in the training step" in md and "end-to-end ratio" in md and "500 steps" in md


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


def test_demo_report_puts_each_set_metric_beside_its_real_vs_real_null():
    from benchmarks import demo

    sets = {"size": 16, "repeats": 5, "generated": {"1nna_cd": {"mean": 0.62, "sd": 0.05}},
            "null": {"1nna_cd": {"mean": 0.48, "sd": 0.11}}}
    result = {"command": "mmldm train modality=voxel preset=voxel_quick", "wall_seconds": 130.0,
              "metrics": {"autoencoder": {"reconstruction": {"iou": 0.92}},
                          "diffusion": {"steps": 1500, "num_samples": 16, "generation_sets": sets}}}
    text = demo.report(result)
    assert "130 s wall clock, both phases (1500 diffusion steps). Autoencoder held-out IoU 0.920." in text
    assert "| 1nna_cd | 0.62 +- 0.05 | 0.48 +- 0.11 |" in text


@pytest.mark.slow
def test_voxel_budget_shares_phase1_and_keeps_every_setting_within_the_budget(tmp_path):
    # about 4 minutes on a 2-core CPU: 16^3 shapes, a 2.5-minute budget, two processes, one judge
    from benchmarks import voxel_budget

    summary = voxel_budget.main(["--budget", "2.5", "--phase1-minutes", "0.4", "--margin", "0.6", "--quick",
                                 "--settings", "flow", "vp_eps", "--out", str(tmp_path),
                                 "--set", "diffusion.lr_schedule=cosine", "diffusion.warmup_steps=10"])
    assert set(summary["settings"]) == {"flow", "vp_eps"}
    for name, s in summary["settings"].items():
        assert s["total_minutes"] <= 2.5 and s["phase2_steps"] > 0 and s["class_accuracy_n"] == 2 * 6
        assert (tmp_path / name / "results.md").is_file()
        exported = json.loads((tmp_path / "runs" / name / "training.json").read_text())
        assert exported["phase1_seconds"] == summary["phase1_seconds"] or \
            round(exported["phase1_seconds"], 1) == summary["phase1_seconds"]
    # one judge: the second setting reuses the first one's classifier file
    assert (tmp_path / "vp_eps" / "classifier.pt").read_bytes() == (tmp_path / "flow" / "classifier.pt").read_bytes()
    # the recipe given with --set is recorded with each setting
    assert summary["settings"]["vp_eps"]["overrides"] == ["process=vp", "diffusion.lr_schedule=cosine",
                                                          "diffusion.warmup_steps=10"]
    assert "| flow | `process=flow diffusion.lr_schedule=cosine diffusion.warmup_steps=10` |" in \
        (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(summary))


def test_voxel_budget_summarize_rebuilds_the_table_from_the_settings_judged(tmp_path):
    """A run stopped after its first setting: ``--summarize`` reads what that setting wrote and skips the rest."""
    from benchmarks import voxel_budget

    (tmp_path / "runs" / "autoencoder").mkdir(parents=True)
    (tmp_path / "runs" / "autoencoder" / "metrics.json").write_text(json.dumps(
        {"autoencoder": {"reconstruction": {"iou": 0.95}}}))
    (tmp_path / "runs" / "flow").mkdir()
    (tmp_path / "runs" / "flow" / "training.json").write_text(json.dumps(
        {"wall_seconds": 2346.0, "phase1_seconds": 499.6, "phase2_seconds": 1846.4,
         "metrics": {"diffusion": {"steps": 8536}}}))
    (tmp_path / "flow").mkdir()
    head = {"class_accuracy": 0.7, "class_accuracy_n": 120, "class_accuracy_ci": [0.613, 0.775],
            "frechet_distance": 13.9}
    (tmp_path / "flow" / "results.json").write_text(json.dumps(
        {"samples": {"dpmpp_2m-25-g3": head}, "classifier": {"val_accuracy": 0.98}}))
    summary = voxel_budget.main(["--summarize", "--out", str(tmp_path)])
    assert list(summary["settings"]) == ["flow"]  # vp_v_minsnr was never judged
    assert summary["phase1_seconds"] == 499.6 and summary["diffusion_max_minutes"] == round(40 - 499.6 / 60 - 1.5, 2)
    assert summary["settings"]["flow"]["phase2_steps"] == 8536 and summary["settings"]["flow"]["total_minutes"] == 39.1
    text = (tmp_path / "results.md").read_text()
    assert "| flow | `process=flow` | 8536 | 39.1 | 70.0% (84/120, 95% CI 61.3-77.5%) | 13.9 |" in text
    # the budget a run recorded wins over the command line's; settings of two budgets are refused
    training = json.loads((tmp_path / "runs" / "flow" / "training.json").read_text())
    (tmp_path / "runs" / "flow" / "training.json").write_text(json.dumps(
        {**training, "budget_minutes": 60.0, "margin_minutes": 1.5, "diffusion_max_minutes": 50.17}))
    summary = voxel_budget.main(["--summarize", "--out", str(tmp_path)])
    assert summary["budget_minutes"] == 60.0 and summary["diffusion_max_minutes"] == 50.17
    assert (tmp_path / "results.md").read_text().startswith("# Voxel generation in 60 minutes")
    (tmp_path / "runs" / "edm").mkdir()
    (tmp_path / "runs" / "edm" / "training.json").write_text(json.dumps({**training, "budget_minutes": 40.0}))
    (tmp_path / "edm").mkdir()
    (tmp_path / "edm" / "results.json").write_text((tmp_path / "flow" / "results.json").read_text())
    with pytest.raises(SystemExit, match=r"trained with a 40-minute budget, other settings .* with 60"):
        voxel_budget.main(["--summarize", "--out", str(tmp_path)])
