"""Text conditioning judged on held-out attribute combinations: does the model compose words it knows?

A text-conditioned model sampled on its training captions may only recall them. Here chosen pairs of
words never meet in training (``modality.holdout``): the training split lacks every item with such a
pair, the held-out split consists of exactly those items, so each held-out caption is a new sentence
made of words the model was trained on. Tasks (each trains both phases with ``conditioner=text`` through
``mmldm.training.run.train``, the code behind ``mmldm train``, for fixed wall-clock budgets):

* ``scenes``: 10,000 procedural scenes ("a small red star on the left"), the run of
  ``benchmarks.conditioning --task text_shapes``, with 4 shape:colour and 4 shape:place pairs held out
  (:data:`SCENE_HOLDOUT`; ~2,200 held-out scenes). Judges (:mod:`mmldm_image.metrics`): the shape by the
  independent classifier trained on 10,000 fresh scenes of another seed; colour, size and place from the
  shape segmented off its background (nearest palette colour, nearest expected area, third of the centroid).
* ``fsdd``: spoken digits captioned from their file names ("seven, spoken by george"), with 10
  (digit, speaker) pairs held out, each digit once and each speaker twice (:data:`FSDD_HOLDOUT`; 500
  held-out clips). Judges (:mod:`mmldm_audio.metrics`): the digit by the mel-shift classifier of
  ``benchmarks.generation``, the speaker by a shrinkage-LDA over each clip's long-term spectrum; both learn
  from the training clips and the even takes of the held-out clips (:func:`fsdd_judge_split`) and are measured
  on the odd takes, so that they have heard every held-out pair.

Samples are drawn for held-out captions and, as a reference, for training captions; the judges score each
attribute and all attributes at once, with n and a Wilson 95% interval, beside the same judges on the real
held-out items (how far the judges can be trusted). Results: ``benchmarks/results/text_composition_<task>/
results.{json,md}`` with sample files and their captions.

Examples::

    python -m benchmarks.text_composition --task scenes          # 3 + 10 min
    python -m benchmarks.text_composition --task fsdd            # 6 + 10 min
    python -m benchmarks.text_composition --task scenes --quick  # a smoke run of well under a minute of training
    python -m benchmarks.text_composition --task scenes --study  # what each ingredient buys: 3 min once, then 6 x 10 + 20 min
    python -m benchmarks.text_composition --task fsdd --study --variants default vector \
        --autoencoder benchmarks/results/text_composition_fsdd/run/autoencoder/export --reuse-judges

``--study`` trains phase 1 once (or takes ``--autoencoder``, an exported autoencoder of the same task) and,
on that one autoencoder, phase 2 once per ingredient variant (:data:`INGREDIENTS`: the trainable text encoder
or the frozen pretrained MiniLM, token cross-attention, a pooled vector or both, caption dropout, twice the
phase-2 compute; ``--variants`` picks some by name), samples the default run at several guidance weights
(:data:`GUIDANCE_SWEEP`), and judges every run with the same judges: ``text_composition_<task>_study/``.
``--reuse-judges`` loads the digit judge saved by an earlier run of the same recipe (FSDD; the scene judges
are read by rule or trained in a minute) instead of training it again.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks import save_results
from benchmarks.conditioning import TEXT_SHAPES
from benchmarks.generation import FSDD, SHARED_DATA, save_grid, train_model

REPO = Path(__file__).resolve().parents[1]

#: Held-out scene pairs: every shape once, four with a colour and four with a place.
SCENE_HOLDOUT = ["star:red", "circle:blue", "square:yellow", "triangle:green",
                 "ring:left", "hexagon:right", "cross:middle", "diamond:left"]
#: Held-out FSDD pairs: every digit once, every speaker twice.
FSDD_HOLDOUT = ["0:george", "1:jackson", "2:lucas", "3:nicolas", "4:theo",
                "5:george", "6:jackson", "7:lucas", "8:nicolas", "9:theo"]

#: A judge: samples or real items ``[B, C, *s]`` -> one ``{attribute: word}`` per item.
Judge = Callable[[Any], list[dict[str, Any]]]


def _holdout(pairs: Sequence[str]) -> str:
    return f"modality.holdout=[{','.join(pairs)}]"


def scene_judges(args: argparse.Namespace, modality: Any, train: Any, val: Any) -> tuple[Judge, dict[str, Any]]:
    """The shape classifier trained on fresh scenes of seed ``seed + 1`` (every combination, none of the
    data's scenes), with colour, size and place read off the segmented shape."""
    from mmldm_image.metrics import judge_scenes, train_shape_judge

    classifier, report = train_shape_judge(modality.cfg.size, num_samples=args.judge_items, seed=args.seed + 1,
                                           epochs=args.judge_epochs)
    return (lambda x: judge_scenes(classifier, x)), {"shape": report}


def fsdd_judges(args: argparse.Namespace, modality: Any, train: Any, val: Any) -> tuple[Judge, dict[str, Any]]:
    """The digit classifier (mel shifts -3..3; in ``--quick`` none, on ``--judge-items`` clips) and the speaker
    LDA, both on the clips ``train`` (the judges' learning clips: :func:`fsdd_judge_split`)."""
    from mmldm_audio.metrics import clip_names, judge_clips, train_digit_judge, train_speaker_judge

    from torch.utils.data import Subset

    learn, shifts = train, range(-3, 4)
    if args.quick:  # no shifts, and --judge-items of the training clips
        learn, shifts = Subset(train, pick(len(train), args.judge_items, args.seed)), [0]
    recipe = {"task": args.task, "seed": args.seed, "epochs": args.judge_epochs, "shifts": list(shifts),
              "learn": clip_names(learn), "measured": clip_names(val), "quick": args.quick}
    digit, digit_report = saved_judge(args, "digit", recipe, lambda: train_digit_judge(
        modality, learn, val, epochs=args.judge_epochs, seed=args.seed, shifts=shifts))
    speaker, speaker_report = train_speaker_judge(modality, train, val)
    return (lambda x: judge_clips(digit, speaker, modality, x)), {"digit": digit_report, "speaker": speaker_report}


def saved_judge(args: argparse.Namespace, name: str, recipe: dict[str, Any],
                train: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
    """A classifier judge (:class:`~mmldm.evaluation.classifier.FeatureClassifier`) and its report: with
    ``--reuse-judges``, loaded from ``<judge dir>/judge_<name>.pt`` when the file's recipe (task, seed, epochs,
    the names of the items it learns from and is measured on, ...) is ``recipe``; else ``train()``, saved there."""
    import json

    import torch

    from mmldm.evaluation.classifier import FeatureClassifier

    path = judge_dir(args) / f"judge_{name}{'_quick' if args.quick else ''}.pt"
    key = json.dumps(recipe, sort_keys=True)
    if args.reuse_judges and path.is_file():
        state = torch.load(path, weights_only=True)
        if state["recipe"] == key:
            classifier = FeatureClassifier(**json.loads(state["config"]))
            classifier.load_state_dict(state["weights"])
            print(f"{name} judge loaded from {path} (same recipe)", flush=True)
            return classifier.eval(), json.loads(state["report"])
        print(f"{name} judge in {path} has another recipe: training it again", flush=True)
    classifier, report = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"recipe": key, "config": json.dumps(classifier.config), "weights": classifier.state_dict(),
                "report": json.dumps(report)}, path)
    return classifier, report


def judge_dir(args: argparse.Namespace) -> Path:
    """Where a task's judges are saved: the task's report folder, which ``--study`` shares (a ``--quick`` run
    with ``--out`` keeps its own)."""
    if args.quick and args.out:
        return args.out
    return REPO / "benchmarks" / "results" / f"text_composition_{args.task}"


def fsdd_judge_split(val: Any) -> tuple[list[int], list[int]]:
    """Which held-out clips the judges also learn from (even take numbers, ``7_theo_12.wav``) and which they are
    measured on (odd): a digit judge that never heard a held-out (digit, speaker) pair reads those real clips
    far worse than the others (67.8% where trained on the training split alone), so it could not tell a
    model's held-out samples right from wrong. The model never sees either half."""
    from mmldm_audio.metrics import clip_names
    from mmldm_audio.sources import recording_index

    takes = [recording_index(n) for n in clip_names(val)]
    return [i for i, t in enumerate(takes) if t % 2 == 0], [i for i, t in enumerate(takes) if t % 2 == 1]


def scene_attributes(dataset: Any) -> list[dict[str, str]]:
    return list(dataset.attributes)


def clip_attributes(dataset: Any) -> list[dict[str, str]]:
    from mmldm_audio.metrics import clip_attributes as attributes

    return attributes(dataset)


@dataclass
class Task:
    """Config overrides, default budgets, the attributes judged and how (judges, each item's true words)."""

    overrides: list[str]
    holdout: list[str]
    ae_minutes: float
    diffusion_minutes: float
    attributes: tuple[str, ...]
    judges: Callable[[argparse.Namespace, Any, Any, Any], tuple[Judge, dict[str, Any]]]
    expected: Callable[[Any], list[dict[str, str]]]
    judge_epochs: int
    data: str | None = None  # sub-folder of --data that becomes modality.root
    #: held-out items -> (those the judges also learn from, those they are measured on); None: the judges learn
    #: from other data (the training split or fresh items) and are measured on every held-out item
    judge_split: Callable[[Any], tuple[list[int], list[int]]] | None = None
    quick: list[str] = field(default_factory=list)  # extra overrides of --quick


_FSDD = [o for o in FSDD if not o.startswith("modality.val_pattern")]
TASKS = {
    "scenes": Task([*TEXT_SHAPES, _holdout(SCENE_HOLDOUT)], SCENE_HOLDOUT, 3.0, 10.0,
                   ("shape", "colour", "size", "place"), scene_judges, scene_attributes, judge_epochs=8,
                   quick=["modality.num_samples=1000"]),
    "fsdd": Task([*_FSDD, "modality.val_pattern=null", "modality.caption=digit_speaker", "conditioner=text",
                  _holdout(FSDD_HOLDOUT)], FSDD_HOLDOUT, 6.0, 10.0, ("digit", "speaker"), fsdd_judges,
                 clip_attributes, judge_epochs=4, data="fsdd", judge_split=fsdd_judge_split),
}
#: ``--quick``: minutes per phase, held-out and training captions sampled, sampler steps, judge epochs and scenes.
QUICK = {"minutes": 0.1, "samples": 8, "seen": 4, "steps": 5, "judge_epochs": 1, "judge_items": 600}


@dataclass(frozen=True)
class Ingredient:
    """One variant of ``--study``: overrides on top of the task's (a key given here replaces the task's), a
    factor on the phase-2 budget, and the guidance weights its samples are drawn at (``None``: ``--guidance``)."""

    overrides: tuple[str, ...] = ()
    compute: float = 1.0
    guidance: tuple[float, ...] | None = None


#: Guidance weights the default variant is sampled at in ``--study``.
GUIDANCE_SWEEP = (1.0, 2.0, 3.0, 5.0)
#: ``--study``'s variants. The conditioner's own dropout replaces ``diffusion.cond_dropout`` (0.1); without
#: dropout the null caption is never trained, so that run is sampled without guidance only.
INGREDIENTS = {
    "trainable encoder, cross-attention (default)": Ingredient(guidance=GUIDANCE_SWEEP),
    "trainable encoder, pooled vector": Ingredient(("conditioner.outputs=[vector]",)),
    "trainable encoder, cross-attention and vector": Ingredient(("conditioner.outputs=[crossattn,vector]",)),
    "frozen MiniLM, cross-attention": Ingredient(("conditioner=text_pretrained",)),
    "no caption dropout": Ingredient(("conditioner.dropout=0",), guidance=(1.0,)),
    "caption dropout 0.3": Ingredient(("conditioner.dropout=0.3",)),
    "twice the phase-2 compute": Ingredient(compute=2.0),
    # the process that reached MNIST's 97% soonest of the four (`mmldm ablate process`, docs/ablations.md)
    "rectified flow, cross-attention": Ingredient(("process=flow",)),
    "rectified flow, cross-attention and vector": Ingredient(("process=flow", "conditioner.outputs=[crossattn,vector]")),
    # each comma-separated part of a training caption left out with probability 0.3 (conditioner.tag_dropout):
    # "seven, spoken by george" also trains as "seven" and as "spoken by george" (captions without commas,
    # as the scenes', are unchanged)
    "rectified flow, cross-attention and vector, tag dropout 0.3": Ingredient(
        ("process=flow", "conditioner.outputs=[crossattn,vector]", "conditioner.tag_dropout=0.3")),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.text_composition", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="scenes")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with fsdd/ (task fsdd)")
    p.add_argument("--ae-minutes", type=float, help="phase-1 budget (default: scenes 3, fsdd 6)")
    p.add_argument("--diffusion-minutes", type=float, help="phase-2 budget (default: 10)")
    p.add_argument("--samples", type=int, default=400, help="held-out captions sampled (default 400)")
    p.add_argument("--seen", type=int, default=200, help="training captions sampled as a reference (default 200)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++(2M) steps")
    p.add_argument("--judge-epochs", type=int, help="epochs of the classifier judge (default: scenes 8, fsdd 4)")
    p.add_argument("--judge-items", type=int, default=10000,
                   help="fresh scenes the shape judge learns from (--quick: also the clips of the digit judge)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 6 + 6 s of training, 8 + 4 captions, 5 steps, a 1-epoch judge")
    p.add_argument("--out", type=Path, help="report folder (default benchmarks/results/text_composition_<task>)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--study", action="store_true",
                   help="one phase 1, then one phase 2 per ingredient variant (INGREDIENTS), compared on the same "
                        "judges")
    p.add_argument("--variants", nargs="+", metavar="NAME",
                   help=f"--study: only these variants (by slug: {', '.join(_slug(n) for n in INGREDIENTS)}; "
                        "'default' is the first)")
    p.add_argument("--autoencoder", type=Path,
                   help="--study: an exported autoencoder of this task (e.g. <run>/autoencoder/export) shared by "
                        "every variant, instead of training phase 1")
    p.add_argument("--guidances", type=float, nargs="+", metavar="W",
                   help="--study: sample every variant at these guidance weights (default: the default variant at "
                        f"{', '.join(f'{w:g}' for w in GUIDANCE_SWEEP)}, the others at --guidance)")
    p.add_argument("--compose", action="store_true",
                   help="also sample with compositional guidance over each caption's comma-separated parts "
                        "(compose=['text'], Composable Diffusion): --study adds a row per variant and weight, a "
                        "single run judges only the composed samples")
    p.add_argument("--reuse-judges", action="store_true",
                   help="load the digit judge saved by an earlier run with the same recipe instead of training it")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    task = TASKS[args.task]
    args.ae_minutes = args.ae_minutes or task.ae_minutes
    args.diffusion_minutes = args.diffusion_minutes or task.diffusion_minutes
    args.judge_epochs = args.judge_epochs or task.judge_epochs
    if args.quick:
        args.ae_minutes = args.diffusion_minutes = QUICK["minutes"]
        args.samples, args.seen, args.steps = QUICK["samples"], QUICK["seen"], QUICK["steps"]
        args.judge_epochs, args.judge_items = QUICK["judge_epochs"], QUICK["judge_items"]
    return args


def task_overrides(args: argparse.Namespace) -> list[str]:
    """The task's overrides (``--quick``'s extras, ``--set``) without the time budgets and the seed."""
    task = TASKS[args.task]
    root = [f"modality.root={args.data / task.data}"] if task.data else []
    quick = [*task.quick, "sample.num_samples=1"] if args.quick else []
    return merge_overrides([*task.overrides, *root, *quick], args.set)


def merge_overrides(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``base`` then ``extra``, an override of ``extra`` replacing ``base``'s of the same key (Hydra refuses a
    key given twice): ``conditioner=text_pretrained`` replaces the task's ``conditioner=text``."""
    keys = {o.split("=", 1)[0] for o in extra}
    return [*(o for o in base if o.split("=", 1)[0] not in keys), *extra]


def compose_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    from mmldm.configuration import compose

    return compose([*task_overrides(args), f"phase1.max_minutes={args.ae_minutes}",
                    f"diffusion.max_minutes={args.diffusion_minutes}", f"seed={args.seed}", *extra])


def pick(n_items: int, n: int, seed: int) -> list[int]:
    """``min(n, n_items)`` distinct indices drawn with ``seed``, sorted (spread over every held-out pair,
    where the first ``n`` of a folder sorted by name would cover a few digits only)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_items, generator=generator)[:n].tolist())


def score(predicted: Sequence[dict[str, Any]], expected: Sequence[dict[str, Any]],
          attributes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per attribute and ``"all"`` (every attribute right): ``{"accuracy", "accuracy_n", "accuracy_ci"}``
    (:func:`mmldm.evaluation.classifier.accuracy_stats`: share, n, Wilson 95% interval)."""
    import torch

    from mmldm.evaluation.classifier import accuracy_stats

    hits = {a: [p[a] == e[a] for p, e in zip(predicted, expected)] for a in attributes}
    hits["all"] = [all(row) for row in zip(*hits.values())]
    return {a: accuracy_stats(torch.tensor(h, dtype=torch.bool), "accuracy") for a, h in hits.items()}


def pair_of(attributes: dict[str, str], holdout: Sequence[str]) -> str | None:
    """The first held-out pair ``a:b`` both of whose words are among ``attributes``' values."""
    words = set(attributes.values())
    return next((pair for pair in holdout if set(pair.split(":")) <= words), None)


def per_pair(predicted: Sequence[dict[str, Any]], expected: Sequence[dict[str, Any]], attributes: Sequence[str],
             holdout: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`score`'s ``"all"`` of the held-out samples, per held-out pair."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(expected):
        groups.setdefault(pair_of(e, holdout) or "?", []).append(i)
    return {pair: score([predicted[i] for i in idx], [expected[i] for i in idx], attributes)["all"]
            for pair, idx in sorted(groups.items())}


def sample_and_judge(pipe: Any, judge: Judge, dataset: Any, idx: Sequence[int], expected: Sequence[dict[str, str]],
                     attributes: Sequence[str], args: argparse.Namespace) -> tuple[dict[str, Any], Any, list[str]]:
    """Samples for the captions of ``dataset``'s items ``idx``, their judged attributes scored against the
    items' own; returns the scores (with the predictions and the sampling time), the samples and the captions."""
    import torch

    captions = [dataset[i]["cond"]["text"] for i in idx]
    start = time.perf_counter()
    samples = pipe.sample(len(idx), cond={"text": captions}, steps=args.steps, sampler="dpmpp_2m",
                          guidance=args.guidance, seed=args.seed, progress=False,
                          compose=["text"] if getattr(args, "compose", False) else [])
    seconds = round(time.perf_counter() - start, 1)
    predicted = judge(pipe.modality.finalize(samples.float().cpu()))
    wanted = [expected[i] for i in idx]
    scores = score(predicted, wanted, attributes)
    return ({"scores": scores, "predicted": predicted, "expected": wanted, "captions": captions,
             "sampling_seconds": seconds}, torch.as_tensor(samples), captions)


def judge_real(judge: Judge, dataset: Any, expected: Sequence[dict[str, str]], attributes: Sequence[str],
               modality: Any, batch: int = 256) -> dict[str, Any]:
    """The judges on every real item of ``dataset`` (in batches): how far they can be trusted."""
    import torch

    predicted: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch):
        x = torch.stack([dataset[i]["x"] for i in range(start, min(start + batch, len(dataset)))])
        predicted += judge(modality.finalize(x))
    return score(predicted, expected, attributes)


def save_samples(modality: Any, samples: Any, captions: list[str], out: Path) -> None:
    """Up to 32 samples as files (a PNG grid for scenes; WAVs and spectrograms for audio) and their captions."""
    out.mkdir(parents=True, exist_ok=True)
    if modality.name == "image":
        save_grid(samples[:32], out / "grid.png", nrow=8)
    else:
        modality.save(samples[:16], out, prefix="sample")
    (out / "captions.txt").write_text("\n".join(captions[:32]) + "\n")


def _row(label: str, scores: dict[str, Any], keys: Sequence[str]) -> str:
    from mmldm.evaluation.stats import format_share

    cells = [format_share(scores[k]["accuracy"], scores[k]["accuracy_n"]) for k in keys]
    return f"| {label} | " + " | ".join(cells) + " |"


def report(results: dict[str, Any]) -> str:
    """``results.md``: the held-out pairs, budgets, judges, and per attribute (and all at once) the samples of
    held-out and of training captions beside the judges on the real held-out items."""
    from mmldm.evaluation.stats import format_share

    s, train = results["settings"], results["training"]
    keys = [*s["attributes"], "all"]
    lines = [f"# Text conditioning on held-out combinations: {s['task']}", "",
             f"Held out of training (the held-out split is exactly the items with one of these pairs; each word "
             f"stays in training with other partners): {', '.join(f'`{p}`' for p in s['holdout'])}.", "",
             f"Budget: phase 1 {s['ae_minutes']} min + phase 2 {s['diffusion_minutes']} min; the training run took "
             f"{train['wall_seconds'] / 60:.1f} min wall clock ({train['metrics'].get('diffusion', {}).get('steps')} "
             f"phase-2 steps). {s['train_items']} training and {s['held_out_items']} held-out items.",
             f"Sampling: DPM-Solver++(2M) {s['steps']} steps, guidance {s['guidance']}, seed {s['seed']}.", "",
             "Judges (independent of the model; their own held-out accuracy):"]
    split = results["judges"].get("split")
    for name, r in results["judges"].items():
        if name == "split":
            continue
        lines.append(f"- {name}: {format_share(r.get('val_accuracy'), r.get('val_accuracy_n'))}"
                     + (f" ({r['epochs']} epochs, {r['seconds']} s)" if "epochs" in r else f" ({r.get('seconds')} s)"))
    lines += ["", "Share of items whose judged attribute is the captioned one (n, Wilson 95% interval); `all`: "
              "every attribute right.", "",
              "| items | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 1) + "|",
              _row("samples, held-out captions", results["samples"]["held_out"]["scores"], keys),
              _row("samples, training captions", results["samples"]["seen"]["scores"], keys),
              *([_row("autoencoder reconstructions of the held-out items sampled (what phase 1 allows)",
                      results["reconstructed"], keys)] if "reconstructed" in results else []),
              _row("real held-out items (the judges)" if not split else
                   "real held-out items the judges did not learn from (the judges)", results["real"], keys), "",
              "Samples of held-out captions, every attribute right, per held-out pair:", "",
              "| pair | all attributes right |", "| --- | --- |"]
    lines += [f"| `{pair}` | {format_share(r['accuracy'], r['accuracy_n'])} |"
              for pair, r in results["samples"]["held_out"]["per_pair"].items()]
    lines += ["", f"Overrides: `{' '.join(s['overrides'])}`", ""]
    return "\n".join(lines)


def judged_data(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """The modality of ``cfg``, its splits, the judges trained for them and their accuracy on the real held-out
    items: ``{"modality", "train", "val", "judge", "judges", "real"}``."""
    from mmldm.build import build_modality

    task = TASKS[args.task]
    modality = build_modality(cfg.modality)
    train, val = modality.dataset("train"), modality.dataset("val")
    learn, measured = train, val
    if task.judge_split is not None:
        from torch.utils.data import ConcatDataset, Subset

        taught, kept = task.judge_split(val)
        learn, measured = ConcatDataset([train, Subset(val, taught)]), Subset(val, kept)
    judge, judges = task.judges(args, modality, learn, measured)
    real = judge_real(judge, measured, task.expected(measured), task.attributes, modality)
    if task.judge_split is not None:
        judges["split"] = {"learn_held_out": len(taught), "measured_held_out": len(kept)}
    print(f"judges on the {len(measured)} real held-out items they did not learn from: "
          + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in real.items()), flush=True)
    return {"modality": modality, "train": train, "val": val, "judge": judge, "judges": judges, "real": real}


def judge_run(args: argparse.Namespace, export: Path,
              data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Any, list[str]]:
    """Samples of the exported model for ``--samples`` held-out and ``--seen`` training captions at
    ``args.guidance``, judged: the held-out scores (with a breakdown per held-out pair), the training-caption
    scores, the held-out samples and their captions."""
    from mmldm import LatentDiffusion

    task = TASKS[args.task]
    pipe = LatentDiffusion.from_pretrained(export)
    train, val, judge = data["train"], data["val"], data["judge"]
    held, samples, captions = sample_and_judge(pipe, judge, val, pick(len(val), args.samples, args.seed),
                                               task.expected(val), task.attributes, args)
    held["per_pair"] = per_pair(held["predicted"], held["expected"], task.attributes, task.holdout)
    seen, _, _ = sample_and_judge(pipe, judge, train, pick(len(train), args.seen, args.seed), task.expected(train),
                                  task.attributes, args)
    return held, seen, samples, captions


def judge_reconstructions(args: argparse.Namespace, export: Path, data: dict[str, Any],
                          batch: int = 200) -> dict[str, Any]:
    """The judges on the autoencoder's reconstructions (posterior mode, decoded) of the held-out items whose
    captions are sampled: what phase 1 lets the samples reach, whatever phase 2 learns."""
    import torch

    from mmldm import LatentDiffusion

    task, val = TASKS[args.task], data["val"]
    pipe = LatentDiffusion.from_pretrained(export)
    idx = pick(len(val), args.samples, args.seed)
    predicted: list[dict[str, Any]] = []
    for start in range(0, len(idx), batch):
        x = torch.stack([val[i]["x"] for i in idx[start:start + batch]])
        predicted += data["judge"](pipe.modality.finalize(pipe.decode(pipe.encode(x)).float().cpu()))
    expected = task.expected(val)
    return score(predicted, [expected[i] for i in idx], task.attributes)


def _settings(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    task = TASKS[args.task]
    return {"task": args.task, "holdout": task.holdout, "attributes": list(task.attributes),
            "ae_minutes": args.ae_minutes, "diffusion_minutes": args.diffusion_minutes,
            "train_items": len(data["train"]), "held_out_items": len(data["val"]),
            "samples": min(args.samples, len(data["val"])), "seen": min(args.seen, len(data["train"])),
            "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
            "quick": args.quick, "set": list(args.set), "compose": bool(getattr(args, "compose", False)),
            "overrides": [o for o in task_overrides(args) if not o.startswith("modality.root=")]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.study:
        return study(args)
    import torch

    torch.manual_seed(args.seed)
    cfg = compose_config(args)
    out = args.out or REPO / "benchmarks" / "results" / f"text_composition_{args.task}"
    print(f"training both phases ({args.ae_minutes} + {args.diffusion_minutes} min) in {out / 'run'}", flush=True)
    training = train_model(cfg, out / "run")
    data = judged_data(args, cfg)
    held, seen, samples, captions = judge_run(args, out / "run" / "export", data)
    save_samples(data["modality"], samples, captions, out / "samples")
    results = {"settings": _settings(args, data), "training": training, "judges": data["judges"],
               "real": data["real"], "reconstructed": judge_reconstructions(args, out / "run" / "export", data),
               "samples": {"held_out": held, "seen": seen}}
    save_results(out, results, report(results))
    return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def study_variants(names: Sequence[str] | None) -> dict[str, Ingredient]:
    """The :data:`INGREDIENTS` named by ``names`` (slugs, or ``default`` for the first), all when None."""
    if not names:
        return dict(INGREDIENTS)
    slugs = {_slug(n): n for n in INGREDIENTS}
    slugs["default"] = next(iter(INGREDIENTS))
    unknown = [n for n in names if n not in slugs]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choices: {sorted(slugs)}")
    return {slugs[n]: INGREDIENTS[slugs[n]] for n in names}


def check_autoencoder(export: Path, cfg: Any) -> None:
    """Refuse an ``--autoencoder`` whose run had other data settings than the task's: phase 2 reads its items
    through the exported modality, so another holdout would train on the pairs the study calls held out."""
    from omegaconf import OmegaConf

    if not (export / "config.yaml").is_file():
        raise SystemExit(f"--autoencoder {export}: no config.yaml there; give the exported autoencoder folder of "
                         "a run of this task (<run>/autoencoder/export)")
    saved = OmegaConf.to_container(OmegaConf.load(export / "config.yaml").get("modality", {}), resolve=True)
    wanted = OmegaConf.to_container(cfg.modality, resolve=True)
    differ = sorted(k for k in {*saved, *wanted} - {"root"} if saved.get(k) != wanted.get(k))
    if differ:
        raise SystemExit(f"--autoencoder {export}: its modality differs from the task's in "
                         + ", ".join(f"{k} ({saved.get(k)!r} vs {wanted.get(k)!r})" for k in differ)
                         + "; train phase 1 with the task's settings (leave --autoencoder out)")


def study(args: argparse.Namespace) -> dict[str, Any]:
    """``--study``: phase 1 once (or ``--autoencoder``), then phase 2 per :data:`INGREDIENTS` variant on that
    autoencoder, the same split, budget and judges; each run's held-out scores per guidance weight, with its
    phase-2 steps and wall time. Sharing the autoencoder keeps phase 1's luck out of the comparison."""
    import copy

    import torch

    torch.manual_seed(args.seed)
    variants = study_variants(args.variants)
    out = args.out or REPO / "benchmarks" / "results" / f"text_composition_{args.task}_study"
    data = judged_data(args, compose_config(args))
    if args.autoencoder is not None:
        export = args.autoencoder.resolve()
        check_autoencoder(export, compose_config(args))
        phase1 = {"autoencoder": str(args.autoencoder), "wall_seconds": None}
    else:
        print(f"phase 1 once ({args.ae_minutes} min) in {out / 'autoencoder'}", flush=True)
        trained = train_model(compose_config(args, ["stage=autoencoder"]), out / "autoencoder")
        export = (out / "autoencoder" / "autoencoder" / "export").resolve()
        phase1 = {"autoencoder": "trained once for the study", "wall_seconds": trained["wall_seconds"],
                  "metrics": trained["metrics"].get("autoencoder", {})}
    shared = ["stage=diffusion", f"phase1.checkpoint={export}"]
    rows: list[dict[str, Any]] = []
    for name, ingredient in variants.items():
        variant = copy.copy(args)
        variant.set = [*args.set, *ingredient.overrides]
        variant.diffusion_minutes = args.diffusion_minutes * ingredient.compute
        run = out / _slug(name)
        print(f"{name}: phase 2 ({variant.diffusion_minutes} min) in {run}", flush=True)
        training = train_model(compose_config(variant, shared), run)
        weights = (1.0,) if ingredient.guidance == (1.0,) else (args.guidances or ingredient.guidance
                                                                  or (args.guidance,))
        # composing adds the null caption's branch, which a variant sampled only without guidance never trained
        composes = (False, True) if args.compose and ingredient.guidance != (1.0,) else (False,)
        for guidance, composed in [(w, c) for w in weights for c in composes]:
            variant.guidance, variant.compose = guidance, composed
            held, seen, samples, captions = judge_run(variant, run / "export", data)
            if guidance == weights[0] and not composed:
                save_samples(data["modality"], samples, captions, run / "judged_samples")
            rows.append({"variant": name, "overrides": list(ingredient.overrides),
                         "diffusion_minutes": variant.diffusion_minutes, "guidance": guidance, "compose": composed,
                         "phase2_steps": training["metrics"].get("diffusion", {}).get("steps"),
                         "wall_seconds": training["wall_seconds"], "held_out": held["scores"],
                         "per_pair": held["per_pair"], "seen": seen["scores"]})
    results = {"settings": _settings(args, data), "phase1": phase1, "judges": data["judges"], "real": data["real"],
               "rows": rows}
    save_results(out, results, study_report(results))
    return results


def study_report(results: dict[str, Any]) -> str:
    """``results.md`` of ``--study``: per variant and guidance weight, the share of held-out-caption samples
    right on each attribute and on all at once (n, Wilson 95% interval), beside the judges on real items."""
    from mmldm.evaluation.stats import format_share

    s = results["settings"]
    keys = [*s["attributes"], "all"]
    shared = results.get("phase1", {})
    phase1 = (f"phase 1 trained once for the study, {s['ae_minutes']} min" if shared.get("wall_seconds")
              else f"`{shared.get('autoencoder')}`, an earlier run's")
    lines = [f"# Text conditioning on held-out combinations, what each ingredient buys: {s['task']}", "",
             f"Held out of training: {', '.join(f'`{p}`' for p in s['holdout'])}. Every variant trains phase 2 "
             f"({s['diffusion_minutes']} min unless the row says otherwise) on one autoencoder ({phase1}) and "
             f"{s['train_items']} items; {s['samples']} held-out captions sampled with "
             f"DPM-Solver++(2M) {s['steps']} steps, seed {s['seed']}. Share of samples whose judged attribute is "
             "the captioned one (n, Wilson 95% interval).", "",
             "| variant | phase 2 | guidance | " + " | ".join(keys) + " | training captions: all |",
             "| --- " * (len(keys) + 4) + "|"]
    for r in results["rows"]:
        cells = [format_share(r["held_out"][k]["accuracy"], r["held_out"][k]["accuracy_n"]) for k in keys]
        seen = format_share(r["seen"]["all"]["accuracy"], r["seen"]["all"]["accuracy_n"])
        composed = ", composed over the caption's parts" if r.get("compose") else ""
        lines.append(f"| {r['variant']} | {r['diffusion_minutes']:g} min, {r['phase2_steps']} steps | "
                     f"{r['guidance']:g}{composed} | " + " | ".join(cells) + f" | {seen} |")
    cells = [format_share(results["real"][k]["accuracy"], results["real"][k]["accuracy_n"]) for k in keys]
    lines += ["| real held-out items (the judges) | | | " + " | ".join(cells) + " | |", "",
              "Training captions: the same model sampled for captions it was trained on; where a variant's "
              "held-out figures trail its training-caption figures, composition is what fails, not learning.", "",
              *(["Composed over the caption's parts: the same model sampled with compositional guidance "
                 "(`compose=[\"text\"]`), each comma-separated part of the caption its own branch with the "
                 "guidance weight (Composable Diffusion, Liu et al. 2022).", ""]
                if any(r.get("compose") for r in results["rows"]) else []),
              f"Base overrides: `{' '.join(s['overrides'])}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
