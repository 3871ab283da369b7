"""The performance benchmarks in one run, one table: ``python -m benchmarks``.

Sections (each is a module that also runs alone, with its own ``--help``):

1. ``unet_vs_diffusers``: mmldm's 2D U-Net against diffusers' ``UNet2DConditionModel`` at the same
   104M-parameter architecture, 21 interleaved rounds, both sides at each setting of
   :mod:`benchmarks.unet_peer` (float32 eager, fused AdamW, bf16 autocast, channels-last, torch.compile):
   every ratio is mmldm / diffusers at the same setting, with its per-round range (the noise); what bf16
   buys is a separate same-side figure;
2. ``unet_vs_monai``: the same for 3D, against MONAI's ``DiffusionModelUNet(spatial_dims=3)`` at the
   voxel preset's phase-2 size (:mod:`benchmarks.unet_vs_monai`);
3. ``utilization``: achieved FLOP/s over a large matmul's in the same dtype, the 2D U-Net's forward and its
   training step per precision, and what bounds each;
4. ``latent_cache``: phase-2 steps/s with the latent cache against encoding whole batches in the training
   step, and the end-to-end time of a preset-length phase 2 with the one-off cache writing (300 procedural
   32^3 shapes, 2 rounds of 10 steps);
5. ``latent_vs_pixel``: a training step (batch 1) and one guided sample (10 DPM-Solver++ steps) at
   64^3, latent (f=4) against pixel space, 2 rounds: a pixel-space forward at 64^3 is ~370 GFLOP per
   grid, so the module's defaults (batch 2, 25 steps, 3 rounds) alone would take most of 10 minutes;
6. ``samplers``: quality against steps needs a trained model (``python -m benchmarks.generation``,
   about 20 minutes); this run quotes ``benchmarks/results/generation_mnist_samplers/results.json`` when
   present, and calls the two samplers equivalent only when the 95% interval of their accuracy difference
   lies within +-1 point.

Every section records its wall time and peak resident memory
(:func:`benchmarks.utilization.peak_rss`). The acceptance figures go to one table, printed and written
with every section's result to ``benchmarks/results/perf/results.{json,md}`` (section files in
subfolders). The eager sections take about 7 minutes on a 2-core CPU; compiling the four networks for
the torch.compile setting adds 3 to 15 minutes depending on inductor's on-disk cache (the table gives each
first step; the run's own wall time is its last row). ``--no-compile`` leaves that setting out;
``--quick`` runs every section at tiny sizes in about a minute (a smoke run: its figures say nothing about
the targets).

    python -m benchmarks
    python -m benchmarks --quick
    python -m benchmarks --only unet_vs_diffusers unet_vs_monai --no-compile
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks import latent_cache, latent_vs_pixel, unet_peer, unet_vs_diffusers, unet_vs_monai, utilization
from benchmarks.unet_vs_diffusers import Arch

REPO = Path(__file__).resolve().parents[1]


GENERATION = REPO / "benchmarks" / "results" / "generation_mnist_samplers" / "results.json"
#: the equivalence margin of the sampler comparison, fixed here for every run: 1 accuracy point
SAMPLER_MARGIN = 0.01


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    unet: Arch
    unet_rounds: int
    unet3d: Any  # benchmarks.unet_vs_monai.Arch
    unet3d_rounds: int
    utilization: Arch
    utilization_rounds: int
    matmul_n: int
    latent_cache: tuple[str, ...]
    latent_vs_pixel: tuple[str, ...]
    compile: bool = True  # the torch.compile setting on both sides of each U-Net pair


FULL = Plan(Arch(), 21, unet_vs_monai.DEFAULT, 21, replace(Arch(), batch=8), 5, 2048,
            ("--steps", "10", "--rounds", "2", "--set", "modality.num_shapes=300"),
            # 64^3 pixel space costs ~370 GFLOP per forward of one grid: batch 1, 10 sampler steps, 2 rounds
            ("--resolution", "64", "--batch", "1", "--repeats", "2", "--sample-steps", "10"))
QUICK = Plan(unet_vs_diffusers.QUICK, 2, unet_vs_monai.QUICK, 2, unet_vs_diffusers.QUICK, 2, 512,
             ("--steps", "3", "--rounds", "1", "--set", "modality.resolution=16", "modality.num_shapes=40",
              "data.batch_size=4", "diffusion.batch_size=4"),
             ("--resolution", "16", "--repeats", "1", "--sample-steps", "2", "--batch", "1"), compile=False)

Row = dict[str, Any]  # benchmark, figure, value, target, met


def row(benchmark: str, figure: str, value: float | None, target: str = "", ok: bool | None = None,
        **extra: Any) -> Row:
    """A table row; ``extra`` (e.g. ``low``/``high`` of a per-round range) is kept in results.json."""
    return {"benchmark": benchmark, "figure": figure, "value": value, "target": target, "met": ok, **extra}


def peer_rows(r: dict[str, Any]) -> list[Row]:
    """One row per setting (mmldm / peer at that setting, held to <= 1.0), then what bf16 buys each side."""
    peer = r["peer"]
    name = f"U-Net {r['dims']}D vs {peer}"
    rows = []
    for s in r["settings"].values():
        q = s["ratio"]["train_step"]
        rows.append(row(name, f"train step, mmldm / {peer}, both {s['label']} (median of {r['rounds']} interleaved "
                        f"rounds; per-round {q['min']:.2f}-{q['max']:.2f})", q["median"], "<= 1.0",
                        q["median"] <= 1.0, low=q["min"], high=q["max"]))
        if s["compile"]:
            first = s["first_step_seconds"]
            rows.append(row(name, f"first compiled train step (compilation), s, mmldm / {peer}: "
                            f"{first['mmldm']:.0f} / {first[peer]:.0f}", first["mmldm"] / first[peer]))
    for side in ("mmldm", peer):
        b = r["buys"].get("bf16", {}).get(side)
        if b:
            rows.append(row(name, f"what bf16 autocast buys: {side} bf16 / {side} float32 train step (same side; "
                            f"per-round {b['min']:.2f}-{b['max']:.2f})", b["median"], low=b["min"], high=b["max"]))
    mem = {side: s["peak_mb"][side] for side in ("mmldm", peer) for s in [r["settings"]["fp32"]] if "peak_mb" in s}
    if mem:
        rows.append(row(name, f"peak MB of a float32 train step, mmldm / {peer} ({mem['mmldm']:.0f} / "
                        f"{mem[peer]:.0f} MB)", mem["mmldm"] / max(mem[peer], 1e-9)))
    return rows


def unet_section(plan: Plan, out: Path, args: argparse.Namespace) -> tuple[dict, list[Row], str]:
    r = unet_vs_diffusers.run(plan.unet, plan.unet_rounds, compile=plan.compile and not args.no_compile)
    r["dims"] = 2
    return r, peer_rows(r), unet_vs_diffusers.report(r)


def unet3d_section(plan: Plan, out: Path, args: argparse.Namespace) -> tuple[dict, list[Row], str]:
    compiled = plan.compile and not args.no_compile
    settings = [*unet_peer.SETTINGS, unet_peer.COMPILED] if compiled else unet_peer.SETTINGS
    r = unet_peer.run(unet_vs_monai, plan.unet3d, plan.unet3d_rounds, settings)
    r["dims"] = 3
    return r, peer_rows(r), unet_peer.report(r, "mmldm 3D U-Net vs MONAI DiffusionModelUNet, at equal settings")


def utilization_section(plan: Plan, out: Path, args: argparse.Namespace) -> tuple[dict, list[Row], str]:
    r = utilization.run(plan.utilization, plan.utilization_rounds, plan.matmul_n)
    ok = r["utilization"] >= utilization.TARGET
    rows = [row("Utilization", "U-Net forward FLOP/s / matmul FLOP/s (float32)", r["utilization"], ">= 0.40", ok)]
    for name, m in r["train_step"].items():
        rows.append(row("Utilization", f"U-Net training step (forward + backward) FLOP/s / {name} matmul FLOP/s, "
                        f"{name}", m["utilization"], f">= {utilization.STEP_TARGET:.2f}",
                        m["utilization"] >= utilization.STEP_TARGET))
    return r, rows, utilization.report(r)


def latent_cache_section(plan: Plan, out: Path, args: argparse.Namespace) -> tuple[dict, list[Row], str]:
    r = latent_cache.main([*plan.latent_cache, "--out", str(out / "latent_cache")])
    ratio = r["ratio_cache_over_no_cache"]
    md = (out / "latent_cache" / "results.md").read_text()
    return r, [row("Latent cache", "phase-2 steps/s, with cache / batched encoding in the training step", ratio,
               ">= 1.5", ratio >= 1.5),
           row("Latent cache", f"{r['end_to_end']['steps']:,}-step phase 2 end to end (cache writing included), "
               "without / with cache (computed from the measured rates)", r["end_to_end"]["ratio_no_cache_over_cache"])], md


def latent_vs_pixel_section(plan: Plan, out: Path, args: argparse.Namespace) -> tuple[dict, list[Row], str]:
    r = latent_vs_pixel.main([*plan.latent_vs_pixel, "--out", str(out / "latent_vs_pixel")])
    ratio, res, batch = r["ratio_pixel_over_latent"], r["settings"]["resolution"], r["settings"]["batch"]
    r["peak_mb_train_step"] = step_memory(res, batch)
    name, mem = f"Latent vs pixel {res}^3", r["peak_mb_train_step"]
    rows = [row(name, "training step, pixel / latent", ratio["train_step"], ">= 20", ratio["train_step"] >= 20),
            row(name, f"one sample, {r['settings']['sample_steps']} steps (latent incl. decoding), pixel / latent",
                ratio["sample"]),
            row(name, f"peak MB of a training step, pixel / latent ({mem['pixel']:.0f} / {mem['latent']:.0f} MB)",
                mem["pixel"] / max(mem["latent"], 1e-9))]
    return r, rows, (out / "latent_vs_pixel" / "results.md").read_text()


def step_memory(resolution: int, batch: int) -> dict[str, float]:
    """Peak tensor memory (MB) of a training step of :mod:`benchmarks.latent_vs_pixel`'s two sides, measured
    on the second step (the first also allocates the optimizer state)."""
    parts, peak = latent_vs_pixel.build(resolution), {}
    for side in ("latent", "pixel"):
        step = latent_vs_pixel.train_step(*parts[side], batch, parts["process"])
        step()
        peak[side] = utilization.peak_tensor_memory(step) / 2**20
    return peak


def samplers_section(plan: Plan, out: Path, args: argparse.Namespace) -> tuple[dict, list[Row], str]:
    """DPM-Solver++(2M) 25 steps against DDPM 250 steps from the generation benchmark's results, if any."""
    if not GENERATION.is_file():
        note = f"no {GENERATION.relative_to(REPO)}: run `python -m benchmarks.generation` (about 20 minutes)"
        return {"note": note}, [row("Samplers", "DPM-Solver++(2M) 25 vs DDPM 250 steps", None,
                                        "equivalent within +-1 point")], note
    r = json.loads(GENERATION.read_text())
    s = r["samples"]
    fast, ref = s.get("dpmpp_2m-25-g3"), s.get("ddpm-250-g3")
    if fast is None or ref is None:
        return r, [], "the generation results lack the dpmpp_2m-25-g3 / ddpm-250-g3 settings"
    from mmldm.evaluation.stats import difference_interval

    n = r["settings"]["per_class"] * 10  # MNIST: 10 classes
    gap = fast["class_accuracy"] - ref["class_accuracy"]
    # equivalence, not a non-significant test: the 95% interval of the difference (Newcombe) must lie within
    # the margin fixed in advance of the run (SAMPLER_MARGIN)
    right = [round(m["class_accuracy"] * n) for m in (fast, ref)]
    low, high = difference_interval(right[0], n, right[1], n)
    ok = -SAMPLER_MARGIN <= low and high <= SAMPLER_MARGIN
    rows = [row("Samplers", f"class accuracy, DPM-Solver++(2M) 25 minus DDPM 250 steps ({right[0]}/{n} vs "
                f"{right[1]}/{n}; 95% CI of the difference {100 * low:+.2f} to {100 * high:+.2f} points)", gap,
                f"equivalent within +-{100 * SAMPLER_MARGIN:g} point: CI inside the margin", ok, low=low, high=high),
            row("Samplers", "Frechet distance, DPM-Solver++(2M) 25 / DDPM 250 steps",
                fast["frechet_distance"] / ref["frechet_distance"])]
    return r, rows, f"Quoted from `{GENERATION.relative_to(REPO)}` (MNIST, {n} samples per setting)."


SECTIONS: dict[str, Callable[[Plan, Path, argparse.Namespace], tuple[dict, list[Row], str]]] = {
    "unet_vs_diffusers": unet_section, "unet_vs_monai": unet3d_section, "utilization": utilization_section,
    "latent_cache": latent_cache_section,
    "latent_vs_pixel": latent_vs_pixel_section, "samplers": samplers_section,
}


def table(rows: list[Row], quick: bool) -> str:
    lines = ["| benchmark | figure | value | target | met |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        value = "n/a" if r["value"] is None else f"{r['value']:.3g}"
        met = "" if r["met"] is None or quick else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['benchmark']} | {r['figure']} | {value} | {r['target']} | {met} |")
    return "\n".join(lines)


def run(plan: Plan, out: Path, args: argparse.Namespace, sections: Sequence[str]) -> dict[str, Any]:
    """Run ``sections`` in order; a failing section is recorded and the others still run."""
    import torch

    start = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "sections": {}, "seconds": {}, "memory": {}, "errors": {}}
    rows: list[Row] = []
    reports: list[str] = []
    results["rows"], results["reports"] = {}, {}
    for name in sections:
        t0 = time.perf_counter()
        with utilization.peak_rss() as memory:
            try:
                result, section_rows, md = SECTIONS[name](plan, out, args)
            except Exception:  # noqa: BLE001 - reported, the run goes on, the exit code says it
                results["errors"][name] = traceback.format_exc()
                print(results["errors"][name], flush=True)
                result, section_rows, md = {}, [row(name, "FAILED (see errors in results.json)", None)], ""
        results["seconds"][name], results["memory"][name] = time.perf_counter() - t0, memory
        results["sections"][name], results["rows"][name], results["reports"][name] = result, section_rows, md
    results["run_seconds"] = time.perf_counter() - start
    return finish(results, args.quick)


#: what a section leaves in results.json, keyed by section name
PER_SECTION = ("sections", "seconds", "memory", "rows", "reports")


def check_previous(previous: dict[str, Any], source: Path, quick: bool) -> None:
    """Refuse (``SystemExit``, before any section runs) an earlier results file ``--only`` cannot complete."""
    missing = [k for k in PER_SECTION if k not in previous]
    if missing:
        raise SystemExit(f"--only keeps the other sections of {source}, but it has no per-section {missing} (written "
                         "by an older version): run every section once, or pass --out to another folder")
    if previous.get("quick") != quick:
        raise SystemExit(f"--only: {source} holds a {'quick' if previous.get('quick') else 'full'} run and this is "
                         f"{'quick' if quick else 'full'}; pass --out to another folder")


def carry_over(results: dict[str, Any], previous: dict[str, Any], source: Path) -> dict[str, Any]:
    """``results`` of some sections (``--only``) completed with the other sections of an earlier run
    (``previous``, read from ``source``), which are listed in ``carried_over``; the table is rebuilt."""
    check_previous(previous, source, results["quick"])
    carried = [name for name in SECTIONS if name not in results["sections"] and name in previous["sections"]]
    for name in carried:
        for key in PER_SECTION:
            results[key][name] = previous[key][name]
        if name in previous.get("errors", {}):
            results["errors"][name] = previous["errors"][name]
    results["carried_over"] = carried
    return finish(results, results["quick"])


def finish(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The table (each section's rows in :data:`SECTIONS` order, then the wall time of all sections) and the
    markdown report of ``results``."""
    order = [name for name in SECTIONS if name in results["sections"]]
    rows = [r for name in order for r in results["rows"][name]]
    total = sum(results["seconds"][name] for name in order)
    carried = results.get("carried_over", [])
    figure = "wall time of all sections, s" + (
        f" (sum of each section's own run; carried over from an earlier run: {', '.join(carried)})" if carried else "")
    rows.append(row("Entry point", figure, total, "< 600", total < 600))
    results.update(total_seconds=total, table=rows)
    reports = [results["reports"][name] for name in order]
    return {**results, "markdown": markdown(results, rows, reports, quick)}


def markdown(results: dict[str, Any], rows: list[Row], reports: list[str], quick: bool) -> str:
    order = [k for k in SECTIONS if k in results["memory"]]
    memory = results["memory"]
    mem = "\n".join(f"| {k} | {results['seconds'][k]:.0f} | {memory[k].get('rss_before_mb') or float('nan'):.0f} "
                    f"| {memory[k].get('peak_rss_mb') or float('nan'):.0f} |" for k in order)
    method = next(iter(results["memory"].values()), {}).get("method", "")
    head = "Quick smoke run at tiny sizes: the figures do not test the targets." if quick else (
        "Ratios are measured side by side in this run; absolute times are context only.")
    if results.get("carried_over"):
        head += (f" Sections carried over from an earlier run of this file (`--only` ran the others): "
                 f"{', '.join(results['carried_over'])}.")
    return "\n\n".join([
        "# mmldm performance", f"{head} {results['threads']} CPU threads, torch {results['torch']}.",
        table(rows, quick), f"Per section: wall time and peak resident memory ({method}).",
        "| section | seconds | RSS before, MB | peak RSS, MB |\n| --- | --- | --- | --- |\n" + mem,
        *[r for r in reports if r], "",
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every section at tiny sizes (about a minute)")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                   help="sections to run; the others' results are kept from --out's results.json, and the "
                   "report says which were carried over")
    p.add_argument("--no-compile", action="store_true",
                   help="leave out the U-Nets' torch.compile setting (compiling takes minutes)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "perf")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    previous_file = args.out / "results.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else None
    if set(args.only) != set(SECTIONS) and previous is not None:  # check before spending the run's time
        check_previous(previous, previous_file, args.quick)
    results = run(QUICK if args.quick else FULL, args.out, args, args.only)
    if set(args.only) != set(SECTIONS) and previous is not None:
        results = carry_over({k: v for k, v in results.items() if k != "markdown"}, previous, previous_file)
    (args.out / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "markdown"},
                                                      indent=2, default=str))
    (args.out / "results.md").write_text(results["markdown"])
    print(results["markdown"])
    if results["errors"]:
        raise SystemExit(f"sections failed: {', '.join(results['errors'])} (tracebacks above and in results.json)")
    return results


if __name__ == "__main__":
    main()
