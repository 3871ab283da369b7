"""``mmldm sample``: generate files from an exported model folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

HELP = """\
Generate samples from an exported model folder (a run leaves one in <run dir>/export)
and write them as the modality's files (PNG, PLY + PNG render, WAV + spectrogram PNG).

settings are key=value pairs:
  n=16              number of samples
  steps=25          sampler steps
  sampler=dpmpp_2m  ddpm | ddim | euler | heun | dpmpp_2m (or any plugin's sampler)
  guidance=3.0      classifier-free guidance weight (1 = no guidance)
  class=3           condition every sample on class 3 (class=0,1,2 cycles; default: classes in turn)
  seed=0            random seed (same seed, same samples)
  out=<dir>         output folder (default: <model>/samples)
"""

_TYPES = {"n": int, "steps": int, "sampler": str, "guidance": float, "class": str, "seed": int, "out": str}


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``["n=4", "guidance=2"]`` -> ``{"n": 4, "guidance": 2.0}``; unknown keys and bad values raise."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in _TYPES:
            raise ValueError(f"unknown setting '{pair}'; valid keys: {', '.join(_TYPES)} (as key=value)")
        try:
            out[key] = _TYPES[key](value)
        except ValueError:
            raise ValueError(f"invalid value '{value}' for '{key}': expected {_TYPES[key].__name__}") from None
    return out


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmldm sample", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (config.yaml + *.safetensors)")
    parser.add_argument("settings", nargs="*", help="key=value settings (see above)")
    args = parser.parse_args(argv)
    try:
        s = parse_settings(args.settings)
    except ValueError as e:
        print(f"mmldm sample: error: {e}", file=sys.stderr)
        return 2
    model = Path(args.model)
    if not (model / "config.yaml").is_file():
        print(f"mmldm sample: error: {model} is not an exported model folder (no config.yaml)", file=sys.stderr)
        return 2

    import torch

    from .pipeline import LatentDiffusion

    pipe = LatentDiffusion.from_pretrained(model)
    n = s.get("n", 16)
    cond = None
    classes = [c for c in pipe.conditioners if getattr(c, "key", None) == "class"]
    if classes:
        picked = [int(v) for v in s["class"].split(",")] if "class" in s else list(range(classes[0].num_classes))
        cond = {"class": torch.tensor([picked[i % len(picked)] for i in range(n)])}
    samples = pipe.sample(n, cond=cond, steps=s.get("steps"), sampler=s.get("sampler"),
                          guidance=s.get("guidance", 3.0 if classes else 1.0), seed=s.get("seed", 0))
    out = Path(s.get("out", model / "samples"))
    paths = pipe.modality.save(samples, out, prefix="sample")
    print(f"mmldm sample: wrote {len(paths)} files to {out}")
    return 0
