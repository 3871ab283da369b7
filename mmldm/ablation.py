"""Ablation studies: the field's open questions about phase 1, answered on the user's own data.

``mmldm ablate <study>`` trains every variant of a study with the same seed and the
same wall-clock budget per phase, through the code behind ``mmldm train``, then
measures each one twice:

* phase 1: the modality's reconstruction metrics and the latent diagnostics that
  the run writes to ``metrics.json`` (:mod:`mmldm.diagnostics`);
* phase 2: class-conditional samples judged by an independent classifier trained
  on the real data (class accuracy, Frechet distance in its features;
  :func:`mmldm.evaluation.generation.judge_samples`) and the modality's own
  generation metrics (for voxels 1-NNA, COV, MMD).

The report (``report.md``, ``report.json``, ``report.png``: reconstruction vs
generation quality, one point per variant) goes to the output folder. A variant
that fails is reported with its error and the others still run.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

FORMS = ("quick", "full")

#: The 2D studies' data and sizes: scikit-learn's bundled digits (embedded, 10 classes) at 32x32,
#: f=4 -> 8x8x4 latents, the U-Net of the MNIST benchmark. Budgets per variant and phase.
#: The image studies' data and autoencoder, and their U-Net (kept apart: the process study swaps the denoiser).
_IMAGE_DATA = ["modality=image", "modality.source=digits", "autoencoder=conv_image", "data.batch_size=64",
               "diffusion.lr=5e-4", "diffusion.ema_decay=0.999"]
_IMAGE_UNET = ["denoiser.model_channels=64", "denoiser.channel_mult=[1,2]", "denoiser.num_res_blocks=2",
               "denoiser.attention_levels=[1]", "denoiser.head_dim=32"]
_IMAGE = [*_IMAGE_DATA[:3], *_IMAGE_UNET, *_IMAGE_DATA[3:]]
_QUICK = ["trainer=cpu", "phase1.max_minutes=0.75", "diffusion.max_minutes=2.0", "phase1.max_steps=1000000",
          "diffusion.max_steps=1000000", "sample.num_samples=10",
          # a narrower U-Net and smaller batches: about 4x the phase-2 steps of the full widths in the same time,
          # enough for the class conditioning to take hold (at 1.5 min of the full widths, samples were at chance)
          "denoiser.model_channels=32", "data.batch_size=32"]
#: Step budgets instead of minutes (about the same compute on an idle 2-core CPU): with the same seed, every
#: variant then trains the identical phase 1, for studies whose question is about phase 2 only.
_QUICK_STEPS = [*(o for o in _QUICK if "max_minutes" not in o and "max_steps" not in o),
                "phase1.max_steps=120", "diffusion.max_steps=1600"]
_FULL = ["phase1.max_steps=20000", "diffusion.max_steps=50000", "sample.num_samples=50"]
_COMMON = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50"]
#: How every variant's samples are drawn for judging: DPM-Solver++(2M) (the default sampler) with these
#: steps and classifier-free guidance.
JUDGE_STEPS, JUDGE_GUIDANCE = 25, 3.0


@dataclass
class Study:
    """A question, the variants that answer it and the overrides of its two forms.

    ``variants`` maps a variant name to its config overrides; ``quick_variants``
    replaces them in the quick form when the quick sizes need different values.
    """

    name: str
    question: str
    base: list[str]
    variants: dict[str, list[str]]
    quick: list[str] = field(default_factory=lambda: list(_QUICK))
    full: list[str] = field(default_factory=lambda: list(_FULL))
    quick_variants: dict[str, list[str]] | None = None
    per_class: dict[str, int] = field(default_factory=lambda: {"quick": 20, "full": 100})
    classifier: dict[str, Any] = field(default_factory=dict)  # train_classifier options

    def overrides(self, form: str, variant: str, extra: Sequence[str] = ()) -> list[str]:
        """The full override list of one variant: base, form, variant, then the user's ``extra``."""
        variants = self.variant_table(form)
        return [*self.base, *_COMMON, *getattr(self, form), *variants[variant], *extra]

    def variant_table(self, form: str) -> dict[str, list[str]]:
        return self.quick_variants if form == "quick" and self.quick_variants else self.variants


#: The process study's denoisers: the image studies' U-Net (at the quick form's width) and a DiT of
#: comparable cost on the 8x8x4 latents (one token per latent cell).
_PROCESS_DENOISERS = {
    "unet": [*_IMAGE_UNET, "denoiser.model_channels=32"],
    "dit": ["denoiser=dit", "denoiser.hidden_size=128", "denoiser.depth=4", "denoiser.num_heads=4",
            "denoiser.patch_size=[1]"],
}
#: The process study's processes (``process=...`` and its keys).
_PROCESSES = {
    "vp_eps": ["process=vp"],
    "vp_v_minsnr": ["process=v_minsnr"],
    "flow": ["process=flow"],
    "edm": ["process=edm"],
}


#: The audio_latent study's variants: the 2D layout of the preset and the 1D layout (mel bins as channels) at
#: the same latent size, 1,024 numbers (4x compression of the 64x64 log-mel) and 256 (16x).
_AUDIO_1D = ["modality.layout=1d", "autoencoder=conv_audio_1d", "denoiser=unet1d"]  # what preset=audio_1d selects
_AUDIO_LATENT = {
    "2d_f4_c4": [],  # [4, 16, 16], the preset
    "1d_f4_c64": [*_AUDIO_1D, "autoencoder.latent_channels=64"],  # [64, 16]
    "2d_f8_c4": ["autoencoder.channel_mult=[1,2,4,4]", "denoiser.channel_mult=[1,2]",
                 "denoiser.attention_levels=[1]"],  # [4, 8, 8]
    "1d_f4_c16": [*_AUDIO_1D, "autoencoder.latent_channels=16"],  # [16, 16]
}


def _compression_unet(levels: int) -> list[str]:
    return [f"denoiser.channel_mult={[1, 2][:levels]}".replace(" ", ""), f"denoiser.attention_levels=[{levels - 1}]"]


STUDIES: dict[str, Study] = {s.name: s for s in [
    Study("regularizer", "Which phase-1 latent serves diffusion best: KL, VQ, a plain AE, or a bounded AE "
          "trained with latent noise?", _IMAGE, {
              "kl": ["regularizer=kl"],
              "vq": ["regularizer=vq"],
              "ae": ["regularizer=ae"],
              "ae_robust": ["regularizer=ae", "regularizer.bound=tanh", "regularizer.variance_weight=1e-3",
                            "regularizer.noise_std=0.1"],
          }),
    Study("kl_weight", "Is a higher KL weight better for generation, at what cost in reconstruction?",
          [*_IMAGE, "regularizer=kl"],
          {f"kl_{w:g}": [f"regularizer.kl_weight={w:g}"] for w in (1e-7, 1e-5, 1e-3, 1e-2)},
          quick_variants={f"kl_{w:g}": [f"regularizer.kl_weight={w:g}"] for w in (1e-6, 1e-4, 1e-2)}),
    Study("latent_scale", "Does normalizing the latents by measured statistics matter, per channel or with one "
          "global scale (Stable Diffusion's 0.18215), compared with none?", [*_IMAGE, "regularizer=kl"],
          {name: [f"data.latent_scale={name}"] for name in ("per_channel", "global", "none")}, quick=_QUICK_STEPS),
    Study("compression", "At an equal latent size, is trading spatial resolution for channels (f=4 c=4, f=8 c=16, "
          "f=16 c=64) good for reconstruction and for generation?", [*_IMAGE, "regularizer=kl"], {
              "f4_c4": ["autoencoder.channel_mult=[1,2,4]", "autoencoder.latent_channels=4", *_compression_unet(2)],
              "f8_c16": ["autoencoder.channel_mult=[1,2,4,4]", "autoencoder.latent_channels=16",
                         *_compression_unet(2)],
              "f16_c64": ["autoencoder.channel_mult=[1,2,4,4,4]", "autoencoder.latent_channels=64",
                          *_compression_unet(2)],
          }),
    Study("process", "Which diffusion process trains the best class-conditional model in the same time: VP with "
          "eps or v + min-SNR, rectified flow or EDM, with a U-Net and with a DiT (25 sampler steps, guidance 3)?",
          [*_IMAGE_DATA, "sampler.steps=25", "sample.guidance=3"],
          {f"{p}_{d}": [*po, *do] for d, do in _PROCESS_DENOISERS.items() for p, po in _PROCESSES.items()},
          # phase 1 by steps (the same autoencoder in every variant), phase 2 by time: what each buys in 2 minutes
          quick=["phase1.max_steps=120" if o == "phase1.max_steps=1000000" else o for o in _QUICK
                 if not o.startswith(("denoiser.", "phase1.max_minutes"))],
          full=[o.replace("diffusion.max_steps=50000", "diffusion.max_steps=20000") for o in _FULL]),
    Study("voxel_latent", "Should 3D data get a 3D latent, or a 2D one with depth folded into channels "
          "(equal latent size)?", ["modality=voxel", "trainer.limit_val_batches=2"],
          {"3d": [], "2d": ["preset=voxel_2d"]},
          quick=["preset=voxel_quick", "modality.num_shapes=600", "phase1.max_minutes=2.5", "diffusion.max_minutes=2.5",
                 "phase1.max_steps=1000000", "diffusion.max_steps=1000000", "sample.num_samples=6"],
          quick_variants={"3d": [], "2d": ["modality.layout=2d", "denoiser=unet2d", "denoiser.channel_mult=[1,2]",
                                           "denoiser.attention_levels=[1]", "autoencoder.channels=32",
                                           "autoencoder.latent_channels=16"]},
          per_class={"quick": 10, "full": 50}, classifier={"width": 8}),
    Study("audio_latent", "Should a log-mel spectrogram get a 2D latent (mel bins a spatial axis, filters shared "
          "across frequency: AudioLDM) or a 1D one (mel bins as channels), at an equal latent size; and how much "
          "compression, 4x or 16x?", ["modality=audio"], _AUDIO_LATENT,
          quick=["trainer=cpu", "phase1.max_minutes=3", "diffusion.max_minutes=3", "phase1.max_steps=1000000",
                 "diffusion.max_steps=1000000", "sample.num_samples=10"],
          per_class={"quick": 20, "full": 50}),
]}


# ---------------------------------------------------------------------------- one variant
def train_variant(cfg: Any, run_dir: Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Both phases through :func:`mmldm.training.run.train` (a fresh run); its metrics, wall time and
    wall-clock start (``time.time()``). ``callbacks``: extra phase-2 callbacks."""
    import shutil

    from .training.run import train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    started, start = time.time(), time.perf_counter()
    train(cfg, run_dir, diffusion_callbacks=callbacks)
    return {"train_seconds": round(time.perf_counter() - start, 1), "started": started,
            "metrics": json.loads((run_dir / "metrics.json").read_text())}


class Judges:
    """One independent classifier per distinct data setup (variants that share the modality config share it)."""

    def __init__(self, study: Study, form: str, seed: int, epochs: int | None = None) -> None:
        self.study, self.form, self.seed, self.epochs = study, form, seed, epochs
        self._cache: dict[str, tuple[Any, dict[str, Any], Any]] = {}

    def get(self, modality_cfg: Any) -> tuple[Any, dict[str, Any], Any]:
        """``(classifier, its report, held-out samples)`` for the data ``modality_cfg`` describes."""
        from omegaconf import OmegaConf

        from .build import build_modality
        from .evaluation.classifier import train_classifier

        key = json.dumps(OmegaConf.to_container(modality_cfg, resolve=True), sort_keys=True)
        if key not in self._cache:
            import torch

            modality = build_modality(modality_cfg)
            train, val = modality.dataset("train"), modality.dataset("val")
            options = {"epochs": 8, **self.study.classifier, **({"epochs": self.epochs} if self.epochs else {})}
            model, report = train_classifier(train, val, modality.dims, modality.channels, modality.num_classes,
                                             seed=self.seed, **options)
            real = torch.stack([val[i]["x"] for i in range(len(val))])
            self._cache[key] = (model, report, real)
        return self._cache[key]


def _judged(judged: dict[str, Any]) -> dict[str, Any]:
    return {k: judged[k] for k in ("class_accuracy", "class_accuracy_n", "class_accuracy_ci", "frechet_distance",
                                   "sampling_seconds")}


def judge_curve(pipe: Any, snapshots: Any, started: float, judge: Any) -> list[dict[str, Any]]:
    """Judge every weight snapshot of a run (:class:`~mmldm.training.callbacks.WeightSnapshots`) with
    ``judge(pipe) -> metrics``; rows with the wall-clock minutes from the start of the run (both phases,
    everything before phase 2 included) to the snapshot. Leaves ``pipe`` with its exported weights."""
    import torch
    from torch import nn

    model = nn.ModuleDict({"denoiser": pipe.denoiser, "conditioners": nn.ModuleList(pipe.conditioners)})
    exported = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    try:
        for row in snapshots.rows:
            model.load_state_dict(torch.load(snapshots.out / row["file"], weights_only=True))
            rows.append({"step": row["step"], "phase2_seconds": row["seconds"],
                         "minutes": round((row["time"] - started) / 60, 5), **_judged(judge(pipe))})
    finally:
        model.load_state_dict(exported)
    return rows


def first_reaching(curve: Sequence[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first snapshot row of ``curve`` whose class accuracy reaches ``target`` (None: none does); its
    ``minutes`` are the time to quality."""
    return next((r for r in curve if r["class_accuracy"] >= target), None)


def run_variant(study: Study, form: str, name: str, extra: Sequence[str], out: Path, judges: Judges,
                seed: int, per_class: int, curve_every: float | None = None,
                sweep_steps: Sequence[int] = ()) -> dict[str, Any]:
    """Train, then judge one variant; the row of the report.

    ``curve_every``: also save the phase-2 weights every that many seconds of training and judge each
    snapshot (the ``curve``: accuracy against wall-clock minutes of both phases). ``sweep_steps``: also
    judge the final model with each of these sampler step counts.
    """
    from .configuration import compose
    from .evaluation.generation import judge_samples
    from .pipeline import LatentDiffusion
    from .preview import save_samples
    from .training.callbacks import WeightSnapshots

    overrides = study.overrides(form, name, extra)
    cfg = compose([*overrides, f"seed={seed}"])
    steps, guidance = JUDGE_STEPS, JUDGE_GUIDANCE
    snapshots = WeightSnapshots(curve_every, out / name / "snapshots") if curve_every else None
    trained = train_variant(cfg, out / name, [snapshots] if snapshots else ())
    classifier, clf_report, real = judges.get(cfg.modality)
    pipe = LatentDiffusion.from_pretrained(out / name / "export")

    def judge(pipe: Any, steps: int = steps) -> dict[str, Any]:
        return judge_samples(pipe, classifier, real, per_class, steps=steps, guidance=guidance, seed=seed)[0]

    judged, samples, labels = judge_samples(pipe, classifier, real, per_class, steps=steps, guidance=guidance,
                                            seed=seed)
    frechet_sets = frechet_beside_null(pipe, classifier, real, samples, seed)
    every = max(1, per_class // 2)
    save_samples(pipe.modality, samples[::every], out / name / "judged", cond={"class": labels[::every]})
    ae = trained["metrics"].get("autoencoder", {})
    row = {
        "status": "ok", "overrides": overrides, "train_seconds": trained["train_seconds"],
        "diffusion_steps": trained["metrics"].get("diffusion", {}).get("steps"),
        "reconstruction": ae.get("reconstruction", {}),
        "latent": {k: ae.get("latent", {}).get(k) for k in ("shape", "channel_std", "kl_per_element")},
        "robustness": ae.get("robustness", {}),
        "generation": {**_judged(judged), "steps": steps, "guidance": guidance},
        "modality_generation": judged["modality"],
        "modality_sets": judged["modality_sets"],
        "frechet_sets": frechet_sets,
        **{f"classifier_{k}": clf_report[k] for k in ("val_accuracy", "val_accuracy_n", "val_accuracy_ci")},
    }
    if snapshots is not None:
        row["curve"] = judge_curve(pipe, snapshots, trained["started"], judge)
    if sweep_steps:
        row["steps_sweep"] = {str(n): _judged(judge(pipe, n)) for n in sweep_steps}
    return row


def frechet_beside_null(pipe: Any, classifier: Any, real: Any, samples: Any, seed: int) -> dict[str, Any]:
    """The Frechet distance in the judge's features at equal set sizes over 5 random subsets, beside its
    real-vs-real null (two disjoint held-out subsets of the same size: the floor a perfect generator
    scores, which is not 0 at these sizes)."""
    from .evaluation.classifier import predict
    from .evaluation.frechet import frechet_distance
    from .evaluation.stats import equal_set_size, repeated_set_metrics

    final = pipe.modality.finalize
    real_feats, sample_feats = predict(classifier, final(real))[1], predict(classifier, final(samples))[1]
    size = equal_set_size(len(sample_feats), len(real_feats))
    return repeated_set_metrics(lambda a, b: {"frechet_distance": frechet_distance(a, b)}, real_feats,
                                sample_feats, size, seed=seed)


# ---------------------------------------------------------------------------- a study
def run_study(study: Study, form: str = "quick", out: str | Path = "ablations", variants: Sequence[str] | None = None,
              extra: Sequence[str] = (), seed: int = 0, per_class: int | None = None,
              classifier_epochs: int | None = None, curve_every: float | None = None, target: float = 0.97,
              sweep_steps: Sequence[int] = ()) -> dict[str, Any]:
    """Every variant in turn (same seed and budget); writes and returns the report.

    ``per_class`` (samples judged per class) and ``classifier_epochs`` default to the study's.
    ``curve_every`` (seconds): judge phase-2 snapshots taken that often, and report the wall-clock minutes
    (both phases) each variant needs to reach class accuracy ``target``. ``sweep_steps``: judge each final
    model with these sampler step counts too.
    """
    from tqdm.auto import tqdm

    if form not in FORMS:
        raise ValueError(f"form={form!r} is not valid; choose one of: {', '.join(FORMS)}")
    table = study.variant_table(form)
    chosen = list(variants or table)
    unknown = [v for v in chosen if v not in table]
    if unknown:
        raise ValueError(f"study '{study.name}' has no variant {unknown}; its variants: {', '.join(table)}")
    if curve_every is not None and not curve_every > 0:
        raise ValueError(f"--curve-every must be > 0 seconds, got {curve_every}")
    if not 0 < target <= 1:
        raise ValueError(f"--target is a class accuracy in (0, 1], got {target}")
    if any(n < 1 for n in sweep_steps):
        raise ValueError(f"--sweep-steps must be >= 1, got {list(sweep_steps)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    judges, rows, start = Judges(study, form, seed, classifier_epochs), {}, time.perf_counter()
    per_class = per_class or study.per_class[form]
    for name in tqdm(chosen, desc=f"ablate {study.name} ({form})", unit="variant"):
        t0 = time.perf_counter()
        print(f"[ablate {study.name}] {name}: training and judging ...", flush=True)
        try:
            rows[name] = run_variant(study, form, name, extra, out, judges, seed, per_class, curve_every,
                                     sweep_steps)
        except Exception as e:  # noqa: BLE001 - one failing variant is reported, the others still run
            log.error("variant %s failed:\n%s", name, traceback.format_exc())
            rows[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                          "overrides": study.overrides(form, name, extra)}
        print(f"[ablate {study.name}] {name}: {rows[name]['status']} after {time.perf_counter() - t0:.0f} s", flush=True)
    report = {"study": study.name, "question": study.question, "form": form, "seed": seed, "per_class": per_class,
              "extra": list(extra),
              "budget": [o for o in getattr(study, form) if "max_minutes" in o or "max_steps" in o],
              "wall_seconds": round(time.perf_counter() - start, 1), "variants": rows,
              "judge": {"sampler": "dpmpp_2m", "steps": JUDGE_STEPS, "guidance": JUDGE_GUIDANCE},
              **({"curve_every": curve_every, "target": target} if curve_every else {})}
    write_report(report, out)
    return report


# ---------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return f"{min(v):.3g}-{max(v):.3g}" if v and all(isinstance(x, (int, float)) for x in v) else str(v)
    return "" if v is None else str(v)


def _share(value: float | None, n: int | None) -> str:
    """A share with its count and Wilson 95% interval, e.g. ``84.5% (169/200, 95% CI 78.8-88.9%)``;
    the bare value when ``n`` is not known."""
    from .evaluation.stats import format_share

    return format_share(value, n)


def _set_cell(r: dict[str, Any], key: str) -> str:
    """A set metric: mean ± sd over repeats and the real-vs-real null beside it (the bare value for a
    report written before repeats were measured)."""
    from .evaluation.stats import format_mean_sd

    sets = r.get("modality_sets")
    if not sets or key not in sets["generated"]:
        return _fmt(r["modality_generation"].get(key))
    return f"{format_mean_sd(sets['generated'][key])} (null {format_mean_sd(sets['null'].get(key))})"


def _frechet_cell(r: dict[str, Any]) -> str:
    """The Frechet distance at equal sizes beside its null (the whole-set value for an older report)."""
    from .evaluation.stats import format_mean_sd

    sets = r.get("frechet_sets")
    if not sets:
        return _fmt(r["generation"]["frechet_distance"])
    return (f"{format_mean_sd(sets['generated']['frechet_distance'])} "
            f"(null {format_mean_sd(sets['null']['frechet_distance'])}, n={sets['size']})")


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Markdown table: one row per variant, failures included."""
    ok = [r for r in report["variants"].values() if r["status"] == "ok"]
    rec = sorted({k for r in ok for k in r["reconstruction"]})
    own = sorted({k for r in ok for k, v in r["modality_generation"].items() if isinstance(v, (int, float))})
    header = ["variant", *rec, "latent shape", "latent std", "class accuracy (n, 95% CI)", "Frechet", *own,
              "phase-2 steps", "train s", "status"]
    rows = []
    for name, r in report["variants"].items():
        if r["status"] != "ok":
            rows.append([name, *[""] * (len(header) - 2), f"failed: {r['error']}"])
            continue
        gen = r["generation"]
        rows.append([name, *[_fmt(r["reconstruction"].get(k)) for k in rec], "x".join(map(str, r["latent"]["shape"] or [])),
                     _fmt(r["latent"]["channel_std"]), _share(gen["class_accuracy"], gen.get("class_accuracy_n")),
                     _frechet_cell(r), *[_set_cell(r, k) for k in own],
                     _fmt(r["diffusion_steps"]), _fmt(r["train_seconds"]), "ok"])
    return header, rows


def _set_note(report: dict[str, Any]) -> list[str]:
    """The sentence that says how the set metrics (1-NNA, COV, ...) were measured."""
    ok = [r for r in report["variants"].values() if r["status"] == "ok" and r["modality_generation"]]
    if not ok:
        return []
    sets = [r["modality_sets"] for r in ok if r.get("modality_sets")]
    if not sets:
        return ["", "Set metrics (" + ", ".join(sorted(ok[0]["modality_generation"])) + "): one comparison of the whole "
                "generated and held-out sets, measured before repeats and a real-vs-real reference were recorded; "
                "`python -m benchmarks.null_reference` measures what a perfect generator scores at such sizes."]
    sizes = sorted({(s["size"], s["repeats"]) for s in sets})
    return ["", "Set metrics: mean ± sd over " + ", ".join(f"{rep} random subsets of {size} generated vs {size} "
            "held-out items" for size, rep in sizes) + "; null: the same metric between two disjoint held-out "
            "subsets of that size (what a perfect generator scores)."]


def markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    lines = [f"# Ablation: {report['study']} ({report['form']})", "", report["question"], "",
             f"Seed {report['seed']}; budget per variant: {' '.join(report['budget'])}; the whole study took "
             f"{report['wall_seconds'] / 60:.1f} min.", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    judges = {_share(r.get("classifier_val_accuracy"), r.get("classifier_val_accuracy_n"))
              for r in report["variants"].values() if r["status"] == "ok"}
    lines += ["", "Class accuracy: the share of class-conditional samples an independent classifier labels as "
              f"their class, with the samples judged and the Wilson 95% interval (the classifier's own held-out "
              f"accuracy on real data: {'; '.join(sorted(judges))}); "
              "Frechet: the distance of their features to the held-out data's, mean ± sd over 5 random subsets of n "
              "samples and n held-out items, beside the null (two disjoint held-out subsets of n: what a perfect "
              "generator scores). Reconstruction: held-out data. "
              + ("Budgets in minutes give every variant the same wall clock; the phase-2 steps show the compute "
                 "each got (fewer when the machine was busier)." if any("max_minutes" in b for b in report["budget"])
                 else "Step budgets give every variant the same compute (and, with one seed, the same phase 1 "
                 "when phase-1 settings do not differ)."),
              *_set_note(report), *(["", report["counts_note"]] if report.get("counts_note") else []),
              *[line for note in report.get("notes", []) for line in ("", note)],
              "", "![reconstruction vs generation](report.png)", ""]
    lines += _curve_section(report) + _sweep_section(report)
    if report["extra"]:
        lines.insert(4, f"Extra overrides: `{' '.join(report['extra'])}`")
    return "\n".join(lines)


def _curve_section(report: dict[str, Any]) -> list[str]:
    """Time to quality: per variant, the minutes (both phases) to the target accuracy and the curve."""
    curves = {n: r["curve"] for n, r in report["variants"].items() if r["status"] == "ok" and r.get("curve")}
    if not curves:
        return []
    target = report.get("target", 0.97)
    lines = ["## Time to quality", "",
             f"Phase-2 weights saved every {report['curve_every']:g} s of training and judged like the final model "
             f"({report['per_class']} samples per class). Minutes are wall clock from the start of the run: phase 1, "
             "its diagnostics and export, the latent cache and phase 2 up to the snapshot (judging excluded).", "",
             f"| variant | minutes to >= {target:.0%} | accuracy there (n, 95% CI) | best (minutes) | curve: minutes "
             "accuracy |", "| --- | --- | --- | --- | --- |"]
    for name, curve in curves.items():
        hit = first_reaching(curve, target)
        best = max(curve, key=lambda r: r["class_accuracy"])
        last = curve[-1]["minutes"]
        reached = f"{hit['minutes']:.1f}" if hit else f"not reached in {last:.1f}"
        there = _share(hit["class_accuracy"], hit.get("class_accuracy_n")) if hit else ""
        points = ", ".join(f"{r['minutes']:.1f} {r['class_accuracy']:.1%}" for r in curve)
        lines.append(f"| {name} | {reached} | {there} | {best['class_accuracy']:.1%} ({best['minutes']:.1f}) | "
                     f"{points} |")
    return lines + ["", "![class accuracy against minutes](curve.png)", ""]


def _sweep_section(report: dict[str, Any]) -> list[str]:
    """Quality against sampler steps: class accuracy and Frechet of each final model per step count."""
    sweeps = {n: r["steps_sweep"] for n, r in report["variants"].items() if r["status"] == "ok" and r.get("steps_sweep")}
    if not sweeps:
        return []
    counts = sorted({int(k) for s in sweeps.values() for k in s})
    judge = report.get("judge", {})
    lines = ["## Quality against sampler steps", "",
             f"The final model of each variant, sampled with {judge.get('sampler', 'dpmpp_2m')} at guidance "
             f"{judge.get('guidance', 3):g}: class accuracy (n, 95% CI) / Frechet.", "",
             "| variant | " + " | ".join(f"{n} steps" for n in counts) + " |", "|" + " --- |" * (len(counts) + 1)]
    for name, sweep in sweeps.items():
        cells = [(f"{_share(g['class_accuracy'], g.get('class_accuracy_n'))} / {_fmt(g['frechet_distance'])}"
                  if (g := sweep.get(str(n))) else "") for n in counts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_curves(report: dict[str, Any], path: Path) -> Path | None:
    """Class accuracy (with Wilson 95% intervals) against wall-clock minutes, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {n: r["curve"] for n, r in report["variants"].items() if r["status"] == "ok" and r.get("curve")}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        x = [r["minutes"] for r in curve]
        y = [r["class_accuracy"] for r in curve]
        err = [[r["class_accuracy"] - r["class_accuracy_ci"][0] for r in curve],
               [r["class_accuracy_ci"][1] - r["class_accuracy"] for r in curve]]
        ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=name, linestyle="--" if "dit" in name else "-")
    ax.axhline(report.get("target", 0.97), color="gray", lw=0.8, ls=":")
    ax.set_xlabel("wall-clock minutes from the start of the run (both phases)")
    ax.set_ylabel("class accuracy, 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"ablation '{report['study']}' ({report['form']}): time to quality", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Reconstruction quality (x) vs generation quality (y), one labelled point per successful variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {n: r for n, r in report["variants"].items() if r["status"] == "ok" and r["reconstruction"]}
    if not ok:
        return None
    rec_key = sorted(next(iter(ok.values()))["reconstruction"])[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (key, label) in zip(axes, (("class_accuracy", "class accuracy, 95% CI (higher is better)"),
                                       ("frechet_distance", "Frechet distance (lower is better)"))):
        for name, r in ok.items():
            x, y = r["reconstruction"][rec_key], r["generation"][key]
            ci = r["generation"].get(f"{key}_ci")  # the Wilson 95% interval of a share, as an error bar
            ax.errorbar([x], [y], yerr=[[y - ci[0]], [ci[1] - y]] if ci else None, fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"held-out reconstruction {rec_key}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"ablation '{report['study']}' ({report['form']}): reconstruction vs generation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    plot(report, out / "report.png")
    plot_curves(report, out / "curve.png")
    (out / "report.md").write_text(markdown(report))


def backfill_counts(report: dict[str, Any]) -> list[str]:
    """Add the n and Wilson 95% interval of each variant's class accuracy and classifier accuracy to a report
    written before they were stored (in place); returns the variants filled.

    The counts are recovered, not re-measured: n of the samples is ``per_class`` (the report's, else the
    study's default for its form) times the modality's classes, n of the classifier's test is the size of
    the held-out set, both from the variant's composed config; a count is kept only where ``share * n`` is
    a whole number (a ``--per-class`` the report did not record fails that check and is left out).
    """
    from .build import build_modality
    from .configuration import compose
    from .evaluation.stats import proportion_from_share

    study = STUDIES.get(report["study"])
    per_class = report.get("per_class") or (study.per_class[report["form"]] if study else None)
    filled = []
    for name, r in report["variants"].items():
        if r["status"] != "ok" or "class_accuracy_n" in r["generation"] or not per_class:
            continue
        modality = build_modality(compose([*r["overrides"], f"seed={report['seed']}"]).modality)
        gen = proportion_from_share(r["generation"]["class_accuracy"], per_class * modality.num_classes)
        val = proportion_from_share(r.get("classifier_val_accuracy"), len(modality.dataset("val")))
        if gen:
            r["generation"].update(class_accuracy_n=gen.n, class_accuracy_ci=[gen.low, gen.high])
        if val:
            r.update(classifier_val_accuracy_n=val.n, classifier_val_accuracy_ci=[val.low, val.high])
        if gen or val:
            filled.append(name)
    if filled:
        report["counts_note"] = (f"Counts of {', '.join(filled)} recovered from the stored shares (report written "
                                 f"before counts were stored): samples judged = {per_class} per class x classes, "
                                 "classifier test = the held-out set; each share x n is a whole number.")
    return filled


def rerender(out: str | Path) -> dict[str, Any]:
    """Rewrite ``report.md`` and ``report.png`` (and ``report.json``, counts added by :func:`backfill_counts`)
    of a finished study from its ``report.json``, without training anything."""
    out = Path(out)
    path = out / "report.json"
    if not path.is_file():
        raise ValueError(f"{out} has no report.json to render (a study's output folder holds one)")
    report = json.loads(path.read_text())
    backfill_counts(report)
    write_report(report, out)
    return report


# ---------------------------------------------------------------------------- command line
def study_help() -> str:
    lines = []
    for s in STUDIES.values():
        lines.append(f"  {s.name:<13} {s.question}")
        lines.append(f"  {'':<13} variants: {', '.join(s.variants)}"
                     + (f" (quick: {', '.join(s.quick_variants)})" if s.quick_variants else ""))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``mmldm ablate <study> [--quick|--full] [--out DIR] [--variants ...] [--seed N] [key=value ...]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="mmldm ablate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every variant of a study with the same seed and budget, measure reconstruction and "
                    "generation, and write report.md, report.json and report.png.",
        epilog="studies:\n" + study_help() + "\n\nexamples:\n  mmldm ablate regularizer --quick\n"
               "  mmldm ablate kl_weight --full modality.source=mnist modality.root=/data/mnist\n"
               "  mmldm ablate voxel_latent --quick --out ablations/voxel\n"
               "  mmldm ablate process --curve-every 30 --sweep-steps 5 10 25 50\n"
               "  mmldm ablate --report-from ablations/regularizer_quick")
    parser.add_argument("study", nargs="?", help="one of: " + ", ".join(STUDIES))
    parser.add_argument("--report-from", type=Path, metavar="DIR",
                        help="only re-render DIR/report.md and report.png from DIR/report.json (no training)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--quick", dest="form", action="store_const", const="quick",
                      help="CPU-sized: 0.75 + 2 minutes of training per variant, a 32-channel U-Net (the default)")
    form.add_argument("--full", dest="form", action="store_const", const="full",
                      help="step budgets for real hardware (20,000 + 50,000 steps per variant)")
    parser.add_argument("--out", type=Path, help="report folder (default: ablations/<study>_<form>)")
    parser.add_argument("--variants", nargs="+", help="only these variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, help="samples judged per class (default: quick 20, full 100; voxels 10/50)")
    parser.add_argument("--classifier-epochs", type=int, help="epochs of the independent classifier (default 8)")
    parser.add_argument("--curve-every", type=float, metavar="SECONDS",
                        help="save the phase-2 weights every SECONDS of training and judge each snapshot: the "
                             "report gains a time-to-quality table (minutes of both phases to --target) and curve.png")
    parser.add_argument("--target", type=float, default=0.97,
                        help="class accuracy the time-to-quality table measures the minutes to (default 0.97)")
    parser.add_argument("--sweep-steps", type=int, nargs="+", default=[], metavar="N",
                        help="also judge each final model with these sampler step counts (e.g. 5 10 25 50)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides applied to every variant")
    args = parser.parse_intermixed_args(argv)
    if args.report_from:
        try:
            print(markdown(rerender(args.report_from)))
        except ValueError as e:
            print(f"mmldm ablate: error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.study is None:
        print(f"mmldm ablate: error: name a study ({', '.join(STUDIES)}) or --report-from DIR", file=sys.stderr)
        return 2
    if args.study not in STUDIES:
        print(f"mmldm ablate: error: unknown study '{args.study}'; studies: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    form_name = args.form or "quick"
    study = STUDIES[args.study]
    out = args.out or Path("ablations") / f"{study.name}_{form_name}"
    try:
        report = run_study(study, form_name, out, args.variants, args.overrides, args.seed, args.per_class,
                           args.classifier_epochs, args.curve_every, args.target, args.sweep_steps)
    except ValueError as e:
        print(f"mmldm ablate: error: {e}", file=sys.stderr)
        return 2
    print(markdown(report))
    failed = [n for n, r in report["variants"].items() if r["status"] != "ok"]
    print(f"mmldm ablate: report in {out} (report.md, report.json, report.png)"
          + (f"; {len(failed)} variant(s) failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
