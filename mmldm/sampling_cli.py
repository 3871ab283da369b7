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
  n=16              number of samples (>= 1)
  steps=25          sampler steps (>= 1; default: the model's sampler config)
  sampler=dpmpp_2m  ddpm | ddim | euler | heun | dpmpp_2m (or any plugin's sampler)
  guidance=3.0      classifier-free guidance weight, a finite number (1 = no guidance)
  class=3           condition every sample on class 3 (class=0,1,2 cycles; default: classes in turn);
                    class-conditioned models only, indices 0..classes-1
  text="a red star"  the caption of every sample of a text-conditioned model ("a|b" cycles)
Conditions not given (a text model without text=, a segmentation model's masks) come from the
held-out items of the model's modality, as in the samples a training run leaves.
  seed=0            random seed >= 0 (same seed, same samples)
  out=<dir>         output folder (default: <model>/samples)
"""

_TYPES = {"n": int, "steps": int, "sampler": str, "guidance": float, "class": str, "text": str, "seed": int,
          "out": str}


def _limits() -> dict[str, Any]:
    """The ranges of the numeric settings, declared as config fields declare theirs (:class:`mmldm.schema.Check`)."""
    from .schema import Check

    return {"n": Check(ge=1), "steps": Check(ge=1), "seed": Check(ge=0), "guidance": Check(finite=True)}


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``["n=4", "guidance=2"]`` -> ``{"n": 4, "guidance": 2.0}``; unknown keys and bad values raise ``ValueError``
    (``n`` >= 1, ``steps`` >= 1, ``seed`` >= 0, a finite ``guidance``, ``class`` integers >= 0)."""
    limits = _limits()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in _TYPES:
            raise ValueError(f"unknown setting '{pair}'; valid keys: {', '.join(_TYPES)} (as key=value)")
        kind = "an integer" if _TYPES[key] is int else "a number" if _TYPES[key] is float else "text"
        check = limits.get(key)
        try:
            out[key] = _TYPES[key](value)
        except ValueError:
            raise ValueError(f"invalid value '{value}' for '{key}': expected {kind}"
                             f"{f' {check.expected()}' if check and check.choices is None else ''}") from None
        if check is not None and check.fails(out[key]):
            raise ValueError(f"invalid value '{value}' for '{key}': expected {check.expected(out[key])}")
    if "class" in out:
        _class_values(out["class"], None)
    return out


def _class_values(text: str, num_classes: int | None) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``, each an integer in ``0..num_classes-1`` (>= 0 when the count is unknown)."""
    allowed = f"in 0..{num_classes - 1} (the model has {num_classes} classes)" if num_classes else "(integers >= 0)"
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    bad = next((v for v in values if v < 0 or (num_classes is not None and v >= num_classes)), None)
    if not values or bad is not None:
        shown = text if not values else str(bad)
        raise ValueError(f"invalid value '{shown}' for 'class': expected class indices {allowed}, comma-separated "
                         "(class=3 or class=0,1,2)")
    return values


def check_model_settings(pipe: Any, s: dict[str, Any]) -> None:
    """Settings that depend on the model: it has a denoiser, ``class=``/``text=`` name conditions it takes
    (and classes it knows), ``sampler=`` is installed. Raises ``ValueError`` naming the setting."""
    from .plugins import registry

    if pipe.denoiser is None:
        raise ValueError("this export holds an autoencoder only (no denoiser.safetensors): train phase 2 to sample")
    keys = [c.key for c in pipe.conditioners if getattr(c, "key", None)]
    for key in ("class", "text"):
        if key in s and key not in keys:
            raise ValueError(f"'{key}={s[key]}' given, but the model has no {key} conditioner (it is conditioned on "
                             f"{', '.join(keys) or 'nothing: unconditional'}); drop {key}=")
    if "class" in s:
        classes = next(c for c in pipe.conditioners if getattr(c, "key", None) == "class")
        _class_values(s["class"], getattr(classes, "num_classes", None))
    if "sampler" in s and s["sampler"] not in registry().names("sampler"):
        raise ValueError(f"invalid value '{s['sampler']}' for 'sampler': expected one of: "
                         f"{', '.join(registry().names('sampler'))}")


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
    """``mmldm sample``: every error (a bad setting, a missing or damaged export) is one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="mmldm sample", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (config.yaml + *.safetensors)")
    parser.add_argument("settings", nargs="*", help="key=value settings (see above)")
    args = parser.parse_args(argv)
    try:
        s = parse_settings(args.settings)
    except ValueError as e:
        return _fail(str(e))
    model = Path(args.model)
    if not (model / "config.yaml").is_file():
        return _fail(f"{model} is not an exported model folder (no config.yaml)")

    from .export import ExportError, load_config

    try:
        load_config(model)  # a damaged or crafted config.yaml fails here, before torch is imported
        from .pipeline import LatentDiffusion

        pipe = LatentDiffusion.from_pretrained(model)
        check_model_settings(pipe, s)
    except (ExportError, ValueError) as e:
        return _fail(str(e))
    n = s.get("n", 16)
    try:
        cond = conditions(pipe, s, n)
        samples = pipe.sample(n, cond=cond, steps=s.get("steps"), sampler=s.get("sampler"),
                              guidance=s.get("guidance", 3.0 if cond else 1.0), seed=s.get("seed", 0))
        out = Path(s.get("out", model / "samples"))
        paths = pipe.modality.save(samples, out, prefix="sample")
    except (ValueError, OSError) as e:
        return _fail(str(e))
    print(f"mmldm sample: wrote {len(paths)} files to {out}")
    return 0


def _fail(message: str) -> int:
    """Print ``message`` as one line (multi-line messages of config errors joined) and return exit code 2."""
    print(f"mmldm sample: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
