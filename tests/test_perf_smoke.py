"""The performance benchmarks' pieces at tiny sizes: matched architectures, FLOP and memory counting,
the entry point's table, and the U-Net's ``compile`` switch."""

from __future__ import annotations

import functools
import json
import math
from argparse import Namespace
from dataclasses import replace

import pytest
import torch

from benchmarks import __main__ as entry
from benchmarks import unet_peer
from benchmarks import unet_vs_diffusers as uvd
from benchmarks import utilization
from mmldm.interfaces import Conditioning

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = replace(uvd.QUICK, block_channels=(32, 64), tokens=4, resolution=4)


def test_matched_pair_has_the_same_parameters_and_computes_the_same_function():
    torch.manual_seed(0)
    ours, theirs = uvd.build_mmldm(TINY), uvd.build_diffusers(TINY)
    counts = uvd.check_parameter_counts(ours, theirs)
    assert counts["mmldm"] == counts["diffusers"] > 0
    assert sorted(tuple(p.shape) for p in ours.parameters()) == sorted(tuple(p.shape) for p in theirs.parameters())
    x, t, context, _ = uvd.make_inputs(TINY)
    run_ours = lambda: uvd.caller(ours, "mmldm")(x, t, context)  # noqa: E731
    run_theirs = lambda: uvd.caller(theirs, "diffusers")(x, t, context)  # noqa: E731
    assert uvd.copy_weights(theirs, ours, run_theirs, run_ours) == len(list(ours.parameters()))
    with torch.no_grad():
        a, b = run_ours(), run_theirs()
    assert a.shape == b.shape == (TINY.batch, TINY.latent_channels, TINY.resolution, TINY.resolution)
    assert a.abs().mean() > 1e-3  # diffusers' weights are not zero-initialized: a real comparison
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mismatched_architectures_fail_loudly():
    ours = uvd.build_mmldm(replace(TINY, layers_per_block=2))
    with pytest.raises(RuntimeError, match=r"parameter counts differ by .*the architectures are not matched"):
        uvd.check_parameter_counts(ours, uvd.build_diffusers(TINY))
    with pytest.raises(ValueError, match=r"block_channels \(32, 48\) must be multiples of the first level's 32"):
        uvd.build_mmldm(replace(TINY, block_channels=(32, 48)))


def test_flop_count_follows_the_formulas_including_cpu_flash_attention():
    linear = torch.nn.Linear(16, 32)
    assert utilization.count_flops(lambda: linear(torch.randn(4, 16))) == 2 * 4 * 16 * 32
    q, k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    attention = utilization.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert attention == 2 * (2 * 1 * 2 * 8 * 6 * 4)  # Q K^T and (softmax) V: two [8 x 6 x 4] products per head
    model = uvd.build_mmldm(TINY).eval()
    x, t, context, _ = uvd.make_inputs(TINY)
    with torch.no_grad():
        assert utilization.count_flops(lambda: model(x, t, Conditioning(crossattn=context))) > 0


def test_peak_tensor_memory_counts_blocks_live_at_once():
    kept = []

    def work() -> None:
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB live
        del a
        kept.append(b + 1)  # 8 MB live again, one block outlives the call

    peak = utilization.peak_tensor_memory(work)
    assert 8e6 <= peak < 8.5e6
    assert utilization.peak_tensor_memory(lambda: None) == 0


def test_peak_rss_reports_the_high_water_mark():
    with utilization.peak_rss() as memory:
        block = torch.ones(4_000_000)  # 16 MB touched
    assert block.sum() == 4_000_000
    if memory["peak_rss_mb"] is None:
        pytest.skip("no /proc/self/status on this system")
    assert memory["peak_rss_mb"] >= memory["rss_before_mb"] > 0 and "VmHWM" in memory["method"]


def test_unet_benchmark_times_both_sides_at_every_setting():
    r = uvd.run(TINY, rounds=2, memory=False)
    assert r["parameters"]["mmldm"] == r["parameters"]["diffusers"] and r["max_abs_output_difference"] < 1e-5
    rows = r["settings"]
    assert list(rows) == [s.name for s in unet_peer.SETTINGS] == ["fp32", "fused_adamw", "bf16", "channels_last"]
    for s in rows.values():  # both sides timed at the setting, the ratio is theirs, per round
        q = s["ratio"]["train_step"]
        assert q["min"] <= q["median"] <= q["max"] and q["min"] > 0
        assert s["seconds"]["mmldm"]["train_step"] > 0 and s["seconds"]["diffusers"]["train_step"] > 0
    assert rows["fused_adamw"]["ratio"].get("forward") is None  # shares the float32 forward
    assert set(r["buys"]) == {"fused_adamw", "bf16", "channels_last"}  # each side against its own float32
    table = uvd.report(r)
    assert "| bf16 autocast, eager, for-each AdamW |" in table and "step mmldm / diffusers (min-max)" in table
    rows = entry.peer_rows({**r, "dims": 2})
    assert [x["target"] for x in rows[:4]] == ["<= 1.0"] * 4
    assert any(x["figure"].startswith("what bf16 autocast buys: diffusers") for x in rows)


def test_runners_put_inputs_in_the_settings_memory_format():
    seen = []
    inputs = uvd.make_inputs(TINY)
    call = lambda x, t, c: seen.append(x.is_contiguous(memory_format=torch.channels_last)) or x.sum()  # noqa: E731
    for setting in (unet_peer.FP32, unet_peer.SETTINGS[3]):
        unet_peer.runners(call, [torch.zeros(1, requires_grad=True)], setting, inputs, {})["forward"]()
    assert seen == [False, True]


def test_utilization_explains_what_bounds_it():
    r = utilization.run(TINY, rounds=1, n=128)
    assert r["forward_flops"] > 0 and 0 < r["utilization"] and r["matmul_flops_per_s"] > 0
    steps = r["train_step"]  # forward + backward per precision, against a matmul in the same dtype
    assert steps["float32"]["matmul_dtype"] == "float32" and steps["bf16"]["matmul_dtype"] == "bfloat16"
    for m in steps.values():  # a backward costs about twice the forward's FLOPs
        assert 2.5 * r["forward_flops"] <= m["forward_flops"] <= 3.5 * r["forward_flops"]
        assert "below 60%" in m["bound"] or "target >= 60%" in m["bound"]
    assert math.isclose(sum(r["time_shares"].values()), 1.0)
    low = {**r, "utilization": 0.1, "time_shares": {"flop_ops": 0.3, "normalization": 0.2, "other": 0.5},
           "flop_ops_utilization": 0.33}
    assert "70% of the forward's CPU time is in operators without FLOPs" in utilization.explain(low)
    assert "Mostly bound by memory-bound layers" in utilization.explain(low)
    assert utilization.explain({**low, "utilization": 0.5}).endswith("(target >= 40%).")


def test_entry_point_table_and_sampler_quote(tmp_path, monkeypatch):
    generation = tmp_path / "generation.json"
    samples = {"dpmpp_2m-25-g3": {"class_accuracy": 0.95, "frechet_distance": 2.0},
               "ddpm-250-g3": {"class_accuracy": 0.96, "frechet_distance": 2.5}}
    generation.write_text(json.dumps({"settings": {"per_class": 100}, "samples": samples}))
    monkeypatch.setattr(entry, "GENERATION", generation)
    monkeypatch.setattr(entry, "REPO", tmp_path)
    args = Namespace(quick=False, no_compile=True)
    results = entry.run(entry.QUICK, tmp_path, args, ["samplers"])
    gap = next(r for r in results["table"] if r["figure"].startswith("class accuracy"))
    # 950 vs 960 of 1000: the difference's 95% interval (-2.9, +0.8 points) leaves the +-1 point margin
    assert gap["value"] == pytest.approx(-0.01) and gap["met"] is False
    assert "(950/1000 vs 960/1000; 95% CI of the difference -2.86 to +0.84 points)" in gap["figure"]
    # equivalence needs the whole interval inside the margin, not a non-significant test: 996 vs 1000 of 1000
    # (Fisher's p = 0.125) reaches -1.02 points, so it is not shown; 998 vs 999 is
    for (a, b), met in (((0.996, 1.0), False), ((0.998, 0.999), True)):
        samples["dpmpp_2m-25-g3"]["class_accuracy"], samples["ddpm-250-g3"]["class_accuracy"] = a, b
        generation.write_text(json.dumps({"settings": {"per_class": 100}, "samples": samples}))
        rows = entry.run(entry.QUICK, tmp_path, args, ["samplers"])["table"]
        assert next(r for r in rows if r["figure"].startswith("class accuracy"))["met"] is met
    assert "| Samplers | Frechet distance, DPM-Solver++(2M) 25 / DDPM 250 steps | 0.8 |  |  |" in results["markdown"]
    assert "| Entry point | wall time of all sections, s |" in results["markdown"] and "yes |" in results["markdown"]
    assert entry.table([entry.row("b", "f", 2.0, "<= 1", False)], quick=True).endswith("| b | f | 2 | <= 1 |  |")


def test_only_keeps_the_other_sections_of_the_results_file_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(entry, "GENERATION", tmp_path / "none.json")  # the samplers section: a note, at once
    monkeypatch.setattr(entry, "REPO", tmp_path)
    first = entry.main(["--quick", "--only", "samplers", "--out", str(tmp_path)])
    assert list(first["sections"]) == ["samplers"] and "carried_over" not in first
    saved = json.loads((tmp_path / "results.json").read_text())
    fake = entry.row("Utilization", "U-Net forward FLOP/s / matmul FLOP/s (float32)", 0.5, ">= 0.40", True)
    saved["sections"]["utilization"], saved["rows"]["utilization"] = {"utilization": 0.5}, [fake]
    saved["reports"]["utilization"], saved["seconds"]["utilization"] = "# U-Net utilization (earlier)", 100.0
    saved["memory"]["utilization"] = {"rss_before_mb": 1.0, "peak_rss_mb": 2.0, "method": "m"}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    second = entry.main(["--quick", "--only", "samplers", "--out", str(tmp_path)])
    assert second["carried_over"] == ["utilization"] and second["sections"]["utilization"] == {"utilization": 0.5}
    assert [r["benchmark"] for r in second["table"]] == ["Utilization", "Samplers", "Entry point"]  # SECTIONS order
    total = second["table"][-1]
    assert total["value"] == pytest.approx(100.0 + second["seconds"]["samplers"])
    assert "carried over from an earlier run: utilization" in total["figure"]
    md = (tmp_path / "results.md").read_text()
    assert "Sections carried over from an earlier run of this file (`--only` ran the others): utilization." in md
    assert "# U-Net utilization (earlier)" in md
    del saved["rows"]  # a file written before sections kept their rows: refused before any section runs
    (tmp_path / "results.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match=r"has no per-section \['rows'\].*run every section once"):
        entry.main(["--quick", "--only", "samplers", "--out", str(tmp_path)])
    saved["rows"], saved["quick"] = {}, False
    (tmp_path / "results.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="holds a full run and this is quick"):
        entry.main(["--quick", "--only", "samplers", "--out", str(tmp_path)])


def test_step_memory_of_the_latent_vs_pixel_sides():
    peak = entry.step_memory(16, 1)
    assert set(peak) == {"latent", "pixel"} and peak["pixel"] > peak["latent"] > 0


@pytest.mark.slow
def test_quick_entry_point_writes_the_table(tmp_path):
    results = entry.main(["--quick", "--out", str(tmp_path)])
    assert not results["errors"] and results["total_seconds"] < 120
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["benchmark"] for r in saved["table"]} >= {"U-Net vs diffusers", "Utilization", "Latent cache"}
    assert "| benchmark | figure | value | target | met |" in (tmp_path / "results.md").read_text()


def test_unet_compile_switch_runs_the_forward_through_torch_compile(monkeypatch):
    """The config switch, traced by dynamo without graph breaks; an eager backend keeps it fast."""
    from mmldm_unet import unet as unet_module

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=record, fullgraph=True))
    unet_module._compiled_forward.cache_clear()
    try:
        plain = uvd.build_mmldm(TINY).eval()
        fast = uvd.build_mmldm(TINY, compile=True).eval()
        fast.load_state_dict(plain.state_dict())
        for p in fast.parameters():
            torch.nn.init.normal_(p, std=0.1)
        plain.load_state_dict(fast.state_dict())
        x, t, context, _ = uvd.make_inputs(TINY)
        with torch.no_grad():
            out = fast(x, t, Conditioning(crossattn=context))
            torch.testing.assert_close(out, plain(x, t, Conditioning(crossattn=context)))
        assert graphs and not plain.use_compile
    finally:
        unet_module._compiled_forward.cache_clear()
        torch._dynamo.reset()


def test_precision_benchmark_times_both_phases_of_each_preset(tmp_path):
    from benchmarks import precision

    r = precision.main(["--quick", "--out", str(tmp_path)])
    assert set(r["models"]) == {f"{m} {p}" for m in precision.PRESETS for p in ("phase1", "phase2")}
    assert all(m["fp32_s"] > 0 and m["bf16_s"] > 0 and m["ratio"] > 0 for m in r["models"].values())
    assert set(r["auto_precision_here"].values()) <= {"bf16-mixed", "32-true"}
    assert all(len(e) == 3 for e in r["conv_gradient_errors"].values())
    text = (tmp_path / "results.md").read_text()
    assert "| voxel phase2 | 2 |" in text and "| 3 | " in text


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from mmldm.configuration import compose
    from mmldm.training.trainer import resolve_precision, trainer_kwargs

    assert compose([]).trainer.precision == "auto"
    for value in ("32-true", "bf16-mixed", "16-mixed"):
        assert resolve_precision(value, "cpu") == value
    from mmldm.training import trainer

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(trainer, "bf16_conv_gradients_ok", lambda dims: True)
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(trainer, "bf16_conv_gradients_ok", lambda dims: dims != 3)
    assert resolve_precision("auto", "cpu", dims=2) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", dims=3) == "32-true"  # wrong 3D conv gradients in bf16: float32
    assert resolve_precision("auto", "cpu") == "32-true"  # dims unknown: every dims must pass
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert trainer_kwargs(compose(["trainer=cpu"]).trainer)["precision"] == "32-true"
    assert resolve_precision("auto", "mps") == "32-true"


def test_bf16_conv_gradient_check_measures_the_deviation_from_float32():
    from mmldm.training.trainer import bf16_conv_gradient_errors

    for dims in (1, 2):
        errors = bf16_conv_gradient_errors(dims, sides=(4,))
        assert 0 < errors[4] < 0.05  # bf16 rounding, nothing worse


def test_profile_gap_names_the_operators_where_one_side_spends_more():
    a, b = torch.randn(256, 256), torch.randn(256, 256)  # large enough that mm dominates on a loaded machine
    steps = {"mmldm": lambda: [torch.mm(a, b) for _ in range(20)], "diffusers": lambda: torch.mm(a, b)}
    g = unet_peer.profile_gap(steps, calls=2)
    assert g["sides"] == ["mmldm", "diffusers"] and g["total_ms"][0] > g["total_ms"][1]
    op, ours, theirs = g["ops"][0]
    assert op == "aten::mm" and ours > theirs > 0
