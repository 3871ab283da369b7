"""``mmldm edit``: inpaint, vary or interpolate a person's own files with an exported model.

Wired as ``mmldm sample`` is (:mod:`mmldm.sampling_cli`, whose helpers it uses): ``key=value`` settings checked
before the model loads, sampler options checked against the sampler's config, every error one line with exit
code 2. Files are read with :meth:`Modality.load <mmldm.interfaces.Modality.load>`, regions made by
:mod:`mmldm.regions`, and the edits run by :meth:`LatentDiffusion.inpaint
<mmldm.pipeline.LatentDiffusion.inpaint>`, :meth:`~mmldm.pipeline.LatentDiffusion.vary` and
:meth:`~mmldm.pipeline.LatentDiffusion.interpolate`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .sampling_cli import (
    check_model_settings, check_sampler, parse_settings, sampler_name, sampler_options, unknown_word_warnings,
)

HELP = """\
Edit your own files with an exported model folder (a run leaves one in <run dir>/export): fill a region
(inpaint), draw variations (vary) or morph one file into another (interpolate). Inputs are read as the
model's modality reads its data (image: PNG/JPEG resized to the model's size; voxel: .npz/.npy grids,
.ply/.obj/.off/.stl meshes, .binvox; audio: WAV/FLAC/OGG at the model's clip length) and the results are
written as the modality's files, beside the input (input_*) and, for inpaint, the input with the region
blanked (masked_*), so you can compare.

settings are key=value pairs:
  op=inpaint        inpaint: regenerate the mask= region of input=, keep the rest exactly
                    vary: variations of input= (SDEdit: noise it part way, denoise it again)
                    interpolate: n frames from input= to input2= (both ends included)
  input=<file>      the file to edit (every op)
  input2=<file>     interpolate: the file at the other end
  mask=<region or file>
                    inpaint: what to generate (1) and keep (0). A region:
                      box:<lo>-<hi>,<lo>-<hi>,...  fractions per spatial axis, in the layout's order
                                      (an image: rows from the top, then columns from the left);
                                      box:0.5-1,0-1 is an image's lower half
                      image: top, bottom, left, right (halves), center (middle half of each side)
                      voxel: x-, x+, y-, y+, z-, z+ (half-spaces of the unit cube; y is up)
                      audio: gap:<start_s>-<end_s> (frames centred between two times in seconds)
                    (an unknown name lists the model's regions), or a file: a .npy array of 0/1 of the
                    sample's shape, or a file of the modality thresholded at 0.5 (an image: white =
                    generate, black = keep; a voxel file: the inside of its shape)
  strength=0.6      vary: how far to noise, in (0, 1] (near 0 returns the input, 1 starts from noise)
  n=4               inpaint, vary: results drawn for the input (default 4); interpolate: frames (default 8, >= 2)
  method=training_free
                    inpaint: training_free (any model: the kept region is imposed at every step) or
                    trained (a model trained with conditioner=inpaint or class_inpaint)
  resample=1        inpaint, training_free: RePaint resampling, times each stretch of steps is taken
                    (>= 1; 1 = none)
  jump_length=1     inpaint, training_free: steps per resampled stretch (>= 1)
  reconstruction_guidance=0
                    inpaint, training_free: weight (>= 0) of the reconstruction guidance that steers
                    the generated region to agree with the kept one (1 = the published weighting;
                    each step then costs a backward pass too; 0 = off)
  mask_rule=any     inpaint: a latent cell partly masked is generated (any), kept (all) or blended (soft)
  infer=class       inpaint, vary: a class-conditioned model infers the input's class itself (inpaint:
                    from the kept region) and is guided by it: the class whose denoising error of the
                    input is lowest (LatentDiffusion.classify; 64 x classes model evaluations), printed
                    with its probability. Instead of class=
  class=3           condition on class 3 (inpaint, vary: class=0,1 cycles over the results; interpolate:
                    one class); class-conditioned models only. Without class= or text= the edit is
                    unconditional (the input is the guide)
  text="a red star"  the caption of a text-conditioned model ("a|b" cycles; interpolate: one caption)
  steps=25          sampler steps (>= 1; default: the model's sampler config; vary takes strength x steps)
  sampler=dpmpp_2m  inpaint, vary: ddpm | ddim | euler | heun | dpmpp_2m (or any plugin's sampler);
                    interpolate inverts and samples with euler
  guidance=3.0      classifier-free guidance weight, a finite number (default 3 with a condition, else 1);
                    with method=trained it guides class=/text=, not the known region
  seed=0            inpaint, vary: random seed >= 0 (same seed, same results); interpolate is deterministic
  out=<dir>         output folder (default: <model>/edits/<op>)

sampler options (inpaint, vary): any other key=value is an option of the sampler, checked as for
`mmldm sample` (eta=0.5 for ddim, spacing=karras, ...).

examples:
  mmldm edit runs/image/export op=inpaint input=photo.png mask=bottom
  mmldm edit runs/voxel/export op=inpaint input=chair.npz mask=x+ resample=4
  mmldm edit runs/audio/export op=inpaint input=clip.wav mask=gap:0.3-0.6
  mmldm edit runs/image/export op=vary input=photo.png strength=0.5 n=8
  mmldm edit runs/image/export op=interpolate input=a.png input2=b.png n=8
"""

OPS = ("inpaint", "vary", "interpolate")
#: The settings of ``mmldm edit`` beyond those it shares with ``mmldm sample``, with their types.
_EDIT_TYPES = {"op": str, "input": str, "input2": str, "mask": str, "strength": float, "method": str,
               "resample": int, "jump_length": int, "reconstruction_guidance": float, "mask_rule": str, "infer": str}
#: Every setting, in the order ``--help`` lists them.
SETTINGS = ("op", "input", "input2", "mask", "strength", "n", "method", "resample", "jump_length",
            "reconstruction_guidance", "mask_rule", "infer", "class", "text", "steps", "sampler", "guidance", "seed", "out")
#: The settings only some ops take (every other one is taken by all).
_OPS_OF = {"input2": ("interpolate",), "mask": ("inpaint",), "method": ("inpaint",), "resample": ("inpaint",),
           "jump_length": ("inpaint",), "reconstruction_guidance": ("inpaint",), "mask_rule": ("inpaint",), "infer": ("inpaint", "vary"),
           "strength": ("vary",),
           "sampler": ("inpaint", "vary"), "seed": ("inpaint", "vary")}
_DEFAULT_N = {"inpaint": 4, "vary": 4, "interpolate": 8}
#: The conditions ``infer=`` can infer (those whose candidates the model knows: every class of the data).
INFERABLE = ("class",)


def _limits() -> dict[str, Any]:
    """Ranges of the edit settings, as config fields declare theirs (:class:`mmldm.schema.Check`)."""
    from .schema import Check

    return {"op": Check(choices=OPS), "strength": Check(gt=0, le=1), "resample": Check(ge=1),
            "jump_length": Check(ge=1), "reconstruction_guidance": Check(ge=0), "infer": Check(choices=INFERABLE)}


def _typed(key: str, value: str) -> Any:
    """``value`` of edit setting ``key`` as its type, range-checked; ``ValueError`` naming both otherwise."""
    typ, check = _EDIT_TYPES[key], _limits().get(key)
    kind = "an integer" if typ is int else "a number" if typ is float else "text"
    try:
        out = typ(value)
    except ValueError:
        raise ValueError(f"invalid value '{value}' for '{key}': expected {kind}"
                         f"{f' {check.expected()}' if check else ''}") from None
    if check is not None and check.fails(out):
        raise ValueError(f"invalid value '{value}' for '{key}': expected {check.expected(out)}")
    return out


def parse_edit(pairs: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """``["op=vary", "input=a.png", "n=2", "eta=0.5"]`` -> ``(edit, settings, options)``: the settings only
    ``mmldm edit`` has (``op``, ``input``, ...; typed and checked), those it shares with ``mmldm sample``
    (:func:`mmldm.sampling_cli.parse_settings`) and the sampler options as text. Checks that ``op`` and
    ``input`` are given, that every setting is one the op takes, and what each op needs (inpaint: ``mask``;
    interpolate: ``input2``, ``n >= 2``, one condition). ``ValueError`` names the setting."""
    edit: dict[str, Any] = {}
    shared: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"unknown setting '{pair}'; valid keys: {', '.join(SETTINGS)} or an option of the "
                             "sampler (as key=value)")
        if key in _EDIT_TYPES:
            edit[key] = _typed(key, value)
        else:
            shared.append(pair)
    settings, options = parse_settings(shared)
    if "op" not in edit:
        raise ValueError(f"missing setting 'op': give op=<{'|'.join(OPS)}>")
    op = edit["op"]
    if "input" not in edit:
        raise ValueError(f"missing setting 'input': give input=<file> (the file to {op})")
    for key in (*edit, *settings):
        if op not in _OPS_OF.get(key, OPS):
            raise ValueError(f"'{key}=' is a setting of op={' and op='.join(_OPS_OF[key])}, not of op={op}; drop it")
    needs = {"inpaint": "mask", "interpolate": "input2"}.get(op)
    if needs and needs not in edit:
        raise ValueError(f"op={op} needs {needs}=<{'region or file' if needs == 'mask' else 'file'}>")
    if op == "interpolate":
        _check_interpolation(settings, options)
    if "infer" in edit and edit["infer"] in settings:
        raise ValueError(f"infer={edit['infer']} and {edit['infer']}= both given: the model infers the {edit['infer']} "
                         f"or is told it; drop one")
    steering = sorted({"resample", "jump_length", "reconstruction_guidance"} & set(edit))
    if edit.get("method") == "trained" and steering:
        raise ValueError(f"{'= and '.join(steering)}= steer method=training_free; drop them with method=trained")
    if (edit.get("method") == "trained" and settings.get("guidance", 1.0) != 1.0
            and not {"class", "text"} & set(settings)):
        raise ValueError(f"guidance={settings['guidance']:g} with method=trained guides the condition given beside "
                         "the known region, and none is: give class= or text=, or drop guidance=")
    return edit, settings, options


def check_choices(edit: dict[str, Any]) -> None:
    """``method=`` and ``mask_rule=`` name an inpainting method and mask rule of :mod:`mmldm.editing` (which
    imports torch: checked once the command gets that far, before the model loads)."""
    from .editing import INPAINT_METHODS, MASK_RULES

    for key, choices in (("method", INPAINT_METHODS), ("mask_rule", MASK_RULES)):
        if key in edit and edit[key] not in choices:
            raise ValueError(f"invalid value '{edit[key]}' for '{key}': expected one of: {', '.join(choices)}")


def _check_interpolation(settings: dict[str, Any], options: dict[str, str]) -> None:
    """An interpolation takes ``n >= 2`` frames, one condition for all of them and no sampler option."""
    if options:
        raise ValueError(f"unknown setting '{next(iter(options))}' for op=interpolate: it inverts and samples with "
                         f"euler and takes no sampler option; its settings: {', '.join(_settings_of('interpolate'))}")
    if settings.get("n", 2) < 2:
        raise ValueError(f"invalid value '{settings['n']}' for 'n': an interpolation has n >= 2 frames (both ends)")
    for key, sep in (("class", ","), ("text", "|")):
        if sep in settings.get(key, ""):
            raise ValueError(f"invalid value '{settings[key]}' for '{key}': an interpolation takes one {key} for "
                             "every frame")


def _settings_of(op: str) -> list[str]:
    return [k for k in SETTINGS if op in _OPS_OF.get(k, OPS)]


def _reworded(message: str) -> str:
    """A message of :mod:`mmldm.sampling_cli` that lists ``mmldm sample``'s settings, listing these instead."""
    return re.sub(r"the settings of mmldm sample are .*$", f"the settings of mmldm edit are {', '.join(SETTINGS)}",
                  message)


def edit_conditions(pipe: Any, settings: dict[str, Any], n: int) -> dict[str, Any] | None:
    """The conditions ``class=``/``text=`` name for ``n`` results (cycled), else ``None``: a condition not given
    is left out (the null condition: the input guides the edit), unlike ``mmldm sample``, which takes them
    from held-out data."""
    import torch

    cond: dict[str, Any] = {}
    if "class" in settings:
        picked = [int(v) for v in settings["class"].split(",")]
        cond["class"] = torch.tensor([picked[i % len(picked)] for i in range(n)])
    if "text" in settings:
        picked = settings["text"].split("|")
        cond["text"] = [picked[i % len(picked)] for i in range(n)]
    return cond or None


def _result_titles(pipe: Any, op: str, cond: dict[str, Any] | None, n: int) -> list[str]:
    if op == "interpolate":
        return [f"t={i / (n - 1):.2f}" for i in range(n)]
    if cond is None:
        return [f"{op} {i}" for i in range(n)]
    from .preview import titles

    return titles(cond, n, pipe.modality.class_names)


def run_edit(pipe: Any, edit: dict[str, Any], settings: dict[str, Any], options: dict[str, Any],
             out: Path) -> list[Path]:
    """Read the inputs (and the mask), run ``edit["op"]`` and write inputs, masked input and results into
    ``out`` with :meth:`Modality.save <mmldm.interfaces.Modality.save>`; return the written paths."""
    import torch

    from .regions import resolve_mask

    op, modality = edit["op"], pipe.modality
    x = modality.load(edit["input"])[None]  # (1, C, *s)
    n = settings.get("n", _DEFAULT_N[op])
    cond = edit_conditions(pipe, settings, 1 if op == "interpolate" else n)
    mask = resolve_mask(modality, edit["mask"]) if op == "inpaint" else None  # (1 or C, *s)
    if "infer" in edit:
        cond = {**(cond or {}), edit["infer"]: _inferred(pipe, x, mask, edit["infer"], cond, settings.get("seed", 0), n)}
    common = {"steps": settings.get("steps"), "guidance": settings.get("guidance", 3.0 if cond else 1.0)}
    sampled = {"sampler": settings.get("sampler"), "seed": settings.get("seed", 0), **options}
    paths: list[Path] = []
    if op == "interpolate":
        x = torch.cat([x, modality.load(edit["input2"])[None]])
        result = pipe.interpolate(x[0], x[1], n, cond, **common)
    elif op == "vary":
        result = pipe.vary(x.repeat(n, *[1] * (x.ndim - 1)), edit.get("strength", 0.6), cond, **common, **sampled)
    else:
        inpainting = {k: edit[k] for k in ("method", "resample", "jump_length", "reconstruction_guidance", "mask_rule")
                      if k in edit}
        result = pipe.inpaint(x.repeat(n, *[1] * (x.ndim - 1)), mask, cond, **inpainting, **common, **sampled)
        paths += modality.save(modality.erase(x, mask), out, prefix="masked", titles=["masked"])
    paths += modality.save(x, out, prefix="input", titles=["input", "input2"][: len(x)])
    paths += modality.save(result, out, prefix=op, titles=_result_titles(pipe, op, cond, len(result)))
    return paths


def _inferred(pipe: Any, x: Any, mask: Any, key: str, cond: dict[str, Any] | None, seed: int, n: int) -> Any:
    """The ``key`` (a class) the model finds most likely for input ``x [1, C, *s]`` (its kept region with a
    ``mask``) given the other conditions, for ``n`` results; prints it with its probability."""
    import torch

    log_p = pipe.classify(x, mask, key=key, cond={k: v[:1] for k, v in (cond or {}).items()}, seed=seed)
    best = int(log_p[0].argmax())
    names = pipe.modality.class_names
    name = f" ({names[best]})" if names and best < len(names) and names[best] != str(best) else ""
    region = "the kept region" if mask is not None else "the input"
    print(f"mmldm edit: inferred {key} {best}{name} from {region}, probability {float(log_p[0, best].exp()):.2f}")
    return torch.full((n,), best, dtype=torch.long)


def main(argv: Sequence[str]) -> int:
    """``mmldm edit``: every error (a bad setting or sampler option, a missing input file, an unknown region, a
    mask that does not fit, a missing or damaged export, an export without a denoiser) is one line and exit
    code 2."""
    parser = argparse.ArgumentParser(prog="mmldm edit", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (config.yaml + *.safetensors)")
    parser.add_argument("settings", nargs="*", help="key=value settings and sampler options (see above)")
    args = parser.parse_args(argv)
    try:
        edit, settings, raw_options = parse_edit(args.settings)
    except ValueError as e:
        return _fail(_reworded(str(e)))
    model = Path(args.model)
    if not (model / "config.yaml").is_file():
        return _fail(f"{model} is not an exported model folder (no config.yaml)")
    for key in ("input", "input2"):
        if key in edit and not Path(edit[key]).exists():
            return _fail(f"{key}={edit[key]}: no such file")

    from .export import ExportError, load_config
    from .registry import RegistryError

    try:
        options: dict[str, Any] = {}
        if edit["op"] != "interpolate":  # a damaged config, an unknown sampler or option fail before torch loads
            name = sampler_name(settings, load_config(model))
            check_sampler(name, "sampler" in settings, model / "config.yaml")
            options = sampler_options(name, raw_options)
        check_choices(edit)
        from .pipeline import LatentDiffusion

        pipe = LatentDiffusion.from_pretrained(model)
        if pipe.denoiser is None:
            raise ValueError(f"{model} holds an autoencoder only (no denoiser.safetensors): editing needs a "
                             "trained diffusion model; train phase 2 (stage=diffusion)")
        check_model_settings(pipe, settings)
        for line in unknown_word_warnings(pipe, settings):
            print(f"mmldm edit: warning: {line}", file=sys.stderr)
        out = Path(settings.get("out", model / "edits" / edit["op"]))
        paths = run_edit(pipe, edit, settings, options, out)
    except (ExportError, ValueError, OSError, RegistryError, NotImplementedError) as e:
        return _fail(_reworded(str(e)))
    print(f"mmldm edit: wrote {len(paths)} files to {out}")
    return 0


def _fail(message: str) -> int:
    """Print ``message`` as one line and return exit code 2."""
    print(f"mmldm edit: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
