"""Nearest x2 + 3-conv, computed two ways: interpolate then convolve, or one stride-2 transposed convolution.

:func:`mmldm.nn.upsample_conv` computes the upsampling layers of mmldm's U-Nets and autoencoders. Its
``transposed`` form does ``(3/2)^dims`` fewer multiply-adds but builds a ``4^dims``-tap kernel from the
weight on every call; ``auto`` takes it where :func:`mmldm.nn.transposed_upsample_pays` says it is cheaper.
This script times both forms, forward + backward (the training case), on the shapes the rule was fitted
to, in alternating rounds, and writes the ratio transposed / interpolate next to what ``auto`` picks.
The two forms agree to float rounding (tests/test_unet.py checks outputs and gradients in float64).

With ``--presets`` it also times whole training steps of the voxel preset's models (``modality=voxel``:
the phase-1 autoencoder on 32^3 grids, batch 16, and the phase-2 3D U-Net on 8^3 x 4 latents, batch 32)
with every upsampler on ``auto`` against every upsampler on ``interpolate``, in alternating rounds.

    python -m benchmarks.upsample              # about 15 s on 2 CPU threads
    python -m benchmarks.upsample --presets    # adds the voxel preset's training steps (about a minute more)
    python -m benchmarks.upsample --quick      # three shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from benchmarks.latent_vs_pixel import timed

REPO = Path(__file__).resolve().parents[1]

#: ``[B, C, *spatial]`` inputs: the unet2d preset's upsamplers at batch 2 and 8 (512 ch at 8x8, 256 at
#: 16x16), smaller 2D maps, 3D latents and grids of the voxel presets, and 1D sequences.
SHAPES: tuple[tuple[int, ...], ...] = (
    (2, 512, 8, 8), (4, 512, 8, 8), (8, 512, 8, 8), (2, 256, 16, 16), (1, 256, 16, 16), (2, 256, 8, 8),
    (2, 128, 8, 8), (2, 128, 16, 16), (2, 64, 8, 8), (8, 64, 4, 4), (2, 32, 8, 8),
    (2, 256, 4, 4, 4), (2, 128, 4, 4, 4), (4, 128, 4, 4, 4), (2, 64, 4, 4, 4), (1, 64, 8, 8, 8),
    (4, 128, 8, 8, 8), (2, 32, 8, 8, 8), (4, 64, 16, 16, 16),
    (4, 256, 16), (4, 64, 32), (4, 128, 64), (16, 64, 64),
)
QUICK = ((2, 64, 8, 8), (2, 32, 4, 4, 4), (4, 64, 32))


def measure(shape: Sequence[int], rounds: int = 7) -> dict[str, Any]:
    """Median seconds of forward + backward of both forms on ``shape``, alternating, and their ratio."""
    import torch

    from mmldm.nn import transposed_upsample_pays, upsample_conv

    b, c, *spatial = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = (torch.randn(c, c, *[3] * len(spatial), generator=g) * 0.02).requires_grad_(True)
    bias = torch.zeros(c, requires_grad=True)
    grad = torch.randn(b, c, *[2 * s for s in spatial], generator=g)

    def step(method: str) -> None:
        upsample_conv(x, w, bias, method).backward(grad)
        x.grad = w.grad = bias.grad = None

    seconds: dict[str, list[float]] = {"interpolate": [], "transposed": []}
    for method in seconds:  # warm-up
        step(method)
    for r in range(rounds):
        for method in (list(seconds) if r % 2 == 0 else list(seconds)[::-1]):
            seconds[method].append(timed(lambda: step(method)))
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {"shape": list(shape), "dims": len(spatial), "positions": b * math.prod(spatial),
            "auto_picks": "transposed" if transposed_upsample_pays(x) else "interpolate",
            "median_seconds": med, "ratio_transposed_to_interpolate": med["transposed"] / med["interpolate"]}


def preset_steps(rounds: int = 7) -> dict[str, dict[str, Any]]:
    """Training-step time of the voxel preset's autoencoder and U-Net, upsamplers ``auto`` vs ``interpolate``."""
    import torch

    from benchmarks.latent_vs_pixel import build, train_step
    from mmldm.nn import Upsample

    torch.manual_seed(0)
    parts = build(32)
    autoencoder = parts["autoencoder"].train()
    denoiser, latent_shape = parts["latent"]
    grids = (torch.rand(16, 1, 32, 32, 32) > 0.5).float()
    opt = torch.optim.AdamW(autoencoder.parameters(), lr=1e-4)

    def autoencoder_step() -> None:
        loss = (autoencoder(grids).reconstruction - grids).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = {"voxel autoencoder, phase-1 step (batch 16, 32^3)": autoencoder_step,
             f"voxel U-Net, phase-2 step (batch 32, latents {latent_shape})":
                 train_step(denoiser, latent_shape, 32, parts["schedule"])}
    upsamplers = [m for m in [*autoencoder.modules(), *denoiser.modules()] if isinstance(m, Upsample)]

    def use(method: str) -> None:
        for m in upsamplers:
            m.method = method

    out = {}
    for name, step in steps.items():
        seconds: dict[str, list[float]] = {"auto": [], "interpolate": []}
        for method in seconds:  # warm-up
            use(method)
            step()
        for r in range(rounds):
            for method in (list(seconds) if r % 2 == 0 else list(seconds)[::-1]):
                use(method)
                seconds[method].append(timed(step))
        med = {k: statistics.median(v) for k, v in seconds.items()}
        out[name] = {"median_seconds": med, "ratio_auto_to_interpolate": med["auto"] / med["interpolate"]}
    use("auto")
    return out


def report(rows: list[dict[str, Any]], threads: int, presets: dict[str, dict[str, Any]] | None = None) -> str:
    lines = ["# Upsampling: transposed convolution / interpolate + convolution", "",
             f"Forward + backward, medians of alternating rounds, {threads} CPU threads. "
             "Positions: batch x input cells. `auto` is what mmldm.nn.upsample_conv picks.", "",
             "| input shape | positions | interpolate ms | transposed ms | transposed / interpolate | auto picks |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m = r["median_seconds"]
        lines.append(f"| {tuple(r['shape'])} | {r['positions']} | {m['interpolate'] * 1e3:.2f} "
                     f"| {m['transposed'] * 1e3:.2f} | **{r['ratio_transposed_to_interpolate']:.2f}** "
                     f"| {r['auto_picks']} |")
    picked = [r for r in rows if r["auto_picks"] == "transposed"]
    if picked:
        worst = max(r["ratio_transposed_to_interpolate"] for r in picked)
        lines += ["", f"Where `auto` picks the transposed form its time ratio is at most {worst:.2f}."]
    if presets:
        lines += ["", "## Training steps of the voxel preset's models", "",
                  "| model | upsamplers interpolate s | upsamplers auto s | auto / interpolate |", "| --- | --- | --- | --- |"]
        for name, r in presets.items():
            m = r["median_seconds"]
            lines.append(f"| {name} | {m['interpolate']:.3f} | {m['auto']:.3f} | **{r['ratio_auto_to_interpolate']:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.upsample", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds per shape (default 7)")
    p.add_argument("--quick", action="store_true", help="three small shapes, 2 rounds (a smoke run)")
    p.add_argument("--presets", action="store_true", help="also time the voxel preset's autoencoder and U-Net steps")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "upsample")
    args = p.parse_args(argv)
    import torch

    rows = [measure(s, 2 if args.quick else args.rounds) for s in (QUICK if args.quick else SHAPES)]
    presets = preset_steps(2 if args.quick else args.rounds) if args.presets else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"threads": torch.get_num_threads(), "rows": rows, "presets": presets}, indent=2))
    text = report(rows, torch.get_num_threads(), presets)
    (args.out / "results.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
