"""float32 against bf16 autocast: one training step of the presets' own models, side by side.

``trainer.precision=auto`` (the default) trains in ``bf16-mixed`` where the
hardware computes in bf16 natively. This measures what that buys for the
models a run actually trains: for each preset (voxel 32^3, and the MNIST
setup of ``python -m benchmarks.generation``), the autoencoder's step on a
batch of ``data.batch_size`` and the denoiser's on a batch of phase 2's size,
each as Lightning runs them under the two precisions (autocast with the
weight cache off; fused Adam in float32, torch's default Adam under mixed
precision). Rounds alternate the two precisions; the figure is the median
time ratio bf16 / float32.

    python -m benchmarks.precision            # both presets, 5 rounds (a few minutes on a CPU)
    python -m benchmarks.precision --quick    # tiny models, 2 rounds (a smoke run)

Writes ``benchmarks/results/precision/results.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]

#: config overrides: the models of the voxel preset, and those of the MNIST generation benchmark on the
#: embedded 32x32 grayscale digits (the same shapes as MNIST's, no data folder needed)
PRESETS = {
    "voxel": ["modality=voxel"],
    "mnist": ["modality=image", "modality.source=digits", "autoencoder=conv_image", "data.batch_size=64",
              "denoiser.model_channels=64", "denoiser.channel_mult=[1,2]", "denoiser.num_res_blocks=2",
              "denoiser.attention_levels=[1]", "denoiser.head_dim=32"],
}
#: --quick: the same code on tiny sizes
QUICK = {
    "voxel": ["modality.resolution=16", "modality.num_shapes=12", "autoencoder.channels=8",
              "denoiser.model_channels=16", "data.batch_size=2", "diffusion.batch_size=2"],
    "mnist": ["modality.size=16", "autoencoder.channels=8", "denoiser.model_channels=16", "data.batch_size=2"],
}


def steps(overrides: Sequence[str]) -> dict[str, Callable[[bool], None]]:
    """``{"phase1": step, "phase2": step}``; ``step(bf16)`` runs one optimizer step of that model."""
    import torch

    from mmldm.build import build_autoencoder, build_conditioners, build_denoiser, build_modality
    from mmldm.configuration import compose

    cfg = compose(list(overrides))
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality)
    latent = autoencoder.latent_shape(modality.sample_shape)
    conditioners = build_conditioners(cfg.conditioner, modality, latent)
    denoiser = build_denoiser(cfg.denoiser, latent, conditioners)
    b1, b2 = cfg.data.batch_size, cfg.diffusion.batch_size or cfg.data.batch_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b1, *modality.sample_shape, generator=gen)
    z = torch.randn(b2, *latent, generator=gen)
    t = torch.randint(0, 1000, (b2,), generator=gen)
    labels = torch.randint(0, modality.num_classes, (b2,), generator=gen)
    ae_params = list(autoencoder.parameters())
    den_params = list(denoiser.parameters()) + [p for c in conditioners for p in c.parameters()]
    # fused in float32, for-each under mixed precision: what mmldm's Lightning modules get (fused_ok)
    optimizers = {(k, bf16): torch.optim.AdamW(params, lr=1e-5, fused=not bf16)
                  for k, params in (("phase1", ae_params), ("phase2", den_params)) for bf16 in (False, True)}

    def autocast(bf16: bool) -> Any:
        return torch.autocast("cpu", torch.bfloat16, enabled=bf16, cache_enabled=False)

    def phase1(bf16: bool) -> None:
        opt = optimizers["phase1", bf16]
        opt.zero_grad(set_to_none=True)
        with autocast(bf16):
            out = autoencoder(x)
        loss = (out.reconstruction.float() - x).abs().mean() + out.loss.float()
        loss.backward()
        opt.step()

    def phase2(bf16: bool) -> None:
        opt = optimizers["phase2", bf16]
        opt.zero_grad(set_to_none=True)
        with autocast(bf16):
            cond = conditioners[0]({"class": labels}, b2) if conditioners else None
            pred = denoiser(z, t, cond)
        loss = (pred.float() - z).pow(2).mean()
        loss.backward()
        opt.step()

    return {"phase1": phase1, "phase2": phase2, "batches": {"phase1": b1, "phase2": b2}}


def measure(step: Callable[[bool], None], rounds: int) -> dict[str, Any]:
    """Median seconds per precision and the median of the per-round ratios bf16 / float32."""
    step(False), step(True)  # warm-up (allocator, oneDNN primitives)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for bf16 in (False, True):
            start = time.perf_counter()
            step(bf16)
            times[bf16].append(time.perf_counter() - start)
    ratios = [b / f for f, b in zip(times[False], times[True])]
    return {"fp32_s": statistics.median(times[False]), "bf16_s": statistics.median(times[True]),
            "ratio": statistics.median(ratios)}


def run(rounds: int = 5, quick: bool = False) -> dict[str, Any]:
    import torch

    from mmldm.training.trainer import bf16_conv_gradient_errors, resolve_precision

    results: dict[str, Any] = {
        "threads": torch.get_num_threads(), "rounds": rounds,
        "auto_precision_here": {d: resolve_precision("auto", "cpu", d) for d in (1, 2, 3)},
        # what `auto` checks before it trains in bf16: conv weight gradients against float32's
        "conv_gradient_errors": {d: bf16_conv_gradient_errors(d) for d in (1, 2, 3)},
        "models": {},
    }
    for name, overrides in PRESETS.items():
        fns = steps([*overrides, *(QUICK[name] if quick else [])])
        for phase in ("phase1", "phase2"):
            m = measure(fns[phase], rounds)
            m["batch"] = fns["batches"][phase]
            results["models"][f"{name} {phase}"] = m
            print(f"{name} {phase} (batch {m['batch']}): fp32 {m['fp32_s']:.3f} s, bf16 {m['bf16_s']:.3f} s, "
                  f"ratio {m['ratio']:.2f}", flush=True)
    return results


def report(r: dict[str, Any]) -> str:
    auto = ", ".join(f"{d}D `{p}`" for d, p in r["auto_precision_here"].items())
    lines = ["# float32 vs bf16 autocast, one training step of the presets' models", "",
             f"{r['threads']} CPU threads, medians of {r['rounds']} alternating rounds. On this machine "
             f"`trainer.precision=auto` resolves to: {auto}.", "",
             "| model | batch | float32 s | bf16 s | bf16 / float32 |", "| --- | --- | --- | --- | --- |"]
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['batch']} | {m['fp32_s']:.3f} | {m['bf16_s']:.3f} | **{m['ratio']:.2f}** |")
    sides = sorted({s for e in r["conv_gradient_errors"].values() for s in e})
    lines += ["", "Weight gradient of a 3-conv (128 channels, batch 4) under bf16 autocast against float32: largest "
              "deviation relative to the largest entry (bf16 rounding alone: about 0.004; `auto` wants <= 0.05):", "",
              "| dims | " + " | ".join(f"{s} per axis" for s in sides) + " |", "| --- " * (len(sides) + 1) + "|"]
    for d, e in r["conv_gradient_errors"].items():
        lines.append(f"| {d} | " + " | ".join(f"{e[s]:.3g}" for s in sides) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny models, 2 rounds: a smoke run")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "precision")
    args = p.parse_args(argv)
    r = run(2 if args.quick else args.rounds, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(r, indent=2))
    text = report(r)
    (args.out / "results.md").write_text(text)
    print(text)
    return r


if __name__ == "__main__":
    main()
