"""Vocoders on real held-out clips: waveform distances, the re-analysed log-mel, a judge's accuracy, speed.

For each vocoder (Griffin-Lim with 32 and with 100 iterations; the modality's configured vocoder when it is
not Griffin-Lim, e.g. a trained one from ``--vocoder-path``), on the held-out ("val") clips of spoken digits (FSDD,
``preset=audio_fsdd``: the speaker theo) cropped or padded, centred, to the clip length exactly as the
dataset does (:func:`mmldm_audio.features.fix_length`):

1. the real clip's features are vocoded and the waveform is compared with the real one
   (:mod:`mmldm_audio.metrics`): the multi-resolution STFT distance (Parallel WaveGAN's three resolutions
   scaled to the sample rate) and the log-spectral distance in dB (the features' STFT, linear frequency),
   each the mean over clips with a 95% t-interval;
2. the vocoded waveform is analysed again into log-mel and compared with the real log-mel (L1, nepers);
3. the real-time factor: seconds of compute per second of audio on one CPU thread (median of repeats);
4. with a judge (``--judge classifier.pt`` or ``--train-judge``), the share of vocoded clips that an
   independent digit classifier (:mod:`mmldm.evaluation.classifier`) labels correctly, with n and a Wilson
   95% interval, beside its share on the real clips.

Results go to ``benchmarks/results/vocoder/results.{json,md}``.

Examples::

    python -m benchmarks.vocoder                                   # FSDD under ../shared/data
    python -m benchmarks.vocoder --quick                           # 100 clips, 3 timing repeats
    python -m benchmarks.vocoder --train-judge                     # also judge every vocoder's output
    python -m benchmarks.vocoder --judge benchmarks/results/generation_fsdd/classifier.pt
    python -m benchmarks.vocoder --vocoder-path runs/vocoder     # the folder `mmldm train-vocoder` wrote
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks import save_results

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FSDD = ["modality=audio", "preset=audio_fsdd"]
QUICK_CLIPS = 100
#: per-clip measures reported as means with 95% t-intervals
INTERVALS = ("mr_stft", "mr_stft_feature_floor", "lsd_db", "logmel_l1")


# ---------------------------------------------------------------------------- measuring
def mean_interval(values: Any, confidence: float = 0.95) -> dict[str, float]:
    """``{"mean", "low", "high", "sd", "n"}`` of per-clip ``values``: Student's t interval of the mean,
    ``mean +- t_{(1+confidence)/2, n-1} sd / sqrt(n)`` (``sd`` with ``ddof=1``; NaN bounds for one value)."""
    import numpy as np
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n, mean = len(x), float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else float("nan")
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n}


def held_out(modality: Any, split: str = "val", max_clips: int | None = None) -> tuple[Any, Any]:
    """The clips of ``split`` (``max_clips`` of them evenly spaced in the split's order, which groups files by
    name, so every class is present) as ``waves [N, length]``, cropped or padded centred like the dataset's
    items, and their labels ``[N]`` (``None`` without labels)."""
    import numpy as np
    import torch

    from mmldm_audio.features import fix_length

    data = modality.waveforms(split)
    n = len(data.waves) if max_clips is None else min(max_clips, len(data.waves))
    idx = np.linspace(0, len(data.waves) - 1, n).round().astype(int)
    waves = torch.stack([fix_length(data.waves[i], modality.length, random_crop=False) for i in idx])
    labels = None if data.labels is None else torch.as_tensor(data.labels[idx], dtype=torch.long)
    return waves, labels


@dataclass
class Judge:
    """A digit classifier and the feature normalization it was trained with."""

    classifier: Any  # FeatureClassifier
    stats: dict[str, Any]  # {"mean", "std"} [n_mels]
    layout: str  # "1d" or "2d"
    report: dict[str, Any]  # its training report (held-out accuracy with n and interval)
    source: str  # where it came from, for the report

    def hits(self, logmel: Any, labels: Any) -> Any:
        """Boolean ``[B]``: the classifier labels the log-mel ``[B, n_mels, T]`` with ``labels``."""
        from mmldm.evaluation.classifier import predict
        from mmldm_audio.features import normalize

        logits, _ = predict(self.classifier, normalize(logmel, self.stats, self.layout))
        return logits.argmax(-1) == labels


def _measure(modality: Any, vocoder: Any, waves: Any, x: Any, labels: Any, judge: Judge | None,
             batch_size: int) -> dict[str, Any]:
    """Per-clip values ``{name: [N]}`` of one vocoder on real ``waves [N, L]`` with features ``x``."""
    import torch

    from mmldm_audio import metrics

    cfg, parts = modality.cfg, []
    with torch.no_grad():
        for w, xb, yb in zip(waves.split(batch_size), x.split(batch_size),
                             (labels if labels is not None else torch.zeros(len(x))).split(batch_size)):
            v = vocoder(xb).float().cpu()  # (b, L)
            mr = metrics.multi_resolution_stft_terms(w, v, cfg.sample_rate)
            logmel_v = modality.logmel(v)
            row = {"mr_stft": mr["spectral_convergence"] + mr["log_magnitude_l1"],
                   "mr_stft_sc": mr["spectral_convergence"], "mr_stft_log_mag": mr["log_magnitude_l1"],
                   # the same with the features' floor: the vocoder's noise in digital silence left out
                   "mr_stft_feature_floor": metrics.multi_resolution_stft_distance(w, v, cfg.sample_rate,
                                                                                  power_floor=cfg.log_floor),
                   "lsd_db": metrics.wave_log_spectral_distance(w, v, cfg.n_fft, cfg.hop_length, cfg.log_floor),
                   "logmel_l1": metrics.logmel_l1(modality.logmel(w), logmel_v)}
            if judge is not None and labels is not None:
                row["judge_hits"] = judge.hits(logmel_v, yb)
            parts.append(row)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def compare_vocoders(modality: Any, vocoders: Mapping[str, Any], *, split: str = "val", max_clips: int | None = None,
                     batch_size: int = 32, rtf_clips: int = 8, rtf_repeats: int = 5,
                     judge: Judge | None = None) -> dict[str, Any]:
    """Every vocoder of ``vocoders`` (name -> ``Vocoder``) on the real clips of ``split`` (see the module).

    Returns:
        ``{"clips", "split", "settings", "real": {...}, "vocoders": {name: {"mr_stft", "mr_stft_feature_floor",
        "lsd_db", "logmel_l1": mean_interval, "mr_stft_sc", "mr_stft_log_mag": means of the two terms of
        "mr_stft", "n", "rtf": real_time_factor result[,
        "judge_accuracy", "judge_accuracy_n", "judge_accuracy_ci"]}}[, "judge_paired": judge_paired(...)]}``;
        ``"real"`` holds the judge's share on the real clips themselves; ``"settings"`` the feature and STFT
        settings and ``"silent_share"``, the share of the real clips' samples that are exactly 0 (padding).
    """
    from mmldm.evaluation.classifier import accuracy_stats
    from mmldm_audio import metrics

    waves, labels = held_out(modality, split, max_clips)
    x = modality.features(waves)
    out: dict[str, Any] = {"clips": len(waves), "split": split, "vocoders": {}, "real": {}, "settings": {
        "silent_share": float((waves == 0).float().mean()),
        "sample_rate": modality.cfg.sample_rate, "clip_samples": modality.length, "n_fft": modality.cfg.n_fft,
        "hop_length": modality.cfg.hop_length, "n_mels": modality.cfg.n_mels, "lsd_power_floor": modality.cfg.log_floor,
        "mr_stft_resolutions": metrics.stft_resolutions(modality.cfg.sample_rate), "rtf_clips": rtf_clips,
        "rtf_repeats": rtf_repeats}}
    hits: dict[str, Any] = {}  # per-clip verdicts, for the paired comparisons below
    if judge is not None and labels is not None:
        hits["real"] = judge.hits(modality.logmel(waves), labels)
        out["real"] = accuracy_stats(hits["real"], "judge_accuracy")
    for name, vocoder in vocoders.items():
        print(f"[vocoder] {name}: {len(waves)} clips ...", flush=True)
        values = _measure(modality, vocoder, waves, x, labels, judge, batch_size)
        row: dict[str, Any] = {k: mean_interval(values[k].numpy()) for k in INTERVALS}
        row |= {k: float(values[k].mean()) for k in ("mr_stft_sc", "mr_stft_log_mag")} | {"n": len(waves)}
        if "judge_hits" in values:
            hits[name] = values["judge_hits"]
            row |= accuracy_stats(values["judge_hits"], "judge_accuracy")
        row["rtf"] = metrics.real_time_factor(vocoder, x[:rtf_clips], modality.cfg.sample_rate, rtf_repeats)
        out["vocoders"][name] = row
    if hits:
        out["judge_paired"] = judge_paired(hits)
    return out


def judge_paired(hits: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every vocoder's judge verdicts against Griffin-Lim's and the real clips' on the same clips
    (:func:`mmldm.evaluation.stats.paired_comparison`, exact McNemar): ``{"<a> vs <b>": {...}}`` for each
    vocoder ``a`` that is not Griffin-Lim and each reference ``b`` (the Griffin-Lim rows and ``real``)."""
    from mmldm.evaluation.stats import paired_comparison

    refs = [k for k in hits if k == "real" or k.startswith("griffinlim")]
    return {f"{a} vs {b}": paired_comparison(hits[a].numpy(), hits[b].numpy())
            for a in hits if a not in refs for b in refs}


# ---------------------------------------------------------------------------- vocoders and judges
def default_vocoders(modality: Any) -> dict[str, Any]:
    """Griffin-Lim with 32 and 100 iterations, and the modality's configured vocoder when it is another
    (``modality.vocoder``, e.g. a trained one from ``modality.vocoder_path``), named after it."""
    from mmldm_audio.config import GriffinLimConfig
    from mmldm_audio.vocoder import GriffinLimVocoder

    out = {f"griffinlim_{n}": modality.vocoder(GriffinLimConfig(name="griffinlim", n_iter=n)) for n in (32, 100)}
    configured = modality.vocoder()
    if not isinstance(configured, GriffinLimVocoder):
        out[str(getattr(modality.cfg, "vocoder", type(configured).__name__))] = configured
    return out


def trained_vocoder_overrides(path: Path) -> list[str]:
    """``modality.vocoder=<name>`` and ``modality.vocoder_path=<path>`` for the folder ``mmldm train-vocoder``
    wrote (its ``config.yaml`` names the vocoder); the modality checks that its features fit."""
    from omegaconf import OmegaConf

    record = Path(path) / "config.yaml"
    if not record.is_file():
        raise SystemExit(f"--vocoder-path {path}: no config.yaml there; expected the folder `mmldm train-vocoder` "
                         "wrote")
    name = OmegaConf.select(OmegaConf.load(record), "vocoder.name")
    if not name:
        raise SystemExit(f"--vocoder-path {path}: {record} names no vocoder (vocoder.name)")
    return [f"modality.vocoder={name}", f"modality.vocoder_path={path}"]


def training_record(path: Path) -> dict[str, Any]:
    """What the trained vocoder's folder says of its training (``config.yaml``'s provenance: steps, seconds,
    threads where recorded, when and on how many clips), kept in the results so a figure names its model."""
    from omegaconf import OmegaConf

    prov = OmegaConf.to_container(OmegaConf.load(Path(path) / "config.yaml")).get("provenance") or {}
    keep = ("producer", "created", "steps", "train_seconds", "seconds_per_step", "threads", "seed")
    return {**{k: prov[k] for k in keep if k in prov}, "clips": (prov.get("data") or {}).get("clips")}


def load_judge(path: Path, data: Path) -> Judge:
    """A saved judge: this benchmark's (``--train-judge``, stores its statistics) or ``benchmarks.generation``'s
    ``classifier.pt`` (its statistics are measured again on the training split its recipe names, read from
    ``data``)."""
    import torch

    from mmldm.build import build_modality
    from mmldm.configuration import compose
    from mmldm.evaluation.classifier import FeatureClassifier

    state = torch.load(path, weights_only=True)
    classifier = FeatureClassifier(**json.loads(state["config"])).eval()
    classifier.load_state_dict(state["weights"])
    layout = "1d" if classifier.config["dims"] == 1 else "2d"
    if "stats" in state:
        stats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in state["stats"].items()}
    else:  # the generation benchmark's judge: its modality from the recipe, the data from here
        keep = [o for o in json.loads(state["recipe"])["overrides"]
                if o.split("=")[0] in ("modality", "preset") or o.startswith("modality.")]
        keep = [o if not o.startswith("modality.root=") else f"modality.root={data / 'fsdd'}" for o in keep]
        stats = build_modality(compose(keep).modality).stats
    return Judge(classifier, stats, layout, json.loads(state["report"]), _portable(str(path)))


def train_judge(modality: Any, out: Path, seed: int = 0, epochs: int = 4) -> Judge:
    """A digit classifier trained on the modality's training split with mel shifts of -3..3 bins (as
    ``benchmarks.generation --task fsdd``), measured on its "val" split, saved to ``out/classifier.pt``."""
    import torch

    from mmldm.evaluation.classifier import train_classifier
    from mmldm_audio.augment import MelShiftDataset

    train = MelShiftDataset(modality.dataset("train"), modality, range(-3, 4))
    classifier, report = train_classifier(train, modality.dataset("val"), modality.dims, modality.channels,
                                          modality.num_classes, epochs=epochs, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    recipe = {"epochs": epochs, "seed": seed, "mel_shifts": [-3, 3], "benchmark": "vocoder"}
    torch.save({"recipe": json.dumps(recipe), "config": json.dumps(classifier.config), "report": json.dumps(report),
                "weights": classifier.state_dict(), "stats": {k: v.tolist() for k, v in modality.stats.items()}},
               out / "classifier.pt")
    return Judge(classifier, dict(modality.stats), modality.cfg.layout, report, "trained by this run (classifier.pt)")


# ---------------------------------------------------------------------------- report
def _ci(m: Mapping[str, float], digits: int = 3) -> str:
    return f"{m['mean']:.{digits}f} ({m['low']:.{digits}f}-{m['high']:.{digits}f})"


def _share(m: Mapping[str, Any]) -> str:
    if "judge_accuracy" not in m:
        return "-"
    low, high = m["judge_accuracy_ci"]
    return f"{100 * m['judge_accuracy']:.1f}% ({round(m['judge_accuracy'] * m['judge_accuracy_n'])}/" \
           f"{m['judge_accuracy_n']}, {100 * low:.1f}-{100 * high:.1f}%)"


def report(results: Mapping[str, Any]) -> str:
    """``results.md``: one row per vocoder, means with their 95% intervals, the definitions below."""
    s, r = results["settings"], results["results"]
    res = ", ".join(f"({n}, {h}, {w})" for n, h, w in r["settings"]["mr_stft_resolutions"])
    lines = [
        "# Vocoders on real held-out clips", "",
        f"{r['clips']} real clips of the `{r['split']}` split ({s['data_note']}), "
        f"{r['settings']['clip_samples']} samples at {r['settings']['sample_rate']} Hz each; every vocoder gets "
        "the clip's own log-mel features. Means over clips with 95% t-intervals; the judge's share with n and "
        "Wilson 95% interval.", "",
        f"| vocoder | n | MR-STFT distance | MR-STFT, floor {r['settings']['lsd_power_floor']:g} | LSD (dB) "
        "| log-mel L1 (re-analysed) | RTF, 1 thread (median; best) | judge accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in r["vocoders"].items():
        lines.append(f"| {name} | {m['n']} | {_ci(m['mr_stft'])} | {_ci(m['mr_stft_feature_floor'])} | "
                     f"{_ci(m['lsd_db'], 2)} | {_ci(m['logmel_l1'])} | "
                     f"{m['rtf']['rtf']:.4f}; {m['rtf']['rtf_best']:.4f} | {_share(m)} |")
    if r["real"]:
        lines.append(f"| real clips, no vocoder | {r['real']['judge_accuracy_n']} | 0 | 0 | 0 | 0 | - | "
                     f"{_share(r['real'])} |")
    lines += [
        "", f"MR-STFT distance: mean over the STFT resolutions (n_fft, hop, window) {res} of spectral convergence "
        "+ mean |ln magnitude difference| (Parallel WaveGAN's loss; per clip), STFT power floored at 1e-07 "
        f"(Parallel WaveGAN's) or at the features' floor {r['settings']['lsd_power_floor']:g}: "
        f"{100 * r['settings']['silent_share']:.0f}% of the real clips' samples are exactly 0 (padding), where the "
        "first counts the vocoder's noise and the second only what rises above the features' floor. "
        f"LSD: frame-wise RMS of the power ratio in dB over the {r['settings']['n_fft'] // 2 + 1} linear-frequency "
        f"bins of the features' STFT (n_fft {r['settings']['n_fft']}, hop {r['settings']['hop_length']}), power "
        f"floored at {r['settings']['lsd_power_floor']:g}. Log-mel L1: the vocoded wave's log-mel against the real "
        "clip's (nepers of mel power). RTF: seconds of compute per second of audio, "
        f"{r['settings']['rtf_clips']} clips per call, one warm-up, {r['settings']['rtf_repeats']} timed repeats, "
        "torch.set_num_threads(1), on a CPU shared with other work.",
    ]
    if r.get("judge_paired"):
        lines += ["", "The judge's verdicts paired clip by clip (the same clips under both; exact McNemar test on the "
                  "clips only one of the two gets right):", "",
                  "| comparison | right only under the first | right only under the second | difference | "
                  "p (two-sided) |", "| --- | --- | --- | --- | --- |"]
        for pair, m in r["judge_paired"].items():
            lines.append(f"| {pair} | {m['a_only']} | {m['b_only']} | {100 * m['difference']:+.1f} points | "
                         f"{m['p_value']:.2f} |")
    if "judge" in results:
        j = results["judge"]
        low, high = j["report"].get("val_accuracy_ci", [math.nan, math.nan])
        lines += ["", f"Judge: {j['source']}; its own held-out accuracy {100 * j['report']['val_accuracy']:.1f}% "
                  f"(n={j['report'].get('val_accuracy_n', '?')}, 95% CI {100 * low:.1f}-{100 * high:.1f}%)."]
    if s.get("vocoder_training"):
        t = s["vocoder_training"]
        lines += ["", f"The trained vocoder ({s['vocoder_path']}): {t.get('steps')} steps in "
                  f"{t.get('train_seconds', 0) / 60:.1f} min on {t.get('clips')} training clips"
                  + (f", {t['threads']} threads" if t.get("threads") else "") + f" ({t.get('producer')})."]
    lines += ["", f"Overrides: `{' '.join(s['overrides'])}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vocoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with fsdd/ (WAV files)")
    p.add_argument("--vocoder-path", type=Path, help="a trained vocoder's folder (what `mmldm train-vocoder` wrote), "
                   "compared beside Griffin-Lim")
    p.add_argument("--judge", type=Path, help="a saved digit classifier (this benchmark's or benchmarks.generation's "
                   "classifier.pt)")
    p.add_argument("--train-judge", action="store_true", help="train a digit classifier first (saved as classifier.pt; "
                   "about 3 minutes on a shared 2-core CPU)")
    p.add_argument("--max-clips", type=int, help="held-out clips measured (default: all)")
    p.add_argument("--rtf-repeats", type=int, default=5, help="timed vocoder calls per real-time factor")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CLIPS} clips, 3 timing repeats: a smoke run")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/vocoder)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides, e.g. "
                   "modality.layout=2d")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _portable(text: str) -> str:
    """Paths under the folder that holds the checkout are written relative to the checkout (``../shared/...``)."""
    return text.replace(str(REPO.parent), "..")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.quick:
        args.max_clips, args.rtf_repeats = args.max_clips or QUICK_CLIPS, min(args.rtf_repeats, 3)
    import torch

    from mmldm.build import build_modality
    from mmldm.configuration import compose

    torch.manual_seed(args.seed)
    trained = trained_vocoder_overrides(args.vocoder_path) if args.vocoder_path else []
    overrides = [*FSDD, f"modality.root={args.data / 'fsdd'}", *trained, *args.set]
    modality = build_modality(compose(overrides).modality)
    out = args.out or REPO / "benchmarks" / "results" / "vocoder"
    judge = load_judge(args.judge, args.data) if args.judge else (
        train_judge(modality, out, args.seed) if args.train_judge else None)
    vocoders = default_vocoders(modality)
    r = compare_vocoders(modality, vocoders, max_clips=args.max_clips, rtf_repeats=args.rtf_repeats, judge=judge)
    settings = {"overrides": [_portable(o) for o in overrides], "max_clips": args.max_clips, "quick": args.quick,
                "seed": args.seed, "data_note": f"FSDD, val_pattern {modality.cfg.val_pattern!r}",
                "vocoder_path": _portable(str(args.vocoder_path)) if args.vocoder_path else None,
                "vocoder_training": training_record(args.vocoder_path) if args.vocoder_path else None}
    results: dict[str, Any] = {"settings": settings, "results": r}
    if judge is not None:
        results["judge"] = {"source": judge.source, "report": judge.report}
    save_results(out, results, report(results))
    return results


if __name__ == "__main__":
    main()
