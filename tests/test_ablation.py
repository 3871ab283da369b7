"""`mmldm ablate`: a study in a tiny form, its report, failures, and the latent-scale settings it compares."""

from __future__ import annotations

import json

import pytest
import torch

from mmldm.ablation import STUDIES, run_study
from mmldm.configuration import compose

from .conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["trainer.max_steps=3", "autoencoder.channels=8", "denoiser.model_channels=16", "data.batch_size=8",
        "data.stats_batches=2", "sample.num_samples=2", "sampler.steps=2"]


def test_a_tiny_study_reports_numbers_from_its_runs_and_survives_a_failing_variant(tmp_path):
    # regularizer.bound exists for the ae regularizers only: the kl variant fails, the others run
    report = run_study(STUDIES["regularizer"], "quick", tmp_path, ["kl", "ae", "ae_robust"],
                       [*TINY, "regularizer.bound=tanh"], per_class=2, classifier_epochs=1)
    rows = report["variants"]
    assert rows["kl"]["status"] == "failed" and "bound" in rows["kl"]["error"]
    assert rows["ae"]["status"] == rows["ae_robust"]["status"] == "ok"
    for name in ("ae", "ae_robust"):  # the report's figures are the runs' own
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert rows[name]["reconstruction"] == metrics["autoencoder"]["reconstruction"]
        assert rows[name]["latent"]["shape"] == metrics["autoencoder"]["latent"]["shape"] == [4, 8, 8]
        assert 0 <= rows[name]["generation"]["class_accuracy"] <= 1
        assert any((tmp_path / name / "judged").glob("sample_*.png"))
    assert rows["ae"]["reconstruction"]["psnr"] != rows["ae_robust"]["reconstruction"]["psnr"]
    assert json.loads((tmp_path / "report.json").read_text())["variants"]["ae"] == rows["ae"]
    table = (tmp_path / "report.md").read_text()
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:] == [
        "| kl", "| ae", "| ae_robust"]
    assert f"{rows['ae']['reconstruction']['psnr']:.4g}" in table and "failed: " in table
    gen = rows["ae"]["generation"]
    assert gen["class_accuracy_n"] == 2 * 10 and gen["class_accuracy_ci"][0] <= gen["class_accuracy"]
    assert f"/20, 95% CI " in table and rows["ae"]["classifier_val_accuracy_n"] > 0
    assert rows["ae"]["modality_sets"]["size"] == 20 and report["per_class"] == 2
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_cli_names_a_bad_study_and_a_bad_variant(tmp_path):
    bad = run_cli("ablate", "regulariser", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown study 'regulariser'; studies: regularizer, kl_weight" in bad.stderr
    bad = run_cli("ablate", "kl_weight", "--variants", "kl_1", cwd=tmp_path)
    assert bad.returncode == 2 and "no variant ['kl_1']; its variants: kl_1e-06, kl_0.0001, kl_0.01" in bad.stderr
    assert "voxel_latent" in run_cli("ablate", "--help").stdout


def test_every_variant_of_every_study_composes():
    for study in STUDIES.values():
        for form in ("quick", "full"):
            for name in study.variant_table(form):
                compose(study.overrides(form, name))


@pytest.mark.parametrize("scale", ["per_channel", "global", "none"])
def test_latent_scale_settings(scale):
    from mmldm.build import build_autoencoder, build_modality
    from mmldm.training.run import _measure_stats

    cfg = compose(["modality=image", "modality.num_samples=24", "autoencoder.channels=8", "data.batch_size=4",
                   "data.stats_batches=2", f"data.latent_scale={scale}"])
    modality = build_modality(cfg.modality)
    torch.manual_seed(0)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    stats = _measure_stats(autoencoder, modality.dataset("train"), cfg)
    assert stats.channels == 4
    if scale == "none":
        assert stats.mean == [0.0] * 4 and stats.std == [1.0] * 4
    elif scale == "global":
        assert stats.global_scale and len(set(stats.std)) == 1 and len(set(stats.mean)) == 1
    else:
        assert not stats.global_scale and len(set(stats.std)) == 4


def test_a_bad_latent_scale_fails_before_training():
    from mmldm.build import build_modality
    from mmldm.training.preflight import PreflightError, check_run

    from mmldm.configuration import ConfigProblem

    with pytest.raises(ConfigProblem, match="invalid value 'measured' for config key 'data.latent_scale'"):
        compose(["modality=image", "modality.num_samples=24", "data.latent_scale=measured"])
    cfg = compose(["modality=image", "modality.num_samples=24"])  # a value set after composition: preflight
    cfg.data.latent_scale = "measured"
    with pytest.raises(PreflightError, match="invalid value 'measured' for config key 'data.latent_scale'"):
        check_run(cfg, build_modality(cfg.modality))


def test_a_report_written_before_counts_is_rerendered_with_them(tmp_path):
    """`mmldm ablate --report-from DIR`: report.md from report.json, no training; an older report gets the n and
    interval of each accuracy back from its stored shares (the compression study: 20 per class, 10 digits)."""
    from pathlib import Path

    stored = Path(__file__).parents[1] / "docs" / "assets" / "ablations" / "compression" / "report.json"
    report = json.loads(stored.read_text())
    for row in report["variants"].values():  # as written before counts were stored
        row["generation"] = {k: v for k, v in row["generation"].items() if k in ("class_accuracy", "frechet_distance",
                                                                                  "sampling_seconds")}
        for key in ("classifier_val_accuracy_n", "classifier_val_accuracy_ci", "modality_sets"):
            row.pop(key, None)
    report.pop("counts_note", None)
    (tmp_path / "report.json").write_text(json.dumps(report))
    result = run_cli("ablate", "--report-from", str(tmp_path))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "report.md").read_text()
    assert "84.5% (169/200, 95% CI 78.8-88.9%)" in table and "recovered from the stored shares" in table
    assert "100.0% (180/180" in table  # the classifier's held-out digits
    assert json.loads((tmp_path / "report.json").read_text())["variants"]["f4_c4"]["generation"]["class_accuracy_n"] == 200
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert run_cli("ablate", "--report-from", str(tmp_path / "none")).returncode == 2


def test_set_metrics_are_reported_beside_their_null():
    from mmldm.ablation import markdown

    sets = {"size": 30, "repeats": 5, "generated": {"1nna_cd": {"mean": 0.61, "sd": 0.02, "values": []}},
            "null": {"1nna_cd": {"mean": 0.5, "sd": 0.03, "values": []}}}
    row = {"status": "ok", "reconstruction": {"iou": 0.9}, "latent": {"shape": [4, 4], "channel_std": [1.0]},
           "generation": {"class_accuracy": 0.5, "class_accuracy_n": 60, "class_accuracy_ci": [0.38, 0.62],
                          "frechet_distance": 3.0}, "modality_generation": {"1nna_cd": 0.61}, "modality_sets": sets,
           "diffusion_steps": 10, "train_seconds": 1.0, "classifier_val_accuracy": 0.9, "classifier_val_accuracy_n": 60}
    text = markdown({"study": "s", "question": "q?", "form": "quick", "seed": 0, "extra": [], "budget": [],
                     "wall_seconds": 60, "variants": {"v": row}})
    assert "| 0.61 ± 0.02 (null 0.5 ± 0.03) |" in text and "50.0% (30/60, 95% CI" in text
    assert "5 random subsets of 30 generated vs 30 held-out items" in text and "90.0% (54/60" in text


def test_the_process_study_composes_every_process_with_both_denoisers():
    """``mmldm ablate process``: VP-eps, VP-v + min-SNR, rectified flow and EDM, each with the U-Net and the DiT,
    at 25 sampler steps and guidance 3; phase 1 by steps (one autoencoder for all), phase 2 by time."""
    from mmldm.ablation import STUDIES

    study = STUDIES["process"]
    seen = set()
    for name in study.variants:
        cfg = compose([*study.overrides("quick", name), "seed=0"])
        seen.add((cfg.diffusion.process.name, cfg.diffusion.process.get("prediction"), cfg.denoiser.name))
        assert (cfg.sampler.steps, cfg.sample.guidance, cfg.phase1.max_steps, cfg.diffusion.max_minutes) == (25, 3.0, 120, 2.0)
    assert seen == {(p, pred, d) for d in ("unet2d", "dit")
                    for p, pred in (("vp", "eps"), ("vp", "v"), ("flow", None), ("edm", None))}


def test_time_to_quality_judges_each_phase2_snapshot_and_the_last_is_the_export(tmp_path):
    # a snapshot after every step (3 steps): the curve's last point is the exported model, judged the same way
    report = run_study(STUDIES["process"], "quick", tmp_path, ["flow_unet"], TINY, per_class=2, classifier_epochs=1,
                       curve_every=1e-9, target=0.5, sweep_steps=[2, 5])
    row = report["variants"]["flow_unet"]
    assert row["status"] == "ok", row
    curve = row["curve"]
    assert [r["step"] for r in curve] == [1, 2, 3] and row["diffusion_steps"] == 3
    minutes = [r["minutes"] for r in curve]
    assert 0 < minutes[0] <= minutes[1] <= minutes[2] < row["train_seconds"] / 60 and minutes[0] < minutes[2]
    assert all(r["class_accuracy_n"] == 20 and 0 <= r["class_accuracy"] <= 1 for r in curve)
    for key in ("class_accuracy", "frechet_distance"):
        assert curve[-1][key] == pytest.approx(row["generation"][key], abs=1e-9)
    index = json.loads((tmp_path / "flow_unet" / "snapshots" / "index.json").read_text())
    assert [r["file"] for r in index] == ["step_1.pt", "step_2.pt", "step_3.pt"]
    from mmldm.pipeline import LatentDiffusion

    exported = LatentDiffusion.from_pretrained(tmp_path / "flow_unet" / "export").denoiser.state_dict()
    last = torch.load(tmp_path / "flow_unet" / "snapshots" / "step_3.pt", weights_only=True)
    assert all(torch.equal(last[f"denoiser.{k}"], v) for k, v in exported.items())
    first = torch.load(tmp_path / "flow_unet" / "snapshots" / "step_1.pt", weights_only=True)
    assert any(not torch.equal(first[f"denoiser.{k}"], v) for k, v in exported.items())
    assert set(row["steps_sweep"]) == {"2", "5"} and row["steps_sweep"]["2"]["class_accuracy_n"] == 20
    table = (tmp_path / "report.md").read_text()
    assert "## Time to quality" in table and "| variant | minutes to >= 50% |" in table
    assert "## Quality against sampler steps" in table and "| variant | 2 steps | 5 steps |" in table
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    assert report["judge"] == {"sampler": "dpmpp_2m", "steps": 25, "guidance": 3.0}


def test_time_to_a_target_is_the_first_snapshot_that_reaches_it():
    from mmldm.ablation import first_reaching, markdown

    curve = [{"minutes": 1.0, "class_accuracy": 0.5}, {"minutes": 2.0, "class_accuracy": 0.97},
             {"minutes": 3.0, "class_accuracy": 0.96}, {"minutes": 4.0, "class_accuracy": 0.99}]
    assert first_reaching(curve, 0.97)["minutes"] == 2.0 and first_reaching(curve, 0.98)["minutes"] == 4.0
    assert first_reaching(curve, 1.0) is None
    report = {"study": "process", "question": "q", "form": "quick", "seed": 0, "budget": [], "wall_seconds": 60,
              "extra": [], "per_class": 20, "curve_every": 30, "target": 0.98,
              "variants": {"a": {"status": "ok", "reconstruction": {}, "latent": {"shape": [4], "channel_std": [1.0]},
                                 "generation": {"class_accuracy": 0.99, "frechet_distance": 1.0},
                                 "modality_generation": {}, "diffusion_steps": 10, "train_seconds": 1.0,
                                 "curve": curve}}}
    text = markdown(report)  # the table reads the first snapshot at >= 98%: minute 4, not the earlier 97% one
    assert "| a | 4.0 |" in text and "| 99.0% (4.0) |" in text


def test_cli_refuses_bad_curve_settings(tmp_path):
    bad = run_cli("ablate", "process", "--curve-every", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--curve-every must be > 0 seconds, got 0.0" in bad.stderr
    bad = run_cli("ablate", "process", "--target", "97", cwd=tmp_path)
    assert bad.returncode == 2 and "--target is a class accuracy in (0, 1], got 97" in bad.stderr
    from mmldm.training.callbacks import WeightSnapshots

    with pytest.raises(ValueError, match="every must be > 0 seconds, got -1"):
        WeightSnapshots(-1, tmp_path)
