"""``mmldm sample``: generate files from an exported model folder."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

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
  text="a red star"  the caption of every sample of a text-conditioned model ("a|b" cycles); words the
                    model's tokenizer does not know (never in the training captions) are named in a warning
  compose=text      guide the named condition part by part (Composable Diffusion): each comma-separated
                    part of the caption is its own guidance branch with the guidance weight, so
                    text="seven, spoken by george" is guided as "seven" AND "spoken by george"
                    (several keys: comma-separated; each must be a condition with parts, as captions
                    are); meant for models trained with conditioner.tag_dropout
Conditions not given (a text model without text=, a segmentation model's masks) come from the
held-out items of the model's modality, as in the samples a training run leaves.
  seed=0            random seed >= 0 (same seed, same samples)
  out=<dir>         output folder (default: <model>/samples)

sampler options: any other key=value is an option of the sampler (the one sampler= names, else the
model's), a field of its config beyond name and steps, checked like sampler.<key> in a run:
  eta=0.5           ddim: noise of each step, >= 0 (0 is deterministic, 1 matches ddpm)
  spacing=karras    every sampler: how the noise levels are placed (auto or one the model's process
                    supports: leading, trailing, linspace, karras)
A sampler without the option refuses it, listing the options it has (`mmldm plugins` lists samplers).
"""

_TYPES = {"n": int, "steps": int, "sampler": str, "guidance": float, "class": str, "text": str, "seed": int,
          "out": str, "compose": str}
#: What a sampler option of a config field's type must be, as an error says it.
_KIND_OF = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "text"}


def _limits() -> dict[str, Any]:
    """The ranges of the numeric settings, declared as config fields declare theirs (:class:`mmldm.schema.Check`)."""
    from .schema import Check

    return {"n": Check(ge=1), "steps": Check(ge=1), "seed": Check(ge=0), "guidance": Check(finite=True)}


def parse_settings(pairs: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``["n=4", "guidance=2", "eta=0.5"]`` -> ``({"n": 4, "guidance": 2.0}, {"eta": "0.5"})``: the settings of
    ``mmldm sample``, typed and checked (``n`` >= 1, ``steps`` >= 1, ``seed`` >= 0, a finite ``guidance``,
    ``class`` integers >= 0), and the other ``key=value`` pairs as text, the sampler's options
    (:func:`sampler_options` checks them once the sampler is known). Bad values and a pair without ``=``
    raise ``ValueError``."""
    limits = _limits()
    out: dict[str, Any] = {}
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"unknown setting '{pair}'; valid keys: {', '.join(_TYPES)} or an option of the "
                             "sampler (as key=value)")
        if key not in _TYPES:
            options[key] = value
            continue
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
    return out, options


def sampler_name(s: Mapping[str, Any], export_cfg: Any) -> str:
    """The sampler a call uses: ``sampler=``, else the export's ``sampler.name``, else the default
    (as :func:`mmldm.diffusion.sampling.sampler_settings` picks it)."""
    from .diffusion.config import DEFAULT_SAMPLER

    if "sampler" in s:
        return s["sampler"]
    from omegaconf import OmegaConf

    recorded = export_cfg.get("sampler") if export_cfg is not None else None
    return str(recorded.get("name", DEFAULT_SAMPLER)) if OmegaConf.is_dict(recorded) else DEFAULT_SAMPLER


def check_sampler(name: str, given: bool, config_file: Path) -> None:
    """``name`` is an installed sampler; the ``ValueError`` lists the installed ones (and a skipped plugin
    that registers it). ``given``: named by ``sampler=`` (else recorded in ``config_file``)."""
    from .plugins import registry

    reg = registry()
    if name in reg.names("sampler"):
        return
    why = reg.why_missing("sampler", name)
    tail = f"; {why}" if why else ""
    if given:
        raise ValueError(f"invalid value '{name}' for 'sampler': expected one of: {', '.join(reg.names('sampler'))}"
                         f"{tail}")
    raise ValueError(f"{config_file} records sampler '{name}', which is not installed{tail}; choose one of "
                     f"{', '.join(reg.names('sampler'))} with sampler=")


def sampler_options(name: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """``{"eta": "0.5"}`` -> ``{"eta": 0.5}``: options of the installed sampler ``name``, the fields of its config
    dataclass beyond ``name`` and ``steps`` (``steps=`` is a setting), typed and range-checked as the config
    declares them. A key the sampler does not have, or a bad value, raises ``ValueError`` naming it."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .plugins import registry
    from .schema import CHECK

    config = registry().get("sampler", name).config
    fields = {f.name: f for f in dataclasses.fields(config) if f.name not in ("name", "steps")} if config else {}
    for key, text in raw.items():
        if key not in fields:
            raise ValueError(f"unknown setting '{key}={text}': sampler '{name}' has no option '{key}' (its options: "
                             f"{', '.join(fields) or 'none'}); the settings of mmldm sample are {', '.join(_TYPES)}")
    if not raw:
        return {}
    node = OmegaConf.structured(config)
    node.name = name
    for key, text in raw.items():
        try:
            node[key] = yaml.safe_load(text) if text.strip() else text
        except (yaml.YAMLError, OmegaConfBaseException, ValueError):
            typ = getattr(fields[key].type, "__name__", str(fields[key].type))
            raise ValueError(f"invalid value '{text}' for '{key}' (option of sampler '{name}'): expected "
                             f"{_KIND_OF.get(typ, typ)}") from None
        check = fields[key].metadata.get(CHECK)
        if check is not None and check.fails(node[key]):
            raise ValueError(f"invalid value '{text}' for '{key}' (option of sampler '{name}'): expected "
                             f"{check.expected(node[key])}")
    try:
        built = OmegaConf.to_object(node)  # the config's own checks (__post_init__)
    except (OmegaConfBaseException, ValueError) as e:
        raise ValueError(f"invalid sampler options {dict(raw)} for sampler '{name}': {str(e).splitlines()[0]}") from None
    return {key: getattr(built, key) for key in raw}



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
    (and classes it knows). Raises ``ValueError`` naming the setting."""
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


def unknown_word_warnings(pipe: Any, s: dict[str, Any]) -> list[str]:
    """One line per ``text=`` caption that holds words the model's text conditioner cannot know
    (``TextConditionerBase.unknown_words``: mapped to the unknown token, or outside a vocabulary learned
    from the training captions); empty without ``text=`` or such words."""
    if "text" not in s:
        return []
    text = next((c for c in pipe.conditioners if getattr(c, "key", None) == "text"), None)
    if text is None or not hasattr(text, "unknown_words"):
        return []
    lines = []
    for caption in dict.fromkeys(s["text"].split("|")):
        unknown = text.unknown_words(caption)
        if unknown:
            shown = ", ".join(f"'{w}' (tokens {' '.join(p)})" for w, p in unknown.items())
            lines.append(f"text='{caption}': {len(unknown)} word(s) the model's tokenizer does not know: {shown}; "
                         "the training captions never held them, so the model will most likely ignore them")
    return lines


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
    """``mmldm sample``: every error (a bad setting or sampler option, a missing or damaged export, a plugin
    that does not load) is one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="mmldm sample", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (config.yaml + *.safetensors)")
    parser.add_argument("settings", nargs="*", help="key=value settings and sampler options (see above)")
    args = parser.parse_args(argv)
    try:
        s, raw_options = parse_settings(args.settings)
    except ValueError as e:
        return _fail(str(e))
    model = Path(args.model)
    if not (model / "config.yaml").is_file():
        return _fail(f"{model} is not an exported model folder (no config.yaml)")

    from .export import ExportError, load_config
    from .registry import RegistryError

    try:
        # a damaged or crafted config.yaml, an unknown sampler or option fail here, before torch is imported
        name = sampler_name(s, load_config(model))
        check_sampler(name, "sampler" in s, model / "config.yaml")
        options = sampler_options(name, raw_options)
        from .pipeline import LatentDiffusion

        pipe = LatentDiffusion.from_pretrained(model)
        check_model_settings(pipe, s)
    except (ExportError, ValueError, RegistryError) as e:
        return _fail(str(e))
    for line in unknown_word_warnings(pipe, s):
        print(f"mmldm sample: warning: {line}", file=sys.stderr)
    n = s.get("n", 16)
    try:
        cond = conditions(pipe, s, n)
        samples = pipe.sample(n, cond=cond, steps=s.get("steps"), sampler=s.get("sampler"),
                              guidance=s.get("guidance", 3.0 if cond else 1.0), seed=s.get("seed", 0),
                              compose=[k for k in s.get("compose", "").split(",") if k], **options)
        out = Path(s.get("out", model / "samples"))
        from .preview import save_samples

        paths = save_samples(pipe.modality, samples, out, cond=cond)
    except (ValueError, OSError, RegistryError) as e:
        return _fail(str(e))
    print(f"mmldm sample: wrote {len(paths)} files to {out}")
    return 0


def _fail(message: str) -> int:
    """Print ``message`` as one line (multi-line messages of config errors joined) and return exit code 2."""
    print(f"mmldm sample: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
