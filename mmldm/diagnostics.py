"""Latent diagnostics of a trained autoencoder: what phase 2 will have to model.

Reconstruction metrics of the modality, per-channel latent statistics, KL per
latent element, codebook usage (VQ) and decoder robustness: the
reconstruction error when Gaussian noise of a given sigma is added to the
*normalized* latent (a stand-in for the diffusion model's errors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from .interfaces import Autoencoder, Modality
from .latents import LatentStats


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: float(sum(r[k] for r in rows) / len(rows)) for k in keys}


@torch.no_grad()
def autoencoder_diagnostics(
    autoencoder: Autoencoder,
    stats: LatentStats,
    modality: Modality,
    batches: Iterable[Mapping[str, Any]],
    max_batches: int = 8,
    noise_levels: tuple[float, ...] = (0.1, 0.3),
    seed: int = 0,
) -> dict[str, Any]:
    """Measure reconstruction quality and latent properties on held-out batches.

    Returns a JSON-ready dict: ``reconstruction`` (the modality's metrics),
    ``latent`` (shape, per-channel mean/std of the posterior mode, KL per
    element), ``regularizer`` (what the regularizer logs, e.g. VQ perplexity
    and usage) and ``robustness`` (metrics with noise on the normalized latent).
    """
    autoencoder.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(autoencoder.parameters()).device
    recon, noisy = [], {s: [] for s in noise_levels}
    kl_per_element, reg_logs, zs = [], [], []
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        x = batch["x"].to(device)
        posterior = autoencoder.encode(x)
        z = posterior.mode()
        zs.append(z.cpu())
        kl_per_element.append(float(posterior.kl().sum() / z.numel()))
        out = autoencoder(x)
        reg_logs.append({k: float(v) for k, v in out.logs.items() if torch.as_tensor(v).numel() == 1})
        recon.append(modality.reconstruction_metrics(x, modality.postprocess(autoencoder.decode(z))))
        z_norm = stats.normalize(z)
        for s in noise_levels:
            eps = torch.randn(z.shape, generator=generator).to(device)
            x_n = modality.postprocess(autoencoder.decode(stats.denormalize(z_norm + s * eps)))
            noisy[s].append(modality.reconstruction_metrics(x, x_n))
    if not zs:
        raise ValueError("autoencoder_diagnostics: no batches to evaluate")
    z_all: Tensor = torch.cat(zs)
    flat = z_all.transpose(0, 1).reshape(z_all.shape[1], -1)  # (c, B * prod(s))
    return {
        "reconstruction": _mean_metrics(recon),
        "latent": {
            "shape": list(z_all.shape[1:]),
            "channel_mean": flat.mean(1).tolist(),
            "channel_std": flat.std(1).tolist(),
            "normalization": stats.to_dict(),
            "kl_per_element": sum(kl_per_element) / len(kl_per_element),
        },
        "regularizer": _mean_metrics(reg_logs) if reg_logs and reg_logs[0] else {},
        "robustness": {f"noise_{s}": _mean_metrics(rows) for s, rows in noisy.items()},
    }


def format_table(diag: Mapping[str, Any]) -> str:
    """A readable Markdown table of :func:`autoencoder_diagnostics`."""
    lines = ["| quantity | value |", "| --- | --- |"]
    for k, v in diag["reconstruction"].items():
        lines.append(f"| reconstruction {k} | {v:.4g} |")
    lat = diag["latent"]
    lines.append(f"| latent shape | {lat['shape']} |")
    lines.append(f"| latent channel mean | {', '.join(f'{m:.3g}' for m in lat['channel_mean'])} |")
    lines.append(f"| latent channel std | {', '.join(f'{s:.3g}' for s in lat['channel_std'])} |")
    lines.append(f"| KL per element | {lat['kl_per_element']:.4g} |")
    for k, v in diag["regularizer"].items():
        lines.append(f"| regularizer {k} | {v:.4g} |")
    for level, metrics in diag["robustness"].items():
        for k, v in metrics.items():
            lines.append(f"| {k} with latent {level.replace('_', ' sigma ')} | {v:.4g} |")
    return "\n".join(lines)


def write_diagnostics(diag: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``diagnostics.json`` and ``diagnostics.md`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    js, md = directory / "diagnostics.json", directory / "diagnostics.md"
    js.write_text(json.dumps(diag, indent=2))
    md.write_text("# Autoencoder diagnostics\n\n" + format_table(diag) + "\n")
    return js, md
