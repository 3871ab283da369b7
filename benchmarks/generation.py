"""Class-conditional latent diffusion in a fixed CPU budget, judged by an independent classifier.

What it does, in one run of a task (``mnist`` or ``voxel``):

1. trains both phases with ``mmldm.training.run.train`` (the code behind
   ``mmldm train``) for ``--ae-minutes`` and ``--diffusion-minutes`` of wall
   clock (through ``phase1.max_minutes`` / ``diffusion.max_minutes``);
   ``mnist``: 9,000 train / 1,000 held-out digits padded to 32x32, a ``kl``
   autoencoder with f=4 and 4 latent channels, a class-conditional 2D U-Net
   on the cached, normalized 8x8x4 latents; ``voxel``: the modality's
   default preset (32^3 procedural shapes, f=4, 3D U-Net);
2. trains an independent classifier (:mod:`mmldm.evaluation.classifier`) on the
   real training data and reports its held-out accuracy;
3. loads the exported model with ``LatentDiffusion.from_pretrained`` and draws
   ``--per-class`` samples of each class from the same seed with every
   sampler setting of the task (for mnist: 25 DPM-Solver++(2M) steps and 250
   DDPM steps at guidance 3, and more), and reports the share the classifier
   labels with their conditioning class (with n and a Wilson 95% interval),
   the Frechet distance of the classifier's features against the held-out
   data, and the modality's own generation metrics (for voxels MMD, COV and
   1-NNA) at equal sizes over 5 random subsets, beside the same metrics of two
   disjoint held-out subsets (what a perfect generator scores).

Results go to ``benchmarks/results/generation_<task>/results.{json,md}`` with a
sample grid (one row per class) beside them.

Examples::

    python -m benchmarks.generation                      # mnist, 4.5 + 14.5 min: the acceptance run
    python -m benchmarks.generation --quick              # 1 + 1 min, a smoke run
    python -m benchmarks.generation --task voxel         # the voxel preset as `mmldm train modality=voxel` runs it
    python -m benchmarks.generation --set denoiser.model_channels=96
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

#: The MNIST run's config: mmldm's own groups, sized for this budget on a 2-core CPU.
MNIST = [
    "modality=image", "modality.source=mnist", "autoencoder=conv_image", "regularizer=kl", "trainer=cpu",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50", "data.batch_size=64",
    # the U-Net on 8x8x4 latents: levels 8, 4 (attention at 4 and in the middle)
    "denoiser.model_channels=64", "denoiser.channel_mult=[1,2]", "denoiser.num_res_blocks=2",
    "denoiser.attention_levels=[1]", "denoiser.head_dim=32",
    "diffusion.lr=5e-4", "diffusion.ema_decay=0.999", "sample.num_samples=20",
    # the time budgets decide (no step limit)
    "phase1.max_steps=1000000", "diffusion.max_steps=1000000",
]

#: The voxel run: the modality's default preset (32^3, f=4, 3D U-Net) on the CPU trainer.
VOXEL = ["modality=voxel", "trainer=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50",
         "sample.num_samples=16"]


#: Spoken digits (FSDD): train on four speakers, hold out "theo" and, as an in-distribution reference, the
#: clips 40-49 of every digit of the four training speakers (held out from the generator and the judge alike:
#: 400 clips); log-mel in the preset's 2D layout (latents [4, 16, 16]).
FSDD_REFERENCES = {"unseen speaker (theo)": "_theo_",
                   "training speakers' held-out clips (indices 40-49)": "^[0-9]+_(?!theo_)[a-z]+_4[0-9][.]wav$"}
FSDD = ["modality=audio", "preset=audio_fsdd", "modality.val_pattern='_theo_|_4[0-9][.]wav$'",
        "trainer=cpu", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=50", "data.batch_size=32", "diffusion.lr=5e-4", "sample.num_samples=20",
        "phase1.max_steps=1000000", "diffusion.max_steps=1000000"]


def _mel_shifted(train: Any, modality: Any) -> Any:
    """FSDD classifier data: each clip shifted by -3..3 mel bins (a vocal-tract-length warp), which
    lifts the held-out-speaker accuracy of the classifier from ~0.9 to ~0.96."""
    from mmldm_audio.augment import MelShiftDataset

    return MelShiftDataset(train, modality, range(-3, 4))


def _vocoding_ceiling(pipe: Any, x: Any) -> dict[str, Any]:
    """Held-out autoencoder reconstructions against Griffin-Lim on the real mels (the ceiling), and against the
    configured vocoder's when it is another (``<name>_ceiling``)."""
    from mmldm_audio.metrics import griffinlim_ceiling

    from mmldm_audio.config import GriffinLimConfig

    out = {"griffinlim_ceiling": griffinlim_ceiling(pipe.modality, x, autoencoder=pipe.autoencoder,
                                                    vocoder=pipe.modality.vocoder(GriffinLimConfig(name="griffinlim")))}
    name = pipe.modality.cfg.vocoder
    if name != "griffinlim":  # the configured vocoder (e.g. a trained vocos) beside Griffin-Lim
        out[f"{name}_ceiling"] = griffinlim_ceiling(pipe.modality, x, autoencoder=pipe.autoencoder)
    return out


@dataclass
class Task:
    """Config overrides, default budgets, samples per class and the sampler settings
    ``(name, sampler, steps, guidance)``; the first setting is the headline."""

    overrides: list[str]
    ae_minutes: float | None  # None: the preset's step counts decide
    diffusion_minutes: float | None
    per_class: int
    settings: list[tuple[str, str, int, float]]
    data: str | None = None  # sub-folder of --data that becomes modality.root
    classifier: dict[str, Any] = field(default_factory=dict)  # train_classifier options
    classifier_data: Callable[[Any, Any], Any] | None = None  # (train set, modality) -> classifier train set
    extra: Callable[[Any, Any], dict[str, Any]] | None = None  # (pipeline, held-out x) -> more measurements
    # name -> regex over the held-out items' file names: subsets judged on their own (the judge's accuracy on
    # them, the samples' Frechet distance to them beside a real-vs-real floor)
    references: dict[str, str] = field(default_factory=dict)


TASKS = {
    "mnist": Task(MNIST, 4.5, 14.5, 100, [
        ("dpmpp_2m-25-g3", "dpmpp_2m", 25, 3.0),
        ("ddpm-250-g3", "ddpm", 250, 3.0),
        ("dpmpp_2m-25-g1", "dpmpp_2m", 25, 1.0),
        ("ddim-25-g3", "ddim", 25, 3.0),
    ], data="mnist"),
    # the 3D judge: 4 levels, 20 epochs, random cube symmetries (the shapes are randomly rotated) held out
    # 98% of the real shapes (width 8 and 3 levels for 8 epochs: 79%)
    "voxel": Task(VOXEL, None, None, 20, [
        ("dpmpp_2m-25-g3", "dpmpp_2m", 25, 3.0),
        ("dpmpp_2m-25-g5", "dpmpp_2m", 25, 5.0),
        ("dpmpp_2m-25-g1", "dpmpp_2m", 25, 1.0),
    ], classifier={"width": 8, "levels": 4, "epochs": 20, "augment_symmetries": True}),
    "fsdd": Task(FSDD, 6.0, 10.0, 50, [("dpmpp_2m-25-g3", "dpmpp_2m", 25, 3.0)], data="fsdd",
                 classifier={"epochs": 4}, classifier_data=_mel_shifted, extra=_vocoding_ceiling,
                 references=FSDD_REFERENCES),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="mnist")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with the mnist/ and fsdd/ data")
    p.add_argument("--ae-minutes", type=float, help="phase-1 budget (default: mnist 4.5, fsdd 6; voxel: the preset's steps)")
    p.add_argument("--diffusion-minutes", type=float,
                   help="phase-2 budget (default: mnist 14.5, fsdd 10; voxel: the preset's steps)")
    p.add_argument("--per-class", type=int, help="samples per class and setting (default: mnist 100, fsdd 50, voxel 20)")
    p.add_argument("--classifier-epochs", type=int, help="default: the task's (8; fsdd 4, voxel 20)")
    p.add_argument("--quick", action="store_true", help="1 + 1 minutes, 10 samples per class, 2 classifier epochs")
    p.add_argument("--run-dir", type=Path, help="where the training run goes (default: <out>/run, replaced)")
    p.add_argument("--reuse", action="store_true",
                   help="judge the finished run in --run-dir (its export/ and training.json) instead of training")
    p.add_argument("--out", type=Path, help="report folder (default benchmarks/results/generation_<task>)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--settings", nargs="+", metavar="NAME", help="only these sampler settings (default: all of the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", help="a paragraph for the top of results.md, e.g. how a --reuse'd run was trained")
    return p.parse_args(argv)


def task_overrides(args: argparse.Namespace) -> list[str]:
    task = TASKS[args.task]
    return [*task.overrides, *([f"modality.root={args.data / task.data}"] if task.data else []), *args.set]


def compose_config(args: argparse.Namespace) -> Any:
    from mmldm.configuration import compose

    budgets = [f"{key}.max_minutes={value}" for key, value in
               (("phase1", args.ae_minutes), ("diffusion", args.diffusion_minutes)) if value]
    return compose([*task_overrides(args), *budgets, f"seed={args.seed}"])


def train_model(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Both phases, fresh, through :func:`mmldm.ablation.train_variant` (``mmldm train``'s code); its
    metrics.json plus the wall time."""
    from mmldm.ablation import train_variant

    trained = train_variant(cfg, run_dir)
    return {"wall_seconds": trained["train_seconds"], "metrics": trained["metrics"]}


def task_judge(task_name: str, seed: int, overrides: Sequence[str], modality: Any, train_set: Any, val_set: Any,
               saved: Path, reuse: bool, epochs: int | None = None, save: bool = True,
               variant: tuple[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The independent classifier of a task (its :attr:`Task.classifier` options, ``epochs`` overriding theirs) and
    its report: loaded from ``saved`` when ``reuse`` and the file's recipe (task, seed, ``overrides``, options,
    variant) matches, else trained on the task's classifier data and, when ``save``, written to ``saved`` (so that
    a ``--reuse`` run does not retrain it). ``variant = (name, wrap)``: the same recipe on other inputs, ``wrap``
    applied to the classifier data and the held-out set (e.g. the editing benchmark's partial inputs)."""
    import torch

    from mmldm.evaluation.classifier import FeatureClassifier, train_classifier

    task = TASKS[task_name]
    options = {"epochs": 8, **task.classifier, **({"epochs": epochs} if epochs else {})}
    recipe = json.dumps({"task": task_name, "seed": seed, "overrides": list(overrides), **options,
                         **({"variant": variant[0]} if variant else {})}, sort_keys=True)
    if reuse and saved.is_file() and torch.load(saved, weights_only=True)["recipe"] == recipe:
        state = torch.load(saved, weights_only=True)
        classifier = FeatureClassifier(**json.loads(state["config"]))
        classifier.load_state_dict(state["weights"])
        classifier.eval()
        return classifier, json.loads(state["report"])
    clf_train = task.classifier_data(train_set, modality) if task.classifier_data else train_set
    if variant:
        clf_train, val_set = variant[1](clf_train), variant[1](val_set)
    classifier, clf = train_classifier(clf_train, val_set, modality.dims, modality.channels, modality.num_classes,
                                       seed=seed, **options)
    if save:
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"recipe": recipe, "config": json.dumps(classifier.config), "weights": classifier.state_dict(),
                    "report": json.dumps(clf)}, saved)
    return classifier, clf


def judge(pipe: Any, classifier: Any, real: Any, per_class: int, seed: int, out: Path,
          settings: Sequence[tuple[str, str, int, float]], real_labels: Any = None,
          references: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting from the same seed (:func:`mmldm.evaluation.generation.judge_samples`); the headline
    setting's samples are written (a grid with one row per class). The real-vs-real null of the set
    metrics is measured once and shared (it depends on the real set, the size and the seed only)."""
    import torch

    from mmldm.evaluation.generation import judge_samples
    from mmldm.evaluation.stats import format_share
    from mmldm.preview import save_samples

    classes = pipe.modality.num_classes
    results: dict[str, Any] = {}
    null = None
    for name, sampler, steps, guidance in settings:
        m, samples, labels = judge_samples(pipe, classifier, real, per_class, sampler=sampler, steps=steps,
                                           guidance=guidance, seed=seed, real_labels=real_labels, null=null)
        results[name], null = m, m["modality_sets"]
        print(f"{name}: accuracy {format_share(m['class_accuracy'], m['class_accuracy_n'])}, "
              f"Frechet {m['frechet_distance']:.3f}, {m['sampling_seconds']:.0f} s", flush=True)
        if name == settings[0][0] and references:
            m["references"] = judge_references(pipe, classifier, real, real_labels, samples, references, seed)
        if name == settings[0][0]:  # the headline setting's files: a grid with one row per class
            idx = torch.cat([torch.arange(k * per_class, k * per_class + min(10, per_class)) for k in range(classes)])
            if pipe.modality.name == "image":  # one picture; other modalities write their own files (audio: WAVs)
                save_grid(samples[idx], out / f"samples_{name}.png", nrow=min(10, per_class))
            else:
                save_samples(pipe.modality, samples[idx], out / f"samples_{name}", cond={"class": labels[idx]})
    return results


def reference_subsets(val_set: Any, patterns: dict[str, str]) -> dict[str, Any]:
    """Indices of the held-out items whose file names match each pattern (``re.search``); a clear error when a
    pattern matches none (the names come from the modality's folder source, e.g. audio's ``names``)."""
    import re

    import torch

    names = getattr(getattr(val_set, "data", None), "names", None)
    if not names:
        raise ValueError("reference subsets need the held-out items' file names (a folder source)")
    out = {}
    for label, pattern in patterns.items():
        idx = [i for i, n in enumerate(names) if re.search(pattern, n)]
        if not idx:
            raise ValueError(f"reference {label!r}: pattern {pattern!r} matches none of the {len(names)} held-out "
                             f"files (e.g. {names[0]!r})")
        out[label] = torch.tensor(idx)
    return out


def judge_references(pipe: Any, classifier: Any, real: Any, real_labels: Any, samples: Any,
                     subsets: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per real subset: the judge's accuracy on it (n, Wilson interval), and the Frechet distance of the samples
    to it at equal sizes over 5 subsets beside two disjoint halves of the subset (the real-vs-real floor)."""
    from mmldm.evaluation.classifier import accuracy_stats, predict
    from mmldm.evaluation.frechet import frechet_distance
    from mmldm.evaluation.stats import equal_set_size, repeated_set_metrics

    final = pipe.modality.finalize
    logits, feats = predict(classifier, final(real))
    _, sample_feats = predict(classifier, final(samples))
    out = {}
    for label, idx in subsets.items():
        stats = accuracy_stats(logits[idx].argmax(-1) == real_labels[idx], "accuracy")
        size = equal_set_size(len(sample_feats), len(idx))
        sets = repeated_set_metrics(lambda a, b: {"frechet_distance": frechet_distance(a, b)}, feats[idx],
                                    sample_feats, size, seed=seed)
        out[label] = {**stats, "frechet": sets}
    return out


def reference_lines(results: dict[str, Any]) -> list[str]:
    """The judge on each reference subset, and the samples' Frechet distance to it beside the floor."""
    from mmldm.evaluation.stats import format_share

    lines = []
    for name, m in results["samples"].items():
        refs = m.get("references")
        if not refs:
            continue
        lines += ["", f"References ({name}): the judge on real held-out subsets, and the samples' Frechet distance "
                  "to each at equal sizes (mean +- sd over 5 random subsets) beside two disjoint real halves "
                  "of the same subset (the floor):", "",
                  "| real subset | judge accuracy | Frechet, samples | Frechet, real vs real | size |",
                  "| --- | --- | --- | --- | --- |"]
        for label, r in refs.items():
            f = r["frechet"]
            lines.append(f"| {label} | {format_share(r['accuracy'], r['accuracy_n'])} "
                         f"| {f['generated']['frechet_distance']['mean']:.1f} +- "
                         f"{f['generated']['frechet_distance']['sd']:.1f} "
                         f"| {f['null']['frechet_distance']['mean']:.1f} +- {f['null']['frechet_distance']['sd']:.1f} "
                         f"| {f['size']} |")
    return lines


def save_grid(images: Any, path: Path, nrow: int) -> None:
    """A PNG grid of ``[N, C, H, W]`` images in [-1, 1] (torchvision-free: a reshape)."""
    import numpy as np
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = np.zeros((c, rows * h, nrow * w), np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = x[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0)).save(path)


def load_null_reference() -> dict[str, Any] | None:
    """The results of ``python -m benchmarks.null_reference`` when they exist (for results without a null)."""
    path = REPO / "benchmarks" / "results" / "null_reference" / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _budget(minutes: float | None) -> str:
    return f"{minutes} min" if minutes else "the preset's steps"


def accuracy_n(results: dict[str, Any], m: dict[str, Any]) -> tuple[int | None, bool]:
    """n of a setting's class accuracy and whether it was stored: ``class_accuracy_n``, else (results
    written before it was) ``per_class`` x the classes in ``per_class_accuracy``; ``None`` when neither is."""
    if "class_accuracy_n" in m:
        return int(m["class_accuracy_n"]), True
    classes = len(m.get("per_class_accuracy") or {})
    return (results["settings"]["per_class"] * classes or None), False


def accuracy_lines(results: dict[str, Any]) -> list[str]:
    """The class accuracy of every setting with its n and Wilson 95% interval."""
    from mmldm.evaluation.stats import format_share

    counted = {name: accuracy_n(results, m) for name, m in results["samples"].items()}
    lines = ["", "Class accuracy with the samples judged and its Wilson 95% interval"
             + ("" if all(stored for _, stored in counted.values()) else
                " (n of results written before it was stored: samples per class x classes)") + ":", "",
             "| setting | class accuracy (n, 95% CI) |", "| --- | --- |"]
    lines += [f"| {name} | {format_share(m['class_accuracy'], counted[name][0])} |" for name, m in results["samples"].items()]
    return lines


def _fisher(results: dict[str, Any], a: str, b: str) -> str:
    """`` (Fisher's exact test p = 0.33)`` of two settings' class accuracies when both counts are known."""
    from scipy.stats import fisher_exact

    counts = []
    for name in (a, b):
        m = results["samples"][name]
        n = accuracy_n(results, m)[0]
        if not n:
            return ""
        k = round(m["class_accuracy"] * n)
        counts.append([k, n - k])
    return f" (Fisher's exact test p = {fisher_exact(counts).pvalue:.2g})"


def _stored_null(results: dict[str, Any], null_reference: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The sizes of results written before repeats (``"120x200"``: every sample against every held-out item)
    and the null that ``python -m benchmarks.null_reference`` measured at them, if it did."""
    sizes = f"{accuracy_n(results, next(iter(results['samples'].values())))[0]}x{results['settings']['real']}"
    task = (null_reference or {}).get("tasks", {}).get(results["settings"]["task"], {})
    return sizes, task.get("pairs", {}).get(sizes)


def set_metric_lines(results: dict[str, Any], null_reference: dict[str, Any] | None = None) -> list[str]:
    """The modality's set metrics (1-NNA, COV, ...) of every setting beside the real-vs-real null: the one
    measured with them, or for results written before repeats, ``null_reference`` (the results of
    ``python -m benchmarks.null_reference``) at the same sizes when it holds them."""
    from mmldm.evaluation.stats import format_mean_sd

    samples = results["samples"]
    keys = sorted({k for m in samples.values() for k in m.get("modality", {})})
    if not keys:
        return []

    def row(label: str, summaries: dict[str, Any]) -> str:
        return f"| {label} | " + " | ".join(format_mean_sd(summaries.get(k)) for k in keys) + " |"

    sets = {name: m["modality_sets"] for name, m in samples.items() if m.get("modality_sets")}
    rows = [row(name, s["generated"]) for name, s in sets.items()]
    if sets:
        first = next(iter(sets.values()))
        null = first["null"]
        caption = (f"mean ± sd over {first['repeats']} random subsets of {first['size']} generated vs {first['size']} "
                   f"held-out items (of {first['generated_pool']} and {first['real_pool']}); null: the same metric "
                   f"between two disjoint held-out subsets of {first['size']}, what a perfect generator scores")
    else:
        sizes, ref = _stored_null(results, null_reference)
        null = ref["metrics"] if ref else None
        caption = (f"one comparison of the {sizes.replace('x', ' generated vs ')} held-out items (results written "
                   "before repeats and a null were measured); "
                   + (f"null: two real sets of these sizes, {ref['repeats']} draws (`python -m benchmarks.null_reference`)"
                      if ref else "no real-vs-real null stored at these sizes (`python -m benchmarks.null_reference` "
                      "measures it for voxels)"))
    rows = ([row("null (real vs real)", null)] if null else []) + rows
    rows += [f"| {name} | " + " | ".join(f"{m['modality'][k]:.4g}" for k in keys) + " |"
             for name, m in samples.items() if name not in sets]
    return ["", f"Set metrics: {caption}.", "", "| | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 1) + "|",
            *rows]


def _classifier_line(results: dict[str, Any]) -> str:
    """The judge's held-out accuracy with its n (stored, else the held-out set it was tested on) and interval."""
    from mmldm.evaluation.stats import format_share

    clf = results["classifier"]
    n = clf.get("val_accuracy_n", results["settings"].get("real"))
    inferred = "; n: the held-out set's size" if "val_accuracy_n" not in clf else ""
    return (f"Classifier: held-out accuracy {format_share(clf['val_accuracy'], n)} "
            f"({clf['epochs']} epochs, {clf['seconds']} s{inferred}).")


def report(results: dict[str, Any], null_reference: dict[str, Any] | None = None) -> str:
    """``results.md``: the training budget, the judge, the table of settings, class accuracies with n and 95%
    intervals and set metrics beside their real-vs-real null (``null_reference``: see :func:`set_metric_lines`)."""
    train = results["training"]
    diff = train["metrics"].get("diffusion", {})
    ae = train["metrics"].get("autoencoder", {}).get("reconstruction", {})
    lines = [
        f"# Class-conditional latent diffusion: {results['settings']['task']}",
        "",
        *([results["settings"]["note"], ""] if results["settings"].get("note") else []),
        "The classifier judges samples in the form the modality delivers them (`Modality.finalize`; for voxels the "
        "0/1 occupancy at the level meshes are extracted at).",
        "",
        f"Budget: phase 1 {_budget(results['settings']['ae_minutes'])} + phase 2 "
        f"{_budget(results['settings']['diffusion_minutes'])}; "
        f"whole training run (both phases, latent statistics, cache, export) {train['wall_seconds'] / 60:.1f} min wall clock.",
        f"Phase 2: {diff.get('steps')} steps. "
        f"Autoencoder held-out reconstruction: {', '.join(f'{k} {v:.4g}' for k, v in ae.items())}.",
        _classifier_line(results),
        f"Samples: {results['settings']['per_class']} per class, Frechet distance against the "
        f"{results['settings']['real']} held-out images in the classifier's feature space.",
        "",
    ]
    extra = sorted({k for m in results["samples"].values() for k in m.get("modality", {})})
    lines += ["| setting | class accuracy | Frechet distance | " + " | ".join(extra) + (" | " if extra else "") + "sampling s |",
              "| --- " * (4 + len(extra)) + "|"]
    for name, m in results["samples"].items():
        own = "".join(f"{m['modality'][k]:.4g} | " for k in extra)
        lines.append(f"| {name} | {m['class_accuracy']:.4f} | {m['frechet_distance']:.3f} | {own}{m['sampling_seconds']} |")
    lines += [*accuracy_lines(results), *set_metric_lines(results, null_reference), *reference_lines(results)]
    s = results["samples"]
    if "dpmpp_2m-25-g3" in s and "ddpm-250-g3" in s:
        gap = 100 * (s["dpmpp_2m-25-g3"]["class_accuracy"] - s["ddpm-250-g3"]["class_accuracy"])
        lines += ["", f"DPM-Solver++(2M) 25 steps minus DDPM 250 steps: {gap:+.2f} accuracy points"
                  f"{_fisher(results, 'dpmpp_2m-25-g3', 'ddpm-250-g3')}."]
    for name, table in results.get("extra", {}).items():  # e.g. the Griffin-Lim ceiling of audio
        rows = list(table.items())
        keys = sorted({k for _, v in rows for k in v})
        lines += ["", f"{name}:", "", "| | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 1) + "|"]
        lines += [f"| {case} | " + " | ".join(f"{v.get(k, float('nan')):.4g}" for k in keys) + " |" for case, v in rows]
    lines += ["", f"Overrides: `{' '.join(results['settings']['overrides'])}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    task = TASKS[args.task]
    args.ae_minutes = args.ae_minutes or task.ae_minutes
    args.diffusion_minutes = args.diffusion_minutes or task.diffusion_minutes
    args.per_class = args.per_class or task.per_class
    if args.quick:
        args.ae_minutes, args.diffusion_minutes, args.per_class, args.classifier_epochs = 1.0, 1.0, 10, 2
    import torch

    from mmldm import LatentDiffusion
    from mmldm.build import build_modality

    torch.manual_seed(args.seed)
    cfg = compose_config(args)
    out = args.out or REPO / "benchmarks" / "results" / f"generation_{args.task}"
    run_dir = args.run_dir or out / "run"
    record = run_dir / "training.json"
    if args.reuse:
        if not (record.is_file() and (run_dir / "export").is_dir()):
            raise SystemExit(f"--reuse: {run_dir} has no finished run (expected {record.name} and export/ there)")
        training = json.loads(record.read_text())
        print(f"judging the run in {run_dir} (trained in {training['wall_seconds'] / 60:.1f} min)", flush=True)
    else:
        print(f"training both phases (budgets {args.ae_minutes} + {args.diffusion_minutes} min) in {run_dir}",
              flush=True)
        training = train_model(cfg, run_dir)
        record.write_text(json.dumps(training, indent=2, default=float))
        print(f"training took {training['wall_seconds'] / 60:.1f} min", flush=True)

    modality = build_modality(cfg.modality)
    train_set, val_set = modality.dataset("train"), modality.dataset("val")
    classifier, clf = task_judge(args.task, args.seed, task_overrides(args), modality, train_set, val_set,
                                 out / "classifier.pt", args.reuse, args.classifier_epochs)
    print(f"classifier held-out accuracy {clf['val_accuracy']:.4f}", flush=True)
    real = torch.stack([val_set[i]["x"] for i in range(len(val_set))])
    real_labels = torch.tensor([val_set[i]["cond"]["class"] for i in range(len(val_set))])

    pipe = LatentDiffusion.from_pretrained(run_dir / "export")
    chosen = [st for st in task.settings if not args.settings or st[0] in args.settings]
    if not chosen:
        raise SystemExit(f"--settings {args.settings}: none of the task's settings {[st[0] for st in task.settings]}")
    subsets = reference_subsets(val_set, task.references) if task.references else None
    samples = judge(pipe, classifier, real, args.per_class, args.seed, out, chosen, real_labels, subsets)
    settings = {"task": args.task, "ae_minutes": args.ae_minutes, "diffusion_minutes": args.diffusion_minutes, "per_class": args.per_class,
                "real": len(real), "seed": args.seed, "note": args.note,
                "overrides": [o for o in task_overrides(args) if not o.startswith("modality.root=")]}
    results = {"settings": settings, "training": training, "classifier": clf, "samples": samples}
    if task.extra:
        results["extra"] = task.extra(pipe, real)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    text = report(results, load_null_reference())
    (out / "results.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
