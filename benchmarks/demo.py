"""The quick-start demo measured: what ``bash scripts/demo.sh`` runs, timed, with the run's own metrics.

Runs ``mmldm train modality=voxel preset=voxel_quick`` (both phases on 16^3 procedural shapes) in a fresh
run directory, times it end to end (the command's wall clock, process start included) and copies the
figures its ``metrics.json`` reports: the autoencoder's held-out IoU and the samples' set metrics, which
a run measures at equal sizes over 5 random subsets beside two disjoint real subsets of the same size
(what a perfect generator scores). With ``--judge`` (the default) it then asks whether a person would
recognize the samples: an independent 3D classifier, trained on the demo's own real training shapes (the
voxel judge of :mod:`benchmarks.generation`), labels ``--per-class`` samples of every class drawn from the
exported model (25 DPM-Solver++ steps, guidance 3), reported with n and a Wilson 95% interval beside the
classifier's accuracy on the real held-out shapes. Judging is not part of the timed run. Writes
``benchmarks/results/demo/results.{json,md}``.

    python -m benchmarks.demo
    python -m benchmarks.demo --set trainer.max_steps=20 --per-class 2 --classifier-epochs 1   # a smoke run
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
    if "judge" in r:
        from mmldm.evaluation.stats import format_share

        j = r["judge"]
        lines += ["", f"Recognizable? {j['per_class']} samples per class of the exported model (dpmpp_2m, 25 steps, "
                  f"guidance 3) labelled as their class by an independent 3D classifier: "
                  f"**{format_share(j['class_accuracy'], j['class_accuracy_n'])}** (chance "
                  f"{1 / j['classes']:.1%}); the classifier on the real held-out shapes: "
                  f"{format_share(j['classifier_val_accuracy'], j['classifier_val_accuracy_n'])} "
                  f"({j['classifier_epochs']} epochs).", "", "Per class: " + ", ".join(
                      f"{k} {v:.0%}" for k, v in j["per_class_accuracy"].items())]
    return "\n".join(lines + [""])


def judge_demo(run_dir: Path, overrides: Sequence[str], per_class: int, epochs: int, seed: int = 0) -> dict[str, Any]:
    """Class accuracy of the demo's exported model by an independent classifier trained on its real data."""
    import torch

    from benchmarks.generation import TASKS
    from mmldm import LatentDiffusion
    from mmldm.build import build_modality
    from mmldm.configuration import compose
    from mmldm.evaluation.classifier import train_classifier
    from mmldm.evaluation.generation import judge_samples
    from mmldm.preview import save_samples

    cfg = compose([*COMMAND[1:], *overrides, f"seed={seed}"])
    modality = build_modality(cfg.modality)
    train, val = modality.dataset("train"), modality.dataset("val")
    options = {**TASKS["voxel"].classifier, "epochs": epochs}
    classifier, clf = train_classifier(train, val, modality.dims, modality.channels, modality.num_classes,
                                       seed=seed, **options)
    real = torch.stack([val[i]["x"] for i in range(len(val))])
    pipe = LatentDiffusion.from_pretrained(run_dir / "export")
    judged, samples, labels = judge_samples(pipe, classifier, real, per_class, steps=25, guidance=3.0, seed=seed)
    every = max(1, per_class // 2)
    save_samples(pipe.modality, samples[::every], run_dir / "judged", cond={"class": labels[::every]})
    names = list(modality.class_names)
    per = judged["per_class_accuracy"]
    return {"per_class": per_class, "classes": modality.num_classes, "class_accuracy": judged["class_accuracy"],
            "class_accuracy_n": judged["class_accuracy_n"], "class_accuracy_ci": judged["class_accuracy_ci"],
            "per_class_accuracy": {names[int(k)]: v for k, v in per.items()},
            "classifier_val_accuracy": clf["val_accuracy"], "classifier_val_accuracy_n": clf["val_accuracy_n"],
            "classifier_epochs": epochs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides (smoke runs)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "demo")
    p.add_argument("--no-judge", dest="judge", action="store_false", help="only time the run")
    p.add_argument("--per-class", type=int, default=20, help="samples judged per class (20)")
    p.add_argument("--classifier-epochs", type=int, default=20, help="epochs of the judge (20)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(Path(tmp) / "run", args.set)
        if args.judge:
            result["judge"] = judge_demo(Path(tmp) / "run", args.set, args.per_class, args.classifier_epochs)
            args.out.mkdir(parents=True, exist_ok=True)
            grid = Path(tmp) / "run" / "judged" / "sample_grid.png"
            if grid.is_file():
                import shutil

                shutil.copy(grid, args.out / "judged_grid.png")
    save_results(args.out, result, report(result))
    return result


if __name__ == "__main__":
    main()
