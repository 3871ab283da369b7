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
  text="a red star"  the caption of every sample of a text-conditioned model ("a|b" cycles)
Conditions not given (a text model without text=, a segmentation model's masks) come from the
held-out items of the model's modality, as in the samples a training run leaves.
  seed=0            random seed (same seed, same samples)
  out=<dir>         output folder (default: <model>/samples)
"""

_TYPES = {"n": int, "steps": int, "sampler": str, "guidance": float, "class": str, "text": str, "seed": int,
          "out": str}


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


def conditions(pipe: Any, s: dict[str, Any], n: int) -> dict[str, Any] | None:
    """The model's conditions for ``n`` samples: ``class=`` and ``text=`` settings (cycled), the rest from
    the modality's held-out items (:func:`mmldm.pipeline.sample_conditions`)."""
    import torch

    from .pipeline import sample_conditions

    keys = [c.key for c in pipe.conditioners if getattr(c, "key", None)]
    if keys == ["class"] and "class" not in s:
        return sample_conditions(pipe, None, n)  # classes in turn; no data needed
    given: dict[str, Any] = {}
    for key in ("class", "text"):
        if key in keys and key in s:
            picked = [int(v) for v in s[key].split(",")] if key == "class" else s[key].split("|")
            values = [picked[i % len(picked)] for i in range(n)]
            given[key] = torch.tensor(values) if key == "class" else values
    missing = [k for k in keys if k not in given]
    if missing:
        try:
            held_out = sample_conditions(pipe, pipe.modality.dataset("val"), n) or {}
        except (OSError, ValueError) as e:
            raise ValueError(f"the model is conditioned on {missing}: give them as settings (class=, text=) "
                             f"or make the modality's data readable ({e})") from None
        given.update({k: held_out[k] for k in missing})
    return given or None


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

    from .pipeline import LatentDiffusion

    pipe = LatentDiffusion.from_pretrained(model)
    n = s.get("n", 16)
    try:
        cond = conditions(pipe, s, n)
    except ValueError as e:
        print(f"mmldm sample: error: {e}", file=sys.stderr)
        return 2
    samples = pipe.sample(n, cond=cond, steps=s.get("steps"), sampler=s.get("sampler"),
                          guidance=s.get("guidance", 3.0 if cond else 1.0), seed=s.get("seed", 0))
    out = Path(s.get("out", model / "samples"))
    paths = pipe.modality.save(samples, out, prefix="sample")
    print(f"mmldm sample: wrote {len(paths)} files to {out}")
    return 0
