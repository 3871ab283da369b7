"""Phase-1 benchmark: autoencoders trained for a fixed wall-clock budget, measured on held-out data.

Tasks (each composes the config exactly as ``mmldm train`` does and trains
with mmldm's own phase-1 module and trainer):

* ``mnist``: 32x32 MNIST (9,000 train / 1,000 held out), f=4, 4 latent
  channels; variants ``kl``, ``vq``, ``ae``; PSNR/SSIM over all held-out images
  and the latent diagnostics of :mod:`mmldm.diagnostics` side by side.
* ``voxel``: 32^3 procedural occupancy grids, f=4; held-out IoU and Chamfer.
* ``audio``: log-mel spectrograms of spoken digits (FSDD, four speakers; the
  fifth, "theo", held out) in the 1D layout; the ratio of the first to the
  last logged training loss, and held-out log-mel L1, spectral convergence
  and LSD.
* ``audio_synth``: the same on the audio modality's embedded synthesized
  sounds (notes, chirps, noise, melodies).

Examples::

    python -m benchmarks.phase1                      # MNIST, kl vq ae, 15 min each
    python -m benchmarks.phase1 --quick --variants kl
    python -m benchmarks.phase1 --task voxel
    python -m benchmarks.phase1 --variants kl --set phase1.lr=2e-3
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
QUICK_SECONDS = 30.0


@dataclass
class Task:
    """A benchmark task: config overrides shared by its variants, budget and headline metric."""

    overrides: list[str]
    minutes: float
    variants: list[str]
    headline: str  # key of the held-out reconstruction metrics (or "loss_ratio")
    target: float
    notes: str = ""
    eval_items: int = 200  # held-out items of the PSNR/IoU curve
    lower_is_better: bool = False  # an error (spectral convergence) rather than a score (PSNR)
    also: dict[str, float] = field(default_factory=dict)  # more held-out metrics with targets, same direction


def tasks(data: Path) -> dict[str, Task]:
    """The tasks; ``data`` holds ``mnist/`` (IDX files) and ``fsdd/`` (WAV files)."""
    return {
        "mnist": Task(
            ["modality=image", "modality.source=mnist", f"modality.root={data / 'mnist'}", "autoencoder=conv_image"],
            15.0, ["kl", "vq", "ae"], "psnr", 30.0, "held-out PSNR (dB) over all 1,000 held-out images",
        ),
        "voxel": Task(["modality=voxel", "modality.resolution=32"], 12.0, ["kl"], "iou", 0.85,
                      "held-out IoU of 32^3 occupancy grids at f=4", eval_items=50),
        "audio": Task(["modality=audio", "preset=audio_fsdd", f"modality.root={data / 'fsdd'}"],
                      10.0, ["kl"], "spectral_convergence", 0.25,
                      "held-out spectral convergence and log-mel L1 of spoken digits (the preset's 2D layout, "
                      "latents [4, 16, 16]; speaker theo held out, all 500 of its clips)",
                      lower_is_better=True, also={"logmel_l1": 0.25}),
        "audio_synth": Task(["modality=audio", "modality.layout=1d"], 10.0, ["kl"], "loss_ratio", 5.0,
                            "first / last training loss (log-mel of the embedded synthesized sounds, 1D layout)"),
    }


def compose_variant(task: Task, variant: str, extra: Sequence[str] = ()) -> Any:
    """The run config of one variant (``stage=autoencoder`` on the CPU trainer)."""
    from mmldm.configuration import compose

    return compose([
        *task.overrides, f"regularizer={variant}", "stage=autoencoder", "trainer=cpu",
        "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", *extra,
    ])


def even_batch(n: int, target: int = 50) -> int:
    """The largest divisor of ``n`` not above ``target``: equal batches, so batch means average exactly."""
    return max(d for d in range(1, min(n, target) + 1) if n % d == 0)


def loss_curve(metrics_csv: Path, key: str = "train/total") -> list[tuple[int, float]]:
    """``(step, value)`` rows of ``key`` in a Lightning CSV log."""
    with open(metrics_csv, newline="") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def loss_ratio(curve: Sequence[tuple[int, float]], tail: int = 5) -> float:
    """First logged loss over the median of the last ``tail`` logged losses (NaN with fewer than 2 rows)."""
    if len(curve) < 2:
        return float("nan")
    last = sorted(v for _, v in curve[-tail:])
    return curve[0][1] / last[len(last) // 2]


def train_variant(cfg: Any, run_dir: Path, seconds: float, steps: int | None, eval_items: int) -> dict[str, Any]:
    """Train one autoencoder for ``seconds`` (or exactly ``steps``) and measure it on held-out data."""
    import lightning as L
    import torch

    from benchmarks.budget import HeldOutCurve, TimeBudget
    from mmldm.build import build_autoencoder, build_modality
    from mmldm.training.data import make_loader
    from mmldm.training.phase1 import AutoencoderModule
    from mmldm.training.trainer import make_trainer

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    module = AutoencoderModule.from_config(autoencoder, cfg.phase1, modality.reconstruction_loss)
    train = make_loader(modality.dataset("train"), cfg.data.batch_size, True, cfg.data.num_workers, drop_last=True, seed=cfg.seed)
    held_out = modality.dataset("val")
    x_curve = torch.stack([held_out[i]["x"] for i in range(min(eval_items, len(held_out)))])
    curve = HeldOutCurve(modality, x_curve, every=max(10.0, seconds / 10))
    callbacks: list[L.Callback] = [curve] if steps else [curve, TimeBudget(seconds)]
    root = run_dir / "autoencoder"
    trainer = make_trainer(
        cfg.trainer, root, steps or 10**9, callbacks=callbacks, max_time=timedelta(seconds=seconds), limit_val_batches=0,
        dims=modality.dims,
    )
    start = time.perf_counter()
    trainer.fit(module, train)
    train_seconds = time.perf_counter() - start
    diag = evaluate(module.autoencoder.cpu().eval(), modality, train, held_out, cfg)
    return {
        "steps": int(trainer.global_step), "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(1, trainer.global_step), 3),
        "parameters": sum(p.numel() for p in autoencoder.parameters()),
        "held_out_items": len(held_out), "diagnostics": diag, "curve": curve.rows,
        "loss_ratio": loss_ratio(loss_curve(root / "logs" / "metrics.csv")),
    }


def evaluate(autoencoder: Any, modality: Any, train: Any, held_out: Any, cfg: Any) -> dict[str, Any]:
    """Latent statistics from training batches, then diagnostics over *every* held-out item."""
    from mmldm.diagnostics import autoencoder_diagnostics
    from mmldm.latents import LatentStats
    from mmldm.training.data import make_loader

    stats = LatentStats.measure(autoencoder, train, max_batches=cfg.data.stats_batches)
    loader = make_loader(held_out, even_batch(len(held_out)), False)
    return autoencoder_diagnostics(autoencoder, stats, modality, loader, max_batches=len(loader), seed=cfg.seed)


# ---------------------------------------------------------------------------- report
def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return "" if v is None else str(v)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """Variants side by side: run figures, held-out reconstruction, latent diagnostics."""
    rows: dict[str, dict[str, Any]] = {}
    for variant, r in results.items():
        summary = {k: r[k] for k in ("steps", "train_seconds", "seconds_per_step", "parameters", "loss_ratio")}
        flat = flatten({**summary, **r["diagnostics"]})
        for key, value in flat.items():
            if not key.startswith("latent.normalization"):
                rows.setdefault(key, {})[variant] = value
    names = list(results)
    lines = ["| quantity | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {k} | " + " | ".join(_cell(v.get(n)) for n in names) + " |" for k, v in rows.items()]
    return "\n".join(lines)


def curve_table(results: dict[str, dict[str, Any]]) -> str:
    """The held-out curve of each variant (step, seconds, metrics)."""
    out = []
    for variant, r in results.items():
        keys = [k for k in r["curve"][0] if k not in ("step", "seconds")] if r["curve"] else []
        points = ", ".join(f"{row['step']}@{row['seconds']:.0f}s: " + "/".join(f"{row[k]:.3g}" for k in keys) for row in r["curve"])
        out.append(f"- {variant} ({'/'.join(keys)}): {points}")
    return "\n".join(out)


def verdict(task: Task, results: dict[str, dict[str, Any]]) -> str:
    """One line per variant: the headline figure against the task's target."""
    lines = []
    sign = "<=" if task.lower_is_better else ">="
    for variant, r in results.items():
        for key, target in {task.headline: task.target, **task.also}.items():
            value = r["loss_ratio"] if key == "loss_ratio" else r["diagnostics"]["reconstruction"][key]
            ok = value <= target if task.lower_is_better else value >= target
            lines.append(f"- {variant}: {key} = {value:.4g} (target {sign} {target:g}): "
                         f"{'PASS' if ok else 'below target'}")
    return "\n".join(lines)


def write_report(task_name: str, task: Task, results: dict[str, dict[str, Any]], out: Path, settings: dict[str, Any]) -> str:
    """``results.json`` and ``results.md`` in ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"task": task_name, "settings": settings, "results": results}, indent=2, default=float))
    md = (
        f"# Phase-1 benchmark: {task_name}\n\n{task.notes}; budget {settings['seconds']:.0f} s per variant.\n\n"
        f"{verdict(task, results)}\n\n{markdown_table(results)}\n\n## Held-out curve (first {task.eval_items} items)\n\n"
        f"{curve_table(results)}\n\nOverrides: `{' '.join(settings['overrides'])}`\n"
    )
    (out / "results.md").write_text(md)
    return md


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.phase1", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("mnist", "voxel", "audio", "audio_synth"), default="mnist")
    p.add_argument("--variants", nargs="+", choices=("kl", "vq", "ae"), help="regularizers (default: mnist all three, else kl)")
    p.add_argument("--minutes", type=float, help="training budget per variant (default: mnist 15, voxel 12, audio 10)")
    p.add_argument("--seconds", type=float, help="budget per variant in seconds (overrides --minutes and --quick)")
    p.add_argument("--steps", type=int, help="exact optimizer steps (the cosine schedule ends there; the budget still caps time)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f} s per variant: a smoke test")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/phase1_<task>)")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with mnist/ (IDX files) and fsdd/ (WAV files)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides, e.g. phase1.lr=2e-3")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    task = tasks(args.data)[args.task]
    seconds = args.seconds or (QUICK_SECONDS if args.quick else 60.0 * (args.minutes or task.minutes))
    out = args.out or REPO / "benchmarks" / "results" / f"phase1_{args.task}"
    results: dict[str, dict[str, Any]] = {}
    for variant in args.variants or task.variants:
        cfg = compose_variant(task, variant, args.set)
        run_dir = out / variant
        shutil.rmtree(run_dir, ignore_errors=True)  # every run starts fresh (no resume)
        print(f"[phase1/{args.task}] {variant}: training for {seconds:.0f} s ...", flush=True)
        results[variant] = train_variant(cfg, run_dir, seconds, args.steps, task.eval_items)
    settings = {"seconds": seconds, "steps": args.steps, "overrides": [_portable(o) for o in [*task.overrides, *args.set]]}
    results = {**_earlier_results(out / "results.json", args.task, settings), **results}
    print(write_report(args.task, task, results, out, settings))
    return results


def _portable(text: str) -> str:
    """Paths under the folder that holds the checkout are written relative to the checkout (``../shared/...``)."""
    return text.replace(str(REPO.parent), "..")


def _earlier_results(path: Path, task_name: str, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Variants of an earlier run with the same task and settings, so variants can be run one at a time."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    same = earlier.get("task") == task_name and earlier.get("settings") == settings
    return earlier.get("results", {}) if same else {}


if __name__ == "__main__":
    main()
