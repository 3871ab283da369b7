"""What latent diffusion saves in 3D: the same U-Net on 64^3 latents' grid (f=4) versus on the 64^3 grid itself.

Both sides use the voxel preset's denoiser (``unet3d``: widths, levels,
attention) built by :func:`mmldm.build.build_denoiser`, unconditional, with
the same batch:

* **training step**: ``diffusion_loss`` forward, backward and an AdamW step,
  on ``[B, 4, R/4, R/4, R/4]`` latents versus ``[B, 1, R, R, R]`` grids;
* **sample**: ``--sample-steps`` DPM-Solver++(2M) steps for one sample with
  classifier-free guidance's doubled batch, plus (latent side only) decoding
  with the voxel preset's autoencoder, which is part of the latent sampler's cost.

Timings are medians over ``--repeats`` rounds that alternate latent and pixel
runs, so load on the machine hits both alike; the ratio pixel/latent is the
figure. Writes ``benchmarks/results/latent_vs_pixel/results.{json,md}``.

Example::

    python -m benchmarks.latent_vs_pixel                  # 64^3, batch 2, 3 rounds
    python -m benchmarks.latent_vs_pixel --resolution 32 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build(resolution: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The preset's denoiser for latents and for grids, and its autoencoder, at ``resolution``."""
    from mmldm.build import build_autoencoder, build_denoiser, build_modality
    from mmldm.configuration import compose
    from mmldm.diffusion.process import build_process

    cfg = compose(["modality=voxel", f"modality.resolution={resolution}", *overrides])
    modality = build_modality(cfg.modality)
    autoencoder = build_autoencoder(cfg.autoencoder, cfg.regularizer, modality).eval()
    latent_shape = tuple(autoencoder.latent_shape(modality.sample_shape))
    return {
        "cfg": cfg, "autoencoder": autoencoder, "process": build_process(cfg.diffusion.process),
        "latent": (build_denoiser(cfg.denoiser, latent_shape, []), latent_shape),
        "pixel": (build_denoiser(cfg.denoiser, modality.sample_shape, []), tuple(modality.sample_shape)),
    }


def train_step(denoiser: Any, shape: tuple[int, ...], batch: int, process: Any) -> Callable[[], None]:
    import torch

    from mmldm.diffusion.process import diffusion_loss

    opt = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    z0 = torch.randn(batch, *shape)

    def step() -> None:
        loss = diffusion_loss(lambda z, t: denoiser(z, t), z0, process).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def sample(denoiser: Any, shape: tuple[int, ...], steps: int, process: Any, decode: Any = None) -> Callable[[], None]:
    import torch

    from mmldm.diffusion.sampling import sample_latents

    def run() -> None:
        with torch.no_grad():
            # two rows per step: what one sample with classifier-free guidance costs (cond + uncond rows)
            z = sample_latents(denoiser, [], process, (2, *shape), None, "dpmpp_2m", steps, 1.0, "auto",
                               torch.Generator().manual_seed(0))
            if decode is not None:
                decode(z[:1])

    return run


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latent_vs_pixel", description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=2, help="training batch (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latent_vs_pixel")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = p.parse_args(argv)
    import torch

    torch.manual_seed(0)
    parts = build(args.resolution, args.set)
    process = parts["process"]
    runs = {}
    for side in ("latent", "pixel"):
        denoiser, shape = parts[side]
        decode = parts["autoencoder"].decode if side == "latent" else None
        runs[side] = {"train_step": train_step(denoiser, shape, args.batch, process),
                      "sample": sample(denoiser, shape, args.sample_steps, process, decode),
                      "shape": list(shape), "parameters": sum(q.numel() for q in denoiser.parameters())}
    times: dict[str, dict[str, list[float]]] = {s: {"train_step": [], "sample": []} for s in runs}
    for side in runs:  # warm-up (allocator, kernels)
        runs[side]["train_step"]()
    for r in range(args.repeats):
        for kind in ("train_step", "sample"):
            for side in ("latent", "pixel") if r % 2 == 0 else ("pixel", "latent"):
                times[side][kind].append(timed(runs[side][kind]))
                print(f"round {r + 1}/{args.repeats} {kind} {side}: {times[side][kind][-1]:.3f} s", flush=True)
    med = {s: {k: statistics.median(v) for k, v in t.items()} for s, t in times.items()}
    ratio = {k: med["pixel"][k] / med["latent"][k] for k in ("train_step", "sample")}
    result = {
        "settings": {"resolution": args.resolution, "batch": args.batch, "repeats": args.repeats,
                     "sample_steps": args.sample_steps, "threads": torch.get_num_threads(), "overrides": args.set},
        "shapes": {s: runs[s]["shape"] for s in runs}, "parameters": {s: runs[s]["parameters"] for s in runs},
        "seconds": times, "median_seconds": med, "ratio_pixel_over_latent": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    r = args.resolution
    md = "\n".join([
        f"# Latent vs pixel space, {r}^3 voxel grids",
        "",
        f"The voxel preset's `unet3d` on latents {runs['latent']['shape']} (f=4) and on grids {runs['pixel']['shape']}; "
        f"median of {args.repeats} alternating rounds, {torch.get_num_threads()} CPU threads.",
        "",
        "| | latent | pixel | pixel / latent |",
        "| --- | --- | --- | --- |",
        f"| training step, batch {args.batch} (s) | {med['latent']['train_step']:.3f} | {med['pixel']['train_step']:.3f} "
        f"| **{ratio['train_step']:.1f}x** |",
        f"| one sample, {args.sample_steps} DPM-Solver++ steps, guided batch (s; latent incl. decode) "
        f"| {med['latent']['sample']:.3f} | {med['pixel']['sample']:.3f} | **{ratio['sample']:.1f}x** |",
        "",
    ])
    (args.out / "results.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
