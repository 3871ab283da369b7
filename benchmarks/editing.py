"""Training-free editing: inpainting with a trained latent diffusion model, against simple baselines.

A task trains (or reuses) a class-conditional model through the generation benchmark's config and training
function (:mod:`benchmarks.generation`), trains (or reuses) the generation benchmark's independent judge of the
same data, removes part of every held-out item and fills it with ``LatentDiffusion.inpaint``. The method only
sees the partial input (the removed part emptied: voxels 0, pixels background, audio frames silence), never
the ground truth.

``voxel``  shape completion: half of each held-out shape removed by a random plane (through the centroid of its
           occupied voxels, a uniformly random normal, the side removed chosen at random; the mask is that
           half-space of the grid). IoU of the completed 0/1 occupancy (``Modality.finalize``) with the full
           shape, with a t interval of the mean, beside two baselines: the partial input itself and the
           autoencoder's reconstruction of it; and the share of completions the voxel judge recognizes.
``mnist``  the lower half of held-out test digits removed: the MNIST judge's accuracy on the completions.
``fsdd``   a 0.25 s gap in the middle of held-out spoken digits (the time axis of the log-mel features, at
           sample_rate / hop_length frames a second): the mean absolute log-mel difference to the uncut clip
           inside the gap (and the spectral convergence there), beside linear interpolation of the log-mel
           across the gap; the FSDD judge on completed, gapped and uncut clips.

Every task also reports what the kept part alone says about the class: a classifier of the judge's recipe
trained on partial inputs of the training set (:func:`partial_reference`), beside the completions' judge score.

Results go to ``benchmarks/results/editing_<task>/results.{json,md}`` with a picture (``examples.png``:
masked input, completion(s), ground truth).

Examples::

    python -m benchmarks.editing --task voxel             # train (the budget below), judge, complete, report
    python -m benchmarks.editing --task voxel --reuse     # the finished run in editing_voxel/run
    python -m benchmarks.editing --task fsdd --reuse      # the generation benchmark's FSDD model and judge
    python -m benchmarks.editing --task mnist --train-only
    python -m benchmarks.editing --task mnist --train-only --resume   # an interrupted run, its phase 1 kept
    python -m benchmarks.editing --task voxel --judge-only            # the judge alone (while the model trains)
    python -m benchmarks.editing --task voxel --report-only           # results.md again from results.json
    python -m benchmarks.editing --task voxel --partial-reference-only  # the kept part's reference, added
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from benchmarks import generation, save_results

REPO = generation.REPO
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Setting:
    """One way of completing: the class given or not, classifier-free guidance, RePaint resampling jumps."""

    name: str
    class_given: bool = False
    guidance: float | dict[str, float] = 1.0  # a dict: a weight per condition key (e.g. {"inpaint": 2.0})
    resample: int = 1
    mask_rule: str = "any"
    # what the removed part holds in the input given to inpaint: "empty" (voxels 0, pixels background, audio
    # silence) or "interpolation" (fsdd: the log-mel linearly interpolated across the gap, from kept frames only)
    fill: str = "empty"
    sampler: str | None = None  # None: SAMPLER with STEPS steps
    steps: int | None = None
    method: str = "training_free"  # or "trained": a model trained with conditioner=class_inpaint
    reconstruction_guidance: float = 0.0  # training_free: ΠGDM's reconstruction guidance weight (0 = off)
    # the class not given but inferred by the model itself from the kept part (LatentDiffusion.classify with
    # `levels` noise levels, its most likely class), then given as the condition
    class_inferred: bool = False
    levels: int = 64  # LatentDiffusion.classify's noise levels when class_inferred (its default)


@dataclass
class EditTask:
    """The generation benchmark's task of the same data (its config, judge and held-out items), this
    benchmark's step budgets, and the completion settings; the first setting is the headline."""

    base: str  # key of benchmarks.generation.TASKS
    budget: list[str]  # step overrides: a busy machine trains the same model, only slower
    settings: list[Setting]
    n: int  # held-out items completed (at most the held-out set, or the reference subset)
    extra_set: list[str] = field(default_factory=list)  # overrides of the reused run (fsdd: its vocoder)
    judge_from: str | None = None  # another task of the same data whose saved judge (editing_<task>) is loaded
    reference: str | None = None  # fsdd: the generation task's reference subset the items come from
    reuse_from: str | None = None  # a results folder whose run/export and classifier.pt --reuse takes


UNCOND = Setting("class not given, resample 1")
TASKS = {
    # the generation benchmark's mnist config (4.5 + 14.5 min there) with step budgets (~25 min on one thread)
    # reconstruction guidance's weight 1 (its published value) was chosen over 2 on held-out items 800-999
    # (--skip 800 --n 200: 54.0% vs 51.0%, plain 40.5%); reports complete the first 800 (--n 800)
    # the class inferred by the model from the kept half (LatentDiffusion.classify), then guidance 3: on items
    # 800-999 the inferred class was right for 86.5% and the judge recognized 86.0% (guidance 2: 85.0%, 5: 86.5%)
    "mnist": EditTask("mnist", ["phase1.max_steps=700", "diffusion.max_steps=1500"],
                      [Setting("class not given: inferred by the model from the kept half, guidance 3", guidance=3.0,
                               class_inferred=True),
                       Setting("class not given, reconstruction guidance 1", reconstruction_guidance=1.0),
                       UNCOND, Setting("class given, guidance 3", True, 3.0),
                       Setting("class not given, resample 3", resample=3),
                       Setting("class not given, ddpm 100 steps", sampler="ddpm", steps=100),
                       Setting("class not given, reconstruction guidance 2", reconstruction_guidance=2.0),
                       Setting("class not given, reconstruction guidance 1, resample 3", resample=3,
                               reconstruction_guidance=1.0),
                       Setting("class given, guidance 3, reconstruction guidance 1", True, 3.0,
                               reconstruction_guidance=1.0)], n=1000),
    # the voxel preset (350 + 16,000 steps: ~2 h on one thread) cut to ~35 min on one thread
    "voxel": EditTask("voxel", ["phase1.max_steps=250", "diffusion.max_steps=3000"],
                      [UNCOND, Setting("class given, guidance 3", True, 3.0),
                       Setting("class not given, resample 3", resample=3),
                       Setting("class not given, resample 5", resample=5),
                       Setting("class not given, ddpm 100 steps", sampler="ddpm", steps=100),
                       Setting("class given, guidance 3, resample 3", True, 3.0, resample=3),
                       Setting("class not given, reconstruction guidance 1", reconstruction_guidance=1.0),
                       Setting("class given, guidance 3, reconstruction guidance 1", True, 3.0,
                               reconstruction_guidance=1.0)], n=200),
    # the same budget trained with the inpainting conditioner beside the class (conditioner=class_inpaint): trained
    # inpainting, and the training-free method on that model; the voxel task's judge (same data)
    "voxel_trained": EditTask("voxel", ["phase1.max_steps=250", "diffusion.max_steps=3000", "conditioner=class_inpaint"],
                              [Setting("trained, class not given", method="trained"),
                               Setting("trained, class given, guidance 3", True, 3.0, method="trained"),
                               Setting("training-free on this model, class not given, resample 1"),
                               Setting("training-free on this model, class given, guidance 3, resample 3", True, 3.0,
                                       resample=3)],
                              n=200, judge_from="voxel"),
    # the mnist task's model trained three times as long (4,500 phase-2 steps, about 34 min on this machine): what
    # more phase-2 compute buys the class the model infers from the kept half; the mnist task's judge
    "mnist_long": EditTask("mnist", ["phase1.max_steps=700", "diffusion.max_steps=4500"],
                           [Setting("class not given: inferred by the model from the kept half, guidance 3", guidance=3.0,
                                    class_inferred=True, levels=128),
                            Setting("class given, guidance 3", True, 3.0), UNCOND],
                           n=1000, judge_from="mnist"),
    # the mnist budget trained with the inpainting conditioner beside the class (conditioner=class_inpaint, its
    # default mask families: boxes, half-spaces and slabs); the mnist task's judge (same data). Class given, one
    # guidance weight guides the class only (the unconditional branch keeps the known region, as SD's inpainting
    # pipelines do): 89.4% of the report's 800 digits, 79.2% when it also nulled the known region
    "mnist_trained": EditTask("mnist", ["phase1.max_steps=700", "diffusion.max_steps=1500", "conditioner=class_inpaint"],
                              [Setting("trained, class not given", method="trained"),
                               Setting("trained, class given, guidance 3", True, 3.0, method="trained"),
                               Setting("training-free on this model, class not given, reconstruction guidance 1, "
                                       "resample 3", resample=3, reconstruction_guidance=1.0)],
                              n=1000, judge_from="mnist"),
    # trained gap filling: the FSDD config with the inpainting conditioner beside the class, trained on time gaps
    # (masks=[slab], bands of 10-50% of the clip: the family documented for audio), with step budgets (the
    # earlier quiet machine's 500 + 1,614 steps of the 6 + 10 minute budgets); the fsdd task's judge
    "fsdd_trained": EditTask("fsdd", ["phase1.max_steps=500", "diffusion.max_steps=1600", "conditioner=class_inpaint",
                                      "conditioner.1.masks=[slab]"],
                             [Setting("trained, class not given", method="trained"),
                              Setting("trained, class not given, guidance 2 towards the known region",
                                      guidance={"inpaint": 2.0}, method="trained"),
                              Setting("trained, class given, guidance 3", True, 3.0, method="trained")],
                             n=400, extra_set=["modality.vocoder=vocos",
                                               "modality.vocoder_path=benchmarks/results/vocoder/vocos_fsdd"],
                             reference="training speakers' held-out clips (indices 40-49)", judge_from="fsdd"),
    # the generation benchmark's FSDD model and judge (trained with its vocos vocoder), reused when present;
    # completed: the training speakers' held-out clips (in distribution; 400 clips)
    "fsdd": EditTask("fsdd", [], [UNCOND, Setting("class given, guidance 3", True, 3.0),
                                  Setting("class not given, gap pre-filled by interpolation", fill="interpolation"),
                                  Setting("class not given, resample 3", resample=3),
                                  Setting("class not given, reconstruction guidance 1", reconstruction_guidance=1.0),
                                  Setting("class given, guidance 3, reconstruction guidance 1", True, 3.0,
                                          reconstruction_guidance=1.0)],
                     n=400,
                     extra_set=["modality.vocoder=vocos",
                                "modality.vocoder_path=benchmarks/results/vocoder/vocos_fsdd"],
                     reference="training speakers' held-out clips (indices 40-49)", reuse_from="generation_fsdd"),
}

#: How a report names a model it did not train (no budget of its own).
REUSED_RUN = "the generation benchmark's run"
#: Sampler of every completion (cheap on these latents).
SAMPLER, STEPS = "dpmpp_2m", 25
#: The FSDD gap in seconds.
GAP_SECONDS = 0.25


# ---------------------------------------------------------------------------- masks and baselines
def plane_mask(grid: Any, seed: int) -> Any:
    """``grid [R, R, R]`` (occupancy) -> the float mask ``[R, R, R]`` of a random half-space, 1 = removed
    (generate): the plane passes through the centroid of the occupied voxels (the grid's centre when none is
    occupied), its normal is uniformly random on the sphere, and the side removed is chosen at random;
    deterministic by ``seed``."""
    import numpy as np
    import torch

    g = torch.as_tensor(grid) > 0.5
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(3)
    normal /= np.linalg.norm(normal)
    side = 1.0 if rng.random() < 0.5 else -1.0
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in g.shape], indexing="ij")
    coords = torch.stack(axes, -1)  # [R, R, R, 3] voxel indices
    centre = coords[g].mean(0) if g.any() else (torch.tensor(g.shape, dtype=torch.float64) - 1) / 2
    signed = (coords - centre) @ torch.as_tensor(normal)
    return (side * signed > 0).float()


def lower_half_mask(shape: Sequence[int]) -> Any:
    """``[C, H, W]`` -> mask ``[1, H, W]``, 1 on the lower half of the rows (generate)."""
    import torch

    h, w = shape[-2:]
    mask = torch.zeros(1, h, w)
    mask[:, h // 2:] = 1
    return mask


def gap_frames(num_frames: int, sample_rate: int, hop_length: int, seconds: float = GAP_SECONDS) -> tuple[int, int]:
    """``(start, stop)`` of a gap of ``seconds`` (rounded to whole frames at ``sample_rate / hop_length`` frames a
    second) centred in ``num_frames`` frames (clips are centred in the window, so this is the clip's middle)."""
    width = max(1, round(seconds * sample_rate / hop_length))
    if width > num_frames - 2:
        raise ValueError(f"a gap of {width} frames leaves no frame on each side of {num_frames}")
    start = (num_frames - width) // 2
    return start, start + width


def time_mask(shape: Sequence[int], start: int, stop: int) -> Any:
    """Mask of the data shape ``[C, ..., T]`` reduced to one channel: 1 on frames ``start:stop`` of the last axis."""
    import torch

    mask = torch.zeros(1, *shape[1:])
    mask[..., start:stop] = 1
    return mask


def interpolate_gap(logmel: Any, start: int, stop: int) -> Any:
    """``logmel [..., T]`` with frames ``start:stop`` replaced by the linear interpolation (per frequency bin)
    between frame ``start - 1`` and frame ``stop``."""
    import torch

    left, right = logmel[..., start - 1:start], logmel[..., stop:stop + 1]
    w = torch.arange(1, stop - start + 1, dtype=logmel.dtype) / (stop - start + 1)
    out = logmel.clone()
    out[..., start:stop] = left + (right - left) * w
    return out


def iou(a: Any, b: Any) -> Any:
    """Per-item IoU of boolean occupancies ``[B, ...]`` (1 where both are empty)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    return (inter / union.clamp(min=1)).where(union > 0, inter.new_ones(()))


# ---------------------------------------------------------------------------- statistics and formatting
def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean", "sd", "n", "low", "high"}``: the mean of ``values`` with its t interval."""
    import numpy as np
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half}


def format_mean(m: dict[str, Any], digits: int = 3) -> str:
    """``0.712 (n=200, 95% CI 0.690-0.734)``."""
    return f"{m['mean']:.{digits}f} (n={m['n']}, 95% CI {m['low']:.{digits}f} to {m['high']:.{digits}f})"


def share(hits: Any) -> dict[str, Any]:
    """``{"value", "k", "n", "low", "high"}`` of boolean ``hits`` with the Wilson 95% interval."""
    from mmldm.evaluation.stats import proportion

    return proportion(int(hits.sum()), len(hits)).as_dict()


def format_proportion(p: dict[str, Any]) -> str:
    from mmldm.evaluation.stats import Proportion

    return str(Proportion(**p))


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# ---------------------------------------------------------------------------- running
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.editing", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="voxel")
    p.add_argument("--data", type=Path, default=generation.SHARED_DATA,
                   help="folder with the mnist/ and fsdd/ data")
    p.add_argument("--out", type=Path, help="report folder (default benchmarks/results/editing_<task>)")
    p.add_argument("--run-dir", type=Path, help="training run (default <out>/run; fsdd --reuse: generation_fsdd/run)")
    p.add_argument("--reuse", action="store_true", help="use the finished run (and saved judge) instead of training")
    p.add_argument("--train-only", action="store_true", help="train the model and stop")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --run-dir (its finished phase 1 is kept), not a fresh one")
    p.add_argument("--report-only", action="store_true", help="write results.md again from results.json")
    p.add_argument("--judge-only", action="store_true", help="train (or find) the judge and stop")
    p.add_argument("--n", type=int, help="held-out items to complete (default: the task's)")
    p.add_argument("--skip", type=int, default=0,
                   help="complete the held-out items after the first SKIP (to choose settings on items a report "
                        "with the default 0 never completes)")
    p.add_argument("--settings", nargs="+", metavar="NAME", help="only these completion settings")
    p.add_argument("--add", action="store_true",
                   help="with --settings: add (or replace) these settings' rows in the saved results.json of the same "
                        "items and seed, their picture in examples_added<k>.png; the other rows are kept")
    p.add_argument("--batch", type=int, default=50, help="items per inpainting call")
    p.add_argument("--examples", type=int, default=8, help="items in the picture")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", help="a paragraph for the top of results.md")
    p.add_argument("--no-partial-reference", action="store_true",
                   help="skip the partial-input reference classifier (trained once, then loaded)")
    p.add_argument("--partial-reference-only", action="store_true",
                   help="add the partial-input reference to the saved results.json (the same items) "
                        "and write results.md again, completing nothing")
    return p.parse_args(argv)


def picture_name(args: argparse.Namespace) -> str:
    """The picture's file name: ``examples.png``, or ``examples_added<k>.png`` for the k-th ``--add``."""
    return getattr(args, "picture", None) or "examples.png"


def check_add(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The saved results an ``--add`` run adds rows to, after checking that it names settings and completes the
    same items with the same seed; sets ``args.picture``."""
    saved_path = out / "results.json"
    if not args.settings:
        raise SystemExit("--add: name the settings to add with --settings")
    if not args.reuse:
        raise SystemExit("--add: the rows added must come from the saved report's model: give --reuse")
    if not saved_path.is_file():
        raise SystemExit(f"--add: {saved_path} does not exist; run the report without --add first")
    saved = json.loads(saved_path.read_text())
    n = args.n or TASKS[args.task].n
    theirs = (saved["settings"]["task"], saved["settings"].get("skip", 0), saved["settings"]["seed"])
    if theirs != (args.task, args.skip, args.seed) or saved["settings"]["n"] != n:
        raise SystemExit(f"--add: {saved_path} completed task {theirs[0]}, n={saved['settings']['n']}, "
                         f"skip={theirs[1]}, seed={theirs[2]}; this run asks for task {args.task}, n={n}, "
                         f"skip={args.skip}, seed={args.seed}: give the same --n, --skip and --seed")
    args.picture = f"examples_added{len(saved.get('added', [])) + 1}.png"
    return saved


def check_same_model(saved: dict[str, Any], results: dict[str, Any]) -> None:
    """An ``--add`` run's model and judge are the saved report's: the same overrides and training record (a run
    retrained since would otherwise add rows of another model), and the same judge."""
    mine, theirs = results, saved
    differ = [what for what, a, b in (
        ("overrides", mine["settings"]["overrides"], theirs["settings"]["overrides"]),
        ("training record", {k: mine["training"][k] for k in ("wall_seconds", "diffusion_steps")},
         {k: theirs["training"].get(k) for k in ("wall_seconds", "diffusion_steps")}),
        ("judge", mine["judge"].get("val_accuracy"), theirs["judge"].get("val_accuracy"))) if a != b]
    if differ:
        raise SystemExit(f"--add: not the saved report's {' and '.join(differ)}: the rows added would come from "
                         "another model or judge; write a new report (without --add) instead")


def merge_added(saved: dict[str, Any], results: dict[str, Any], task: EditTask, picture: str) -> dict[str, Any]:
    """``saved`` with ``results``' rows added (same names replaced) and the record of the addition; the headline
    and targets become the new ones when the task's headline setting is among the added."""
    names = [c["name"] for c in results["settings"]["completion_settings"]]
    saved["methods"].update(results["methods"])
    kept = [c for c in saved["settings"]["completion_settings"] if c["name"] not in names]
    saved["settings"]["completion_settings"] = kept + results["settings"]["completion_settings"]
    if results["headline"] == task.settings[0].name:
        saved["headline"], saved["targets"] = results["headline"], results["targets"]
    if results["settings"].get("note"):
        saved["settings"]["note"] = results["settings"]["note"]
    saved.setdefault("added", []).append({"settings": names, "picture": picture,
                                          "picture_rows": results.get("picture_rows", ["columns titled"])})
    return saved


def generation_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace :mod:`benchmarks.generation`'s config helpers read: its task, no minute budgets, this
    benchmark's step budgets (and the reused run's overrides) as ``--set``."""
    task = TASKS[args.task]
    base = generation.TASKS[task.base]
    # no step budget of its own (fsdd): the generation task's minute budgets
    minutes = (None, None) if task.budget else (base.ae_minutes, base.diffusion_minutes)
    return argparse.Namespace(task=task.base, data=args.data, set=[*task.budget, *task.extra_set, *args.set],
                              ae_minutes=minutes[0], diffusion_minutes=minutes[1], seed=args.seed)


def train(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Both phases with :func:`benchmarks.generation.train_model` (a fresh run); with ``--resume``, an interrupted
    run in ``run_dir`` continued by ``mmldm train``'s own ``resume=true`` (a finished phase 1 is loaded, checked
    against this config, and not retrained); ``training.json`` gets the wall time and budget."""
    budget = TASKS[args.task].budget or ["the generation task's budget"]
    if args.resume and (run_dir / "autoencoder" / "export" / "config.yaml").is_file():
        import time as _time

        from mmldm.training.run import train as run_train

        args.set = [*args.set, "resume=true"]
        cfg = generation.compose_config(generation_args(args))
        print(f"resuming the run in {run_dir} ({' '.join(budget)})", flush=True)
        start = _time.perf_counter()
        run_train(cfg, run_dir)
        training = {"wall_seconds": round(_time.perf_counter() - start, 1), "resumed": True,
                    "metrics": json.loads((run_dir / "metrics.json").read_text())}
    else:
        cfg = generation.compose_config(generation_args(args))
        print(f"training both phases ({' '.join(budget)}) in {run_dir}", flush=True)
        training = generation.train_model(cfg, run_dir)
    # the task's step budget and every --set that changed the model (a later --reuse report states what it trained)
    training["budget"] = [*TASKS[args.task].budget, *(o for o in args.set if o != "resume=true")]
    (run_dir / "training.json").write_text(json.dumps(training, indent=2, default=float))
    print(f"training took {training['wall_seconds'] / 60:.1f} min", flush=True)
    return training


def complete(pipe: Any, partial: Any, mask: Any, labels: Any, setting: Setting, seed: int, batch: int) -> tuple[Any, Any]:
    """``(completions, inferred classes or None)``: ``pipe.inpaint`` of ``partial`` in batches; item ``i`` of every
    setting uses the seed ``seed + i // batch`` (its own noise generator within the batch). A setting that infers
    the class first asks ``pipe.classify`` for the kept part's most likely class (the same seed)."""
    import torch

    out, inferred = [], []
    for j in range(0, len(partial), batch):
        cond = {"class": labels[j:j + batch]} if setting.class_given else None
        if setting.class_inferred:
            log_p = pipe.classify(partial[j:j + batch], mask[j:j + batch], levels=setting.levels,
                                  seed=seed + j // batch, mask_rule=setting.mask_rule, progress=False)
            inferred.append(log_p.argmax(-1))
            cond = {"class": inferred[-1]}
        out.append(pipe.inpaint(partial[j:j + batch], mask[j:j + batch], cond, steps=setting.steps or STEPS,
                                sampler=setting.sampler or SAMPLER,
                                guidance=setting.guidance, seed=seed + j // batch, method=setting.method,
                                **({"resample": setting.resample,
                                    "reconstruction_guidance": setting.reconstruction_guidance}
                                   if setting.method == "training_free" else {}),
                                mask_rule=setting.mask_rule, progress=False))
    return torch.cat(out), torch.cat(inferred) if inferred else None


def held_out(args: argparse.Namespace, task: EditTask, val_set: Any) -> Any:
    """Indices of the held-out items to complete: the first ``n`` after the first ``args.skip`` of the reference
    subset or held-out set."""
    import torch

    if task.reference:
        pattern = generation.TASKS[task.base].references[task.reference]
        idx = generation.reference_subsets(val_set, {task.reference: pattern})[task.reference]
    else:
        idx = torch.arange(len(val_set))
    return idx[args.skip:args.skip + (args.n or task.n)]


def judge_of(args: argparse.Namespace, task: EditTask, out: Path,
             source: Path) -> tuple[Any, dict[str, Any], Any, Any]:
    """(judge, its report, modality, held-out set): the generation benchmark's judge of this data, loaded from the
    reused run's folder (never overwritten) or this folder when saved there with the same recipe, else trained
    (and saved here)."""
    import time as _time

    from mmldm.build import build_modality

    if task.judge_from:  # the saved judge of another task of the same data, loaded as that task saved it
        args = argparse.Namespace(**{**vars(args), "task": task.judge_from, "set": []})
        task, source = TASKS[task.judge_from], RESULTS / f"editing_{task.judge_from}"
        if not (source / "classifier.pt").is_file():
            raise SystemExit(f"run `python -m benchmarks.editing --task {args.task} --judge-only` first: "
                             f"{source / 'classifier.pt'} is this task's judge")
        args.reuse, task = True, replace(task, reuse_from=f"editing_{args.task}")
    gargs = generation_args(args)
    modality = build_modality(generation.compose_config(gargs).modality)
    train_set, val_set = modality.dataset("train"), modality.dataset("val")
    started = _time.perf_counter()
    saved = source / "classifier.pt"
    reused = bool(task.reuse_from) and args.reuse and saved.is_file()
    classifier, clf = generation.task_judge(task.base, args.seed, generation.task_overrides(gargs), modality,
                                            train_set, val_set, saved if reused else out / "classifier.pt",
                                            args.reuse or args.judge_only, save=not reused)
    print(f"judge: held-out accuracy {clf['val_accuracy']:.4f} ({_time.perf_counter() - started:.0f} s)", flush=True)
    return classifier, clf, modality, val_set


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.skip < 0:
        raise SystemExit(f"--skip {args.skip}: expected a number of held-out items >= 0")
    task = TASKS[args.task]
    out = args.out or RESULTS / f"editing_{args.task}"
    source = RESULTS / task.reuse_from if (task.reuse_from and args.reuse) else out
    run_dir = args.run_dir or source / "run"
    if args.report_only:  # results.md again from results.json
        text = report(json.loads((out / "results.json").read_text()))
        (out / "results.md").write_text(text)
        print(text)
        return {}
    if args.partial_reference_only:  # the reference for the items a saved report completed
        results = json.loads((out / "results.json").read_text())
        import torch

        from mmldm.build import build_modality

        modality = build_modality(generation.compose_config(generation_args(args)).modality)
        val_set = modality.dataset("val")
        args.skip, args.n = results["settings"].get("skip", 0), results["settings"]["n"]
        idx = held_out(args, task, val_set)
        x = torch.stack([val_set[int(i)]["x"] for i in idx])
        labels = torch.tensor([val_set[int(i)]["cond"]["class"] for i in idx])
        partial = partial_input(task.base, modality, x, eval_seeds(args, len(x)))[0]
        results["partial_reference"] = partial_reference(task, args, modality, partial, labels, out)
        save_results(out, results, report(results))
        return results
    if args.judge_only:  # the judge alone (e.g. while the model trains)
        judge_of(args, task, out, source)
        return {}
    saved = check_add(args, out) if args.add else None
    if args.reuse:
        record = run_dir / "training.json"
        if not (record.is_file() and (run_dir / "export").is_dir()):
            raise SystemExit(f"--reuse: {run_dir} has no finished run (expected training.json and export/ there)")
        training = json.loads(record.read_text())
    else:
        training = train(args, run_dir)
    if args.train_only:
        return training

    import torch

    from mmldm import LatentDiffusion

    torch.manual_seed(args.seed)
    gargs = generation_args(args)
    classifier, clf, modality, val_set = judge_of(args, task, out, source)
    idx = held_out(args, task, val_set)
    x = torch.stack([val_set[int(i)]["x"] for i in idx])
    labels = torch.tensor([val_set[int(i)]["cond"]["class"] for i in idx])
    pipe = LatentDiffusion.from_pretrained(run_dir / "export")
    pipe.eval()
    chosen = [s for s in task.settings if not args.settings or s.name in args.settings]

    results: dict[str, Any] = {
        "settings": {"task": args.task, "n": len(x), "skip": args.skip, "seed": args.seed, "sampler": SAMPLER,
                     "steps": STEPS,
                     "budget": training.get("budget", task.budget), "note": args.note,
                     "run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else run_dir.name,
                     "overrides": [o for o in generation.task_overrides(gargs) if not o.startswith("modality.root=")],
                     "completion_settings": [s.__dict__ for s in chosen]},
        "training": {"wall_seconds": training["wall_seconds"], "resumed": bool(training.get("resumed")),
                     "diffusion_steps": training["metrics"].get("diffusion", {}).get("steps"),
                     "autoencoder_reconstruction": training["metrics"].get("autoencoder", {}).get("reconstruction")},
        "judge": clf,
    }
    if saved is not None:
        check_same_model(saved, results)
    evaluate = {"voxel": evaluate_voxel, "mnist": evaluate_mnist, "fsdd": evaluate_fsdd}[task.base]
    results.update(evaluate(pipe, classifier, x, labels, chosen, args, out))
    if saved is not None:  # the saved report keeps its other rows and its partial-input reference
        results = merge_added(saved, results, task, picture_name(args))
    elif not args.no_partial_reference:
        partial = partial_input(task.base, pipe.modality, x, eval_seeds(args, len(x)))[0]
        results["partial_reference"] = partial_reference(task, args, pipe.modality, partial, labels, out)
    save_results(out, results, report(results))
    return results


def _judge(classifier: Any, modality: Any, x: Any, labels: Any) -> dict[str, Any]:
    from mmldm.evaluation.classifier import predict

    logits, _ = predict(classifier, modality.finalize(x))
    return share(logits.argmax(-1) == labels)


def _run_settings(pipe: Any, partial: Any, mask: Any, labels: Any, chosen: Sequence[Setting],
                  args: argparse.Namespace, fills: dict[str, Any] | None = None) -> dict[str, tuple[Any, float, Any]]:
    """Every setting's completions, seconds and inferred classes (None unless it infers them); ``fills``: the
    inputs of settings whose ``fill`` is not "empty"."""
    done = {}
    for s in chosen:
        t0 = time.perf_counter()
        given = partial if s.fill == "empty" else (fills or {})[s.fill]
        completed, inferred = complete(pipe, given, mask, labels, s, args.seed, args.batch)
        done[s.name] = (completed, time.perf_counter() - t0, inferred)
        print(f"{s.name}: {done[s.name][1]:.0f} s for {len(partial)} items", flush=True)
    return done


def add_inferred(rows: dict[str, Any], completed: dict[str, tuple[Any, float, Any]], labels: Any) -> None:
    """``rows[name]["inferred_class"]``: how often the class a setting inferred was the true one."""
    for name, (_, _, inferred) in completed.items():
        if inferred is not None:
            rows[name]["inferred_class"] = share(inferred == labels)


def evaluate_voxel(pipe: Any, classifier: Any, x: Any, labels: Any, chosen: Sequence[Setting],
                   args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    modality = pipe.modality
    truth = modality.finalize(x)  # the real grids are 0/1 already
    partial, mask = partial_input("voxel", modality, x, eval_seeds(args, len(x)))
    removed = (truth * mask).flatten(1).sum(1) / truth.flatten(1).sum(1).clamp(min=1)
    ae = modality.finalize(pipe.decode(pipe.encode(partial)))
    inside = mask.bool()

    def iou_inside(a: Any) -> Any:  # IoU over the removed half-space only
        return iou(a.bool() & inside, truth.bool() & inside)

    baselines = ("partial input (baseline)", "autoencoder of the partial input (baseline)")
    methods = {baselines[0]: (partial, None), baselines[1]: (ae, None)}
    completed = _run_settings(pipe, partial, mask, labels, chosen, args)
    for name, (done, seconds, _) in completed.items():
        methods[name] = (modality.finalize(done), seconds)
    per_item = {name: iou(y, truth) for name, (y, _) in methods.items()}
    rows = {}
    for name, (y, seconds) in methods.items():
        rows[name] = {"iou": mean_interval(per_item[name].tolist()),
                      "iou_removed_half": mean_interval(iou_inside(y).tolist()),
                      "judge": _judge(classifier, modality, y, labels), "seconds": seconds}
    add_inferred(rows, completed, labels)
    best_base = max(baselines, key=lambda k: rows[k]["iou"]["mean"])
    for s in chosen:
        rows[s.name]["gain_over_best_baseline"] = mean_interval((per_item[s.name] - per_item[best_base]).tolist())
    head = chosen[0].name
    targets = {
        "beats both baselines": all(rows[head]["iou"]["mean"] > rows[b]["iou"]["mean"] for b in baselines),
        "gain >= 0.10 IoU over the better baseline": rows[head]["gain_over_best_baseline"]["mean"] >= 0.10,
        "judge >= 80% on completions": rows[head]["judge"]["value"] >= 0.80,
    }
    pick = torch.arange(min(args.examples, len(x)))
    columns = {"masked input": partial[pick], **{s.name: methods[s.name][0][pick] for s in chosen[:2]},
               "ground truth": truth[pick]}
    save_voxel_picture(modality, columns, labels[pick], modality.class_names, out / picture_name(args))
    return {"removed_share": mean_interval(removed.tolist()),
            "real": {"judge": _judge(classifier, modality, truth, labels)}, "methods": rows,
            "best_baseline": best_base, "headline": head, "targets": targets}


#: The image modality's [-1, 1] black: what the masked half of an MNIST input holds.
BACKGROUND = -1.0


def partial_input(base: str, modality: Any, x: Any, seeds: Sequence[int] | None = None) -> tuple[Any, Any]:
    """``(partial, mask)`` of inputs ``x [B, C, *s]`` as this benchmark removes a part of ``base``'s data (mnist: the
    lower half set to background; fsdd: the centred gap set to the features of silence; voxel: the grid emptied
    on one side of a random plane, :func:`plane_mask`, one plane per item from ``seeds``, and ``partial`` as the
    modality's finalized 0/1 grid); ``mask`` 1 = removed."""
    import torch

    if base == "mnist":
        mask = lower_half_mask(x.shape[1:]).expand(len(x), 1, *x.shape[2:]).clone()
        return torch.where(mask.bool(), torch.full_like(x, BACKGROUND), x), mask
    if base == "fsdd":
        start, stop = gap_frames(x.shape[-1], modality.cfg.sample_rate, modality.cfg.hop_length)
        one = time_mask(x.shape[1:], start, stop)
        mask = one.expand(len(x), *one.shape).clone()
        silence = modality.features(torch.zeros(1, modality.length))  # the features of silence, per mel bin
        return torch.where(mask.bool(), silence.expand_as(x), x), mask
    if base == "voxel":
        if seeds is None or len(seeds) != len(x):
            raise ValueError(f"the voxel partial input needs one plane seed per item: {len(x)} items, "
                             f"{'no' if seeds is None else len(seeds)} seeds")
        truth = modality.finalize(x)
        mask = torch.stack([plane_mask(g[0], seed)[None] for g, seed in zip(truth, seeds)])
        return truth * (1 - mask), mask
    raise ValueError(f"no partial input of the '{base}' data; expected mnist, fsdd or voxel")


def eval_seeds(args: argparse.Namespace, n: int) -> list[int]:
    """The plane seeds of the ``n`` completed voxel items (``args.seed`` picks the set)."""
    return [args.seed * 100003 + i for i in range(n)]


#: The first plane seed of the partial-input reference classifier's training and held-out items (item ``i`` of a
#: set is cut by seed ``PARTIAL_SEED + i``): planes that no completed item uses at the default seed.
PARTIAL_SEED = 7_000_003


def partial_variant(base: str) -> str:
    """The partial-input reference's recipe variant: a saved classifier of voxel halves cut by another plane range
    (another :data:`PARTIAL_SEED`) is stale and retrained, not loaded."""
    return f"partial input, planes from seed {PARTIAL_SEED}" if base == "voxel" else "partial input"


class PartialDataset:
    """Items of ``dataset`` with ``x`` replaced by its :func:`partial_input` (what the partial-input reference
    classifier is trained and measured on; a voxel item ``i`` is cut by the plane of seed ``PARTIAL_SEED + i``)."""

    def __init__(self, dataset: Any, base: str, modality: Any):
        self.dataset, self.base, self.modality = dataset, base, modality

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        seeds = [PARTIAL_SEED + i] if self.base == "voxel" else None
        return {**item, "x": partial_input(self.base, self.modality, item["x"][None], seeds)[0][0]}


def partial_reference(task: EditTask, args: argparse.Namespace, modality: Any, partial: Any, labels: Any,
                      out: Path) -> dict[str, Any]:
    """What the kept part says about the class: a classifier of the judge's architecture and recipe trained on
    the training set's partial inputs (:func:`partial_input`), measured on the completed items' partial inputs.
    Its accuracy is about what a completion that always drew the most likely class from the kept part could
    reach; the mean probability it gives the true class is what a completion drawn from its posterior would
    reach (when it is calibrated). A reference from one classifier, not a bound: a better one would read more.
    The judge's own training (:func:`benchmarks.generation.task_judge`, its recipe marked as this variant),
    saved to ``out/partial_classifier.pt`` and loaded when the recipe matches."""
    from mmldm.evaluation.classifier import predict

    gargs = generation_args(args)
    train_set, val_set = modality.dataset("train"), modality.dataset("val")
    classifier, clf = generation.task_judge(
        task.base, args.seed, generation.task_overrides(gargs), modality, train_set, val_set,
        out / "partial_classifier.pt", reuse=True,
        variant=(partial_variant(task.base), lambda data: PartialDataset(data, task.base, modality)))
    print(f"partial-input classifier: held-out accuracy {clf['val_accuracy']:.4f}", flush=True)
    logits, _ = predict(classifier, modality.finalize(partial))
    p_true = logits.softmax(-1).gather(1, labels[:, None])[:, 0]
    return {"accuracy": share(logits.argmax(-1) == labels), "p_true": mean_interval(p_true.tolist()),
            "classifier": clf}


def evaluate_mnist(pipe: Any, classifier: Any, x: Any, labels: Any, chosen: Sequence[Setting],
                   args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    modality = pipe.modality
    partial, mask = partial_input("mnist", modality, x)
    methods = {"masked input (lower half background)": (partial, None),
               "autoencoder of the masked input": (pipe.decode(pipe.encode(partial)), None)}
    completed = _run_settings(pipe, partial, mask, labels, chosen, args)
    for name, (done, seconds, _) in completed.items():
        methods[name] = (done, seconds)
    def l1_lower(y: Any) -> list[float]:  # mean absolute difference to the digit over the removed half
        return ((y - x).abs() * mask).flatten(1).sum(1).div(mask.flatten(1).sum(1)).tolist()

    rows = {name: {"judge": _judge(classifier, modality, y, labels), "seconds": seconds,
                   "l1_removed_half": mean_interval(l1_lower(y))} for name, (y, seconds) in methods.items()}
    add_inferred(rows, completed, labels)
    head = chosen[0].name
    pick = torch.arange(min(max(args.examples, 12), len(x)))
    rows_img = [partial[pick], *[methods[s.name][0][pick] for s in chosen], x[pick]]
    picture = out / picture_name(args)
    generation.save_grid(torch.cat(rows_img), picture, nrow=len(pick))
    from PIL import Image

    with Image.open(picture) as im:  # 3x larger, for a person to look at
        im.resize((im.width * 3, im.height * 3), Image.NEAREST).save(picture)
    return {"real": {"judge": _judge(classifier, modality, x, labels)}, "methods": rows, "headline": head,
            "picture_rows": ["masked input", *[s.name for s in chosen], "ground truth"],
            "targets": {"judge >= 90% on completions (class not given)": rows[head]["judge"]["value"] >= 0.90}}


def evaluate_fsdd(pipe: Any, classifier: Any, x: Any, labels: Any, chosen: Sequence[Setting],
                  args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    from mmldm_audio.metrics import logmel_l1, spectral_convergence

    modality = pipe.modality
    cfg = modality.cfg
    frames = x.shape[-1]
    start, stop = gap_frames(frames, cfg.sample_rate, cfg.hop_length)
    partial, mask = partial_input("fsdd", modality, x)
    truth_mel = modality.to_logmel(x)
    interp_mel = interpolate_gap(truth_mel, start, stop)
    # the interpolation back in the modality's normalized layout, for the judge
    from mmldm_audio.features import normalize

    interp = normalize(interp_mel, modality.stats, cfg.layout)
    methods = {"gapped input (silence)": (partial, None), "linear interpolation of the log-mel": (interp, None)}
    completed = _run_settings(pipe, partial, mask, labels, chosen, args, {"interpolation": interp})
    for name, (done, seconds, _) in completed.items():
        methods[name] = (done, seconds)
    rows = {}
    for name, (y, seconds) in methods.items():
        mel = modality.to_logmel(y)
        gap, gap_truth = mel[..., start:stop], truth_mel[..., start:stop]
        rows[name] = {"logmel_l1_gap": mean_interval(logmel_l1(gap_truth, gap).tolist()),
                      "spectral_convergence_gap": mean_interval(spectral_convergence(gap_truth, gap).tolist()),
                      "judge": _judge(classifier, modality, y, labels), "seconds": seconds}
    add_inferred(rows, completed, labels)
    interp_name, head = "linear interpolation of the log-mel", chosen[0].name
    real = _judge(classifier, modality, x, labels)
    per_interp = logmel_l1(truth_mel[..., start:stop], modality.to_logmel(interp)[..., start:stop])
    for s in chosen:
        per = logmel_l1(truth_mel[..., start:stop], modality.to_logmel(methods[s.name][0])[..., start:stop])
        rows[s.name]["l1_minus_interpolation"] = mean_interval((per - per_interp).tolist())
        from mmldm.evaluation.stats import difference_interval

        j = rows[s.name]["judge"]
        rows[s.name]["judge_minus_uncut"] = {"value": j["value"] - real["value"],
                                             "ci": list(difference_interval(j["k"], j["n"], real["k"], real["n"]))}
    pick = torch.arange(min(args.examples, len(x)))
    save_spectrogram_picture(modality, [("gapped input", partial[pick]), ("linear interpolation", interp[pick]),
                                        *[(s.name, methods[s.name][0][pick]) for s in chosen],
                                        ("uncut clip", x[pick])], out / picture_name(args))
    power = truth_mel.exp()
    energy = power[..., start:stop].sum((1, 2)) / power.sum((1, 2))
    return {"gap": {"start": start, "stop": stop, "frames": stop - start,
                    "energy_share": mean_interval(energy.tolist()),  # of each clip's mel power inside the gap
                    "seconds": (stop - start) * cfg.hop_length / cfg.sample_rate,
                    "frame_rate": cfg.sample_rate / cfg.hop_length, "clip_frames": frames},
            "real": {"judge": real}, "methods": rows, "headline": head, "interpolation": interp_name,
            "picture_rows": ["gapped input", "linear interpolation", *[s.name for s in chosen], "uncut clip"],
            "targets": {"log-mel L1 in the gap below linear interpolation":
                        rows[head]["logmel_l1_gap"]["mean"] < rows[interp_name]["logmel_l1_gap"]["mean"],
                        "judge on completions within 5 points of the uncut clips":
                        abs(rows[head]["judge_minus_uncut"]["value"]) <= 0.05}}


# ---------------------------------------------------------------------------- pictures
def save_voxel_picture(modality: Any, columns: dict[str, Any], labels: Any, class_names: Sequence[str],
                       path: Path) -> None:
    """One row per item, one column per entry of ``columns`` (``[B, 1, R, R, R]`` occupancies), meshes rendered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mmldm_voxel.output import draw_mesh, surface_mesh

    names = list(columns)
    rows = len(next(iter(columns.values())))
    fig = plt.figure(figsize=(2.4 * len(names), 2.4 * rows), dpi=80)
    for r in range(rows):
        for c, name in enumerate(names):
            grid = modality.grids(columns[name][r:r + 1])[0]
            ax = fig.add_subplot(rows, len(names), r * len(names) + c + 1, projection="3d")
            title = (f"{name}\n" if r == 0 else "") + (class_names[int(labels[r])] if c == 0 else "")
            draw_mesh(ax, *surface_mesh(grid, 0.5, 0.0), title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def save_spectrogram_picture(modality: Any, rows: list[tuple[str, Any]], path: Path) -> None:
    """One row per entry of ``rows`` (normalized features of the same clips), clips side by side."""
    import math as _m

    import numpy as np
    from PIL import Image
    from mmldm_audio.modality import spectrogram_pictures

    vmin = _m.log(modality.cfg.log_floor)
    mels = [modality.to_logmel(x) for _, x in rows]
    vmax = max(float(m.max()) for m in mels)
    strips = []
    for mel in mels:
        mel = mel.clone()
        mel[0, 0, 0] = vmax  # the same colour scale in every row
        pics = spectrogram_pictures(mel, vmin, scale=2)
        pad = np.full((pics.shape[1], 4, 3), 255, np.uint8)
        strips.append(np.concatenate([p for pic in pics for p in (pic, pad)], axis=1))
        strips.append(np.full((4, strips[-1].shape[1], 3), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(strips)).save(path)


# ---------------------------------------------------------------------------- report
def report(results: dict[str, Any]) -> str:
    """``results.md``: the budget, the judge, one table of every method (baselines first), the targets."""
    s, task = results["settings"], results["settings"]["task"]
    train = results["training"]
    judge = results["judge"]
    judge_line = f"{100 * judge['val_accuracy']:.1f}% on the held-out set" + (
        f" (n={judge['val_accuracy_n']})" if "val_accuracy_n" in judge else "") + f", {judge['epochs']} epochs"
    titles = {"voxel": "Voxel shape completion (half of each held-out shape removed by a random plane)",
              "mnist": "MNIST: the lower half of held-out test digits completed",
              "mnist_long": "MNIST: the lower half of held-out test digits completed by a model trained three "
                            "times as long",
              "fsdd": "Spoken digits (FSDD): a 0.25 s gap in the middle of the clip completed",
              "voxel_trained": "Voxel shape completion by a model trained for inpainting (conditioner=class_inpaint)",
              "mnist_trained": "MNIST: the lower half of held-out test digits completed by a model trained for "
                               "inpainting (conditioner=class_inpaint)",
              "fsdd_trained": "Spoken digits (FSDD): a 0.25 s gap in the middle of the clip completed by a model "
                              "trained for gap filling (conditioner=class_inpaint, time-gap masks)"}
    base = TASKS[task].base
    resumed = " (the resumed invocation only)" if train.get("resumed") else ""
    reconstruction = train["autoencoder_reconstruction"] or {}
    kind = "Inpainting" if task.endswith("_trained") else "Training-free inpainting"
    lines = [f"# {kind}: {titles[task]}", ""]
    skipped = f" (those after the first {s['skip']})" if s.get("skip") else ""
    if s.get("note"):
        lines += [s["note"], ""]
    lines += [
        f"Every completion: `LatentDiffusion.inpaint` of the partial input only (never the ground truth), "
        f"{s['sampler']} with {s['steps']} steps unless its name says otherwise, mask_rule `any`, seeded, on "
        f"{s['n']} held-out items{skipped}; class given: the true class as the condition.",
        f"Model: {' + '.join(s['budget']) if s['budget'] else REUSED_RUN}; training "
        f"{train['wall_seconds'] / 60:.1f} min wall clock{resumed} "
        f"({train['diffusion_steps']} phase-2 steps); autoencoder "
        "held-out reconstruction " + ", ".join(f"{k} {v:.4g}" for k, v in reconstruction.items())
        + ".",
        f"Judge (the generation benchmark's independent classifier of this data): {judge_line}.",
        "",
    ]
    real = format_proportion(results["real"]["judge"])
    if base == "voxel":
        lines += [f"Voxels removed per shape: {format_mean(results['removed_share'])} of the occupied ones.", "",
                  "| method | IoU with the full shape | IoU in the removed half | judge: true class | sampling s |",
                  "| --- | --- | --- | --- | --- |",
                  f"| full shape (real) | 1 | 1 | {real} | |"]
        for name, m in results["methods"].items():
            lines.append(f"| {name} | {format_mean(m['iou'])} | {format_mean(m['iou_removed_half'])} | "
                         f"{format_proportion(m['judge'])} | {m['seconds'] or 0:.0f} |")
        lines += ["", f"Gain over the better baseline ({results['best_baseline']}), paired per shape:", ""]
        lines += [f"- {name}: {format_mean(m['gain_over_best_baseline'])} IoU" for name, m in results["methods"].items()
                  if "gain_over_best_baseline" in m]
    elif base == "mnist":
        lines += ["| input to the judge | judge: true class | mean abs. difference in the lower half | sampling s |",
                  "| --- | --- | --- | --- |", f"| full digits (real) | {real} | 0 | |"]
        for name, m in results["methods"].items():
            lines.append(f"| {name} | {format_proportion(m['judge'])} | {format_mean(m['l1_removed_half'])} | "
                         f"{m['seconds'] or 0:.0f} |")
    else:
        g = results["gap"]
        lines += [f"Gap: frames {g['start']}-{g['stop'] - 1} of {g['clip_frames']} ({g['frames']} frames at "
                  f"{g['frame_rate']:g} frames/s = {g['seconds']:.3f} s), centred in the window where the clips are "
                  "centred; " + (f"it holds {format_mean(g['energy_share'])} of each clip's mel energy. "
                                 if "energy_share" in g else "")
                  + "Distances inside the gap to the uncut clip's "
                  "log-mel (natural log of mel power); spectral convergence on the mel magnitude.", "",
                  "| method | log-mel L1 in the gap | spectral convergence in the gap | judge: true class "
                  "| sampling s |",
                  "| --- | --- | --- | --- | --- |", f"| uncut clips (real) | 0 | 0 | {real} | |"]
        for name, m in results["methods"].items():
            lines.append(f"| {name} | {format_mean(m['logmel_l1_gap'])} | {format_mean(m['spectral_convergence_gap'])} "
                         f"| {format_proportion(m['judge'])} | {m['seconds'] or 0:.0f} |")
        lines += ["", "Paired per clip against linear interpolation, and the judge against the uncut clips "
                  "(Newcombe interval of the difference):", ""]
        for name, m in results["methods"].items():
            if "l1_minus_interpolation" in m:
                d = m["judge_minus_uncut"]
                lines.append(f"- {name}: log-mel L1 minus interpolation's {format_mean(m['l1_minus_interpolation'])}; "
                             f"judge minus uncut {100 * d['value']:+.1f} points (95% CI {100 * d['ci'][0]:+.1f} to "
                             f"{100 * d['ci'][1]:+.1f})")
    inferred = {name: m["inferred_class"] for name, m in results["methods"].items() if "inferred_class" in m}
    if inferred:
        # reports written before settings had their own levels used classify's default, 64
        levels = {c["name"]: c.get("levels", 64) for c in results["settings"].get("completion_settings", [])}
        lines += ["", "Class not given but inferred: the model's own most likely class for the partial input "
                  "(`LatentDiffusion.classify`, the kept part's denoising error at the noise levels given per row, no "
                  "classifier trained) is given as the condition. The inferred class was the true one:", ""]
        lines += [f"- {name} ({levels.get(name, 64)} noise levels): {format_proportion(p)}" for name, p in inferred.items()]
    ref = results.get("partial_reference")
    if ref:
        what = {"mnist": "digit", "fsdd": "spoken digit"}.get(base, "class")
        lines += ["", f"What the kept part says about the {what} (a reference, not a bound): a classifier of the judge's "
                  f"architecture and recipe trained on the training set's partial inputs recognizes "
                  f"{format_proportion(ref['accuracy'])} of these partial inputs ({100 * ref['classifier']['val_accuracy']:.1f}% "
                  f"of the held-out set's), about what a completion that always drew the most likely {what} could "
                  f"reach; the probability it gives the true {what} averages {format_mean(ref['p_true'])}, what a "
                  f"completion drawn from its posterior would reach if it is calibrated."]
    lines += ["", f"Targets (headline: {results['headline']}):", ""]
    lines += [f"- {name}: {verdict(ok)}" for name, ok in results["targets"].items()]
    if base == "voxel":
        gain = results["methods"][results["headline"]]["gain_over_best_baseline"]
        lines.append(f"- (the gain's 95% interval, {gain['low']:.3f} to {gain['high']:.3f}, "
                     f"{'lies above' if gain['low'] >= 0.10 else 'reaches below'} 0.10)")
    rows = results.get("picture_rows")
    picture = f" (rows, top to bottom: {'; '.join(rows)})." if rows else " (one row per shape, columns titled)."
    lines += ["", f"Picture: `examples.png`{picture}"]
    for added in results.get("added", []):
        lines += ["", f"Added later with `--add` (same model, judge, items and seeds): {'; '.join(added['settings'])}. "
                  f"Picture: `{added['picture']}` (rows, top to bottom: {'; '.join(added['picture_rows'])})."]
    lines += ["", f"Overrides: `{' '.join(s['overrides'])}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
