"""Do samples follow their non-class conditions? Text and segmentation conditioning, measured.

Tasks (each trains both phases with ``mmldm.training.run.train``, the code behind
``mmldm train``, for fixed wall-clock budgets, then samples the exported model
with the *held-out* items' conditions):

* ``text``: MNIST digits (9,000 train / 1,000 held out) with their captions
  ("a handwritten digit 7"), ``conditioner=text`` alone (the class is never
  given: the learned tokenizer and text encoder carry it). An independent
  classifier, trained on the real training images' classes, labels each
  sample; the score is the share whose label is the class named by its
  caption, with n and a Wilson 95% interval (and the Frechet distance in the
  classifier's features).
* ``text_shapes``: the same on 10,000 of the image modality's embedded shapes
  (8 classes, captions such as "a small red star on the left").
* ``segmentation``: MNIST digits (9,000 train / 1,000 held out, 32x32) with
  ``conditioner=segmentation conditioner.subcells=4`` (the whole 32x32 mask
  folded onto the 8x8 latent grid): each sample is conditioned on a held-out
  digit's mask (pixels of gray level >= 128, labelled with the digit). The
  score is the IoU of the thresholded sample (pixel >= 128) against the mask,
  beside two references: the IoU of the real held-out images against their own
  masks at a lower threshold (how well a mask can be matched at all) and of the
  samples against *another* item's mask (what chance agreement looks like).

Results: ``benchmarks/results/conditioning_<task>/results.{json,md}`` with
PNGs: for text, samples with their captions in ``samples/captions.txt``; for
segmentation, ``masks_above_samples.png`` (masks in the top row).

Examples::

    python -m benchmarks.conditioning --task text           # 3 + 10 min
    python -m benchmarks.conditioning --task text_shapes    # 3 + 10 min
    python -m benchmarks.conditioning --task segmentation   # 3 + 12 min
    python -m benchmarks.conditioning --task text --quick   # 1 + 1 min smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.generation import MNIST, SHARED_DATA, train_model

REPO = Path(__file__).resolve().parents[1]

#: 8x8x4 latents of 32x32 images, the U-Net of the MNIST generation run; budgets decide the steps.
_UNET = ["denoiser.model_channels=64", "denoiser.channel_mult=[1,2]", "denoiser.num_res_blocks=2",
         "denoiser.attention_levels=[1]", "denoiser.head_dim=32"]
_COMMON = ["trainer=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50", "data.batch_size=64",
           "diffusion.lr=5e-4", "diffusion.ema_decay=0.999", "sample.num_samples=8",
           "phase1.max_steps=1000000", "diffusion.max_steps=1000000"]
#: 10,000 shapes (9,000 train): the independent classifier reaches 99.8% on the held-out 1,000 (1,800 train: 63%).
TEXT_SHAPES = ["modality=image", "modality.source=shapes", "modality.num_samples=10000", "autoencoder=conv_image", "regularizer=kl", "conditioner=text",
        *_UNET, *_COMMON]
_MNIST = [o for o in MNIST if not o.startswith("sample.")]
#: MNIST with its captions ("a handwritten digit 7"): the text encoder, not the class label, carries the digit.
TEXT = [*_MNIST, "conditioner=text", "sample.num_samples=8"]
#: MNIST with digit masks; the mask reaches the 8x8 latent grid whole (subcells=4: each cell carries its 4x4
#: pixels), where nearest resizing to one label per cell gave IoU 0.60 after 14 minutes.
SEGMENTATION = [*_MNIST, "conditioner=segmentation", "conditioner.subcells=4", "sample.num_samples=8"]


@dataclass
class Task:
    overrides: list[str]
    ae_minutes: float
    diffusion_minutes: float
    key: str  # the condition key sampled with
    target: float
    data: str | None = None  # sub-folder of --data that becomes modality.root


TASKS = {
    "text": Task(TEXT, 3.0, 10.0, "text", 0.80, data="mnist"),
    "text_shapes": Task(TEXT_SHAPES, 3.0, 10.0, "text", 0.80),
    "segmentation": Task(SEGMENTATION, 3.0, 12.0, "segmentation", 0.70, data="mnist"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conditioning", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="text")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with mnist/")
    p.add_argument("--ae-minutes", type=float, help="phase-1 budget (default: 3)")
    p.add_argument("--diffusion-minutes", type=float, help="phase-2 budget (default: text 10, segmentation 12)")
    p.add_argument("--samples", type=int, default=400, help="held-out conditions sampled (default 400)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++(2M) steps")
    p.add_argument("--quick", action="store_true", help="1 + 1 minutes, 40 samples: a smoke run")
    p.add_argument("--out", type=Path, help="report folder (default benchmarks/results/conditioning_<task>)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def compose_config(args: argparse.Namespace, task: Task) -> Any:
    from mmldm.configuration import compose

    root = [f"modality.root={args.data / task.data}"] if task.data else []
    return compose([*task.overrides, *root, *args.set, f"phase1.max_minutes={args.ae_minutes}",
                    f"diffusion.max_minutes={args.diffusion_minutes}", f"seed={args.seed}"])


def held_out(val: Any, n: int, key: str) -> tuple[Any, Any, list[Any]]:
    """The first ``n`` held-out items: images ``[n, C, H, W]``, class labels ``[n]`` and the ``key`` conditions."""
    import torch

    items = [val[i] for i in range(min(n, len(val)))]
    x = torch.stack([it["x"] for it in items])
    labels = torch.tensor([it["cond"]["class"] for it in items])
    conds = [it["cond"][key] for it in items]
    return x, labels, conds


def judge_text(pipe: Any, modality: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Caption-conditioned samples, labelled by a classifier trained on the real training classes."""
    from mmldm.evaluation.classifier import classifier_metrics, per_class_accuracy, train_classifier

    train_set, val_set = modality.dataset("train"), modality.dataset("val")
    classifier, clf = train_classifier(train_set, val_set, modality.dims, modality.channels, modality.num_classes,
                                       epochs=2 if args.quick else 8, seed=args.seed)
    x, labels, captions = held_out(val_set, args.samples, "text")
    samples, seconds = _sample(pipe, {"text": captions}, args)
    final = modality.finalize(samples)  # as mmldm.evaluation.generation.judge_samples judges
    metrics = classifier_metrics(classifier, modality.finalize(x), final, labels)
    metrics["per_class_accuracy"] = per_class_accuracy(classifier, final, labels)
    modality.save(samples[:32], out / "samples", prefix="sample")
    (out / "samples" / "captions.txt").write_text("\n".join(captions[:32]) + "\n")
    return {"classifier": clf, "score": metrics["class_accuracy"], "metrics": metrics, "sampling_seconds": seconds}


def iou(pred: Any, target: Any) -> float:
    """Mean per-image IoU of two boolean stacks ``[n, 1, H, W]`` (torchmetrics' binary Jaccard index)."""
    from torchmetrics.functional.classification import binary_jaccard_index

    return float(sum(binary_jaccard_index(p.int(), t.int()) for p, t in zip(pred, target)) / len(pred))


def judge_segmentation(pipe: Any, modality: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Mask-conditioned samples: IoU of (sample >= 128 of 255) against the conditioning mask's foreground."""
    import torch

    from mmldm_image.preview import save_comparison
    from mmldm_image.sources import DIGIT_MASK_LEVEL

    x, _, masks = held_out(modality.dataset("val"), args.samples, "segmentation")
    masks = torch.stack(masks)
    samples, seconds = _sample(pipe, {"segmentation": masks}, args)
    level = DIGIT_MASK_LEVEL / 127.5 - 1  # the mask's gray level on the [-1, 1] scale
    fg = masks > 0
    metrics = {
        "iou": iou(samples >= level, fg),
        "iou_other_mask": iou(samples >= level, fg.roll(1, dims=0)),  # chance agreement: a different digit's mask
        "iou_real_at_64": iou(x >= 64 / 127.5 - 1, fg),  # a real digit against its own mask, at half the level
    }
    save_comparison(fg.float()[:16] * 2 - 1, samples[:16], out / "masks_above_samples.png")
    return {"score": metrics["iou"], "metrics": metrics, "sampling_seconds": seconds}


def _sample(pipe: Any, cond: dict[str, Any], args: argparse.Namespace) -> tuple[Any, float]:
    n = len(next(iter(cond.values())))
    start = time.perf_counter()
    samples = pipe.sample(n, cond=cond, steps=args.steps, sampler="dpmpp_2m", guidance=args.guidance,
                          seed=args.seed, progress=False)
    return samples, round(time.perf_counter() - start, 1)


def score_text(task_name: str, results: dict[str, Any]) -> str:
    """The headline score: a mean IoU as it is; a caption-class accuracy with its n (stored, else the number
    of held-out conditions sampled) and Wilson 95% interval."""
    from mmldm.evaluation.stats import format_share

    if task_name == "segmentation":
        return f"{results['score']:.4f}"
    n = results["metrics"].get("class_accuracy_n", results["settings"]["samples"])
    return format_share(results["score"], n)


def _metric_rows(metrics: dict[str, Any], samples: int) -> list[str]:
    """``| metric | value |`` rows of the float metrics; a class accuracy with its n (stored, else the
    ``samples`` drawn) and interval."""
    from mmldm.evaluation.stats import format_share

    rows = []
    for k, v in metrics.items():
        if k == "class_accuracy":
            rows.append(f"| {k} | {format_share(v, metrics.get('class_accuracy_n', samples))} |")
        elif isinstance(v, float):
            rows.append(f"| {k} | {v:.4g} |")
    return rows


def _classifier_line(clf: dict[str, Any]) -> str:
    """The judge's held-out accuracy, with n and interval when stored (earlier results: the share alone)."""
    from mmldm.evaluation.stats import format_share

    n = clf.get("val_accuracy_n")
    return (f"Classifier held-out accuracy on real images: {format_share(clf['val_accuracy'], n)}"
            + ("." if n else " (n not stored with these results)."))


def report(task_name: str, task: Task, results: dict[str, Any]) -> str:
    train = results["training"]
    s = results["settings"]
    verdict = "meets" if results["score"] >= task.target else "is below"
    name = "mean IoU" if task_name == "segmentation" else "caption-class accuracy (n, 95% CI)"
    lines = [f"# Conditioning on `{task.key}`: {task_name}", "",
             f"Budget: phase 1 {s['ae_minutes']} min + phase 2 {s['diffusion_minutes']} min; the training run took "
             f"{train['wall_seconds'] / 60:.1f} min wall clock ({train['metrics'].get('diffusion', {}).get('steps')} "
             "phase-2 steps).",
             f"{s['samples']} held-out conditions, DPM-Solver++(2M) {s['steps']} steps, guidance {s['guidance']}, "
             f"seed {s['seed']} ({results['sampling_seconds']} s).", "",
             f"**{name}: {score_text(task_name, results)}** ({verdict} the target {task.target:g}).", "",
             "| metric | value |", "| --- | --- |"]
    lines += _metric_rows(results["metrics"], s["samples"])
    if "classifier" in results:
        lines += ["", _classifier_line(results["classifier"])]
    lines += ["", f"Overrides: `{' '.join(s['overrides'])}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    task = TASKS[args.task]
    args.ae_minutes = args.ae_minutes or task.ae_minutes
    args.diffusion_minutes = args.diffusion_minutes or task.diffusion_minutes
    if args.quick:
        args.ae_minutes, args.diffusion_minutes, args.samples = 1.0, 1.0, 40
    import torch

    from mmldm import LatentDiffusion
    from mmldm.build import build_modality

    torch.manual_seed(args.seed)
    cfg = compose_config(args, task)
    out = args.out or REPO / "benchmarks" / "results" / f"conditioning_{args.task}"
    print(f"training both phases ({args.ae_minutes} + {args.diffusion_minutes} min) in {out / 'run'}", flush=True)
    training = train_model(cfg, out / "run")
    modality = build_modality(cfg.modality)
    pipe = LatentDiffusion.from_pretrained(out / "run" / "export")
    judged = (judge_segmentation if args.task == "segmentation" else judge_text)(pipe, modality, args, out)
    settings = {"task": args.task, "ae_minutes": args.ae_minutes, "diffusion_minutes": args.diffusion_minutes,
                "samples": args.samples, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                "overrides": [*task.overrides, *args.set]}
    results = {"settings": settings, "training": training, **judged}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    text = report(args.task, task, results)
    (out / "results.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
