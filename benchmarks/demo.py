"""The quick-start demo measured: what ``bash scripts/demo.sh`` runs, timed, with the run's own metrics.

Runs ``mmldm train modality=voxel preset=voxel_quick`` (both phases on 16^3 procedural shapes) in a fresh
run directory, times it end to end (the command's wall clock, process start included) and copies the
figures its ``metrics.json`` reports: the autoencoder's held-out IoU and the samples' set metrics, which
a run measures at equal sizes over 5 random subsets beside two disjoint real subsets of the same size
(what a perfect generator scores). Writes ``benchmarks/results/demo/results.{json,md}``.

    python -m benchmarks.demo
    python -m benchmarks.demo --set trainer.max_steps=20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import save_results

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["train", "modality=voxel", "preset=voxel_quick"]


def run_demo(run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``mmldm train`` with the demo's arguments in ``run_dir``; its wall time and ``metrics.json``.
    A failing run raises ``RuntimeError`` with the end of its output."""
    args = [sys.executable, "-m", "mmldm.cli", *COMMAND, f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"`mmldm {' '.join(COMMAND)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"command": f"mmldm {' '.join([*COMMAND, *overrides])}", "wall_seconds": seconds, "metrics": metrics}


def report(r: dict[str, Any]) -> str:
    m = r["metrics"]
    ae = m["autoencoder"]["reconstruction"]
    gen = m["diffusion"]
    sets = gen.get("generation_sets", {})
    lines = ["# The quick-start demo", "", f"`{r['command']}`: {r['wall_seconds']:.0f} s wall clock, both phases "
             f"({gen.get('steps')} diffusion steps). Autoencoder held-out IoU {ae['iou']:.3f}.", ""]
    if sets:
        lines += [f"{gen['num_samples']} samples; set metrics at {sets['size']} a side, mean +- sd over "
                  f"{sets['repeats']} random subsets, beside two disjoint real subsets of the same size:", "",
                  "| metric | samples vs real | real vs real |", "| --- | --- | --- |"]
        for k, v in sets["generated"].items():
            null = sets["null"][k]
            lines.append(f"| {k} | {v['mean']:.4g} +- {v['sd']:.2g} | {null['mean']:.4g} +- {null['sd']:.2g} |")
    if gen.get("generation_note"):
        lines += ["", gen["generation_note"]]
    return "\n".join(lines + [""])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides (smoke runs)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "demo")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(Path(tmp) / "run", args.set)
    save_results(args.out, result, report(result))
    return result


if __name__ == "__main__":
    main()
