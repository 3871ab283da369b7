"""The ``mmldm`` command.

Start-up stays light: the config is composed and validated (Hydra, pluggy,
no torch) before the training stack is imported, so a bad override fails in
about a second.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Callable, Sequence

from .plugins import plugins

PROG = "mmldm"

MAIN_HELP = f"""\
usage: {PROG} <command> [options] [key=value ...]

mmldm trains latent diffusion models on images, 3D voxel grids and audio.
Modalities and components come from plugins (`{PROG} plugins` lists them).

commands:
  train      train the autoencoder (phase 1) and the latent diffusion model (phase 2)
  sample     generate samples from an exported model folder
  edit       inpaint, vary or interpolate your own files (PNG, mesh, WAV, ...) with an exported model
  encode     encode a dataset into a latent cache with a trained autoencoder
  prepare    write any folder a modality reads into litdata shards, to stream data larger than memory
  evaluate   measure a trained autoencoder or model on held-out data
  ablate     train the variants of a study (regularizer, kl_weight, latent_scale, compression,
             voxel_latent, audio_latent) with one budget and compare reconstruction and generation
  train-vocoder
             train a neural vocoder for a modality's features (audio: modality.vocoder=vocos uses it)
  plugins    list installed plugins, their versions and components

Run `{PROG} <command> --help` for the options of one command.

examples:
  {PROG} train modality=voxel trainer=quick
  {PROG} train modality=audio regularizer=vq trainer.max_steps=500
  {PROG} train -m regularizer=kl,vq,ae trainer=quick
  {PROG} sample outputs/voxel/<run>/export n=16 guidance=3
  {PROG} edit outputs/image/<run>/export op=inpaint input=photo.png mask=bottom
  {PROG} ablate regularizer --quick
  {PROG} train-vocoder modality=audio vocoder.max_minutes=30 hydra.run.dir=runs/vocoder
"""

HYDRA_VERB_HELP = {
    "train": (
        "Train phase 1 (autoencoder) and phase 2 (latent diffusion) on the chosen modality.",
        "The run directory (outputs/<modality>/<date_time>/ by default, or hydra.run.dir=...) "
        "receives checkpoints, an exported model folder (export/), sample files, metrics.json "
        "and logs. stage=autoencoder or stage=diffusion runs one phase; "
        "phase1.checkpoint=<exported autoencoder> reuses a trained autoencoder.",
    ),
    "encode": (
        "Encode the modality's training data into a latent cache with a trained autoencoder.",
        "Needs phase1.checkpoint=<exported autoencoder folder>. Writes memory-mappable latents "
        "(posterior mean and std) to <run dir>/latents/.",
    ),
    "evaluate": (
        "Evaluate a trained autoencoder (stage=autoencoder) or a full model on held-out data.",
        "Needs phase1.checkpoint=<exported folder>: an autoencoder export (stage=autoencoder) or "
        "a full model export (<run dir>/export), which also samples and measures generation. "
        "Writes metrics.json and a readable table.",
    ),
}


def _fail(verb: str, message: str) -> int:
    print(f"{PROG} {verb}: error: {message}", file=sys.stderr)
    return 2


def _split_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's flags (``-m``, ``--cfg job``, ...) from ``key=value`` overrides."""
    flags, overrides = [], []
    it = iter(args)
    for a in it:
        if a in ("-m", "--multirun", "--resolve", "--info"):
            flags.append(a)
        elif a in ("--cfg", "-c", "--package", "-p"):
            flags += [a, next(it, "job")]
        elif a.startswith("-"):
            raise ValueError(f"unknown option '{a}'; options: -m/--multirun, --cfg job|hydra|all, --help")
        else:
            overrides.append(a)
    return flags, overrides


def _group_help() -> str:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .configuration import GROUPS, _visible, config_dir, store_configs, with_searchpath

    store_configs()
    lines = []
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="mmldm"):
        loader = GlobalHydra.instance().config_loader()
        for g in GROUPS:
            opts = _visible(loader.get_group_options(g, overrides=with_searchpath([])))
            lines.append(f"  {g:<12} {', '.join(opts) or '-'}")
    return "\n".join(lines)


def _hydra_verb_help(verb: str) -> str:
    short, long = HYDRA_VERB_HELP[verb]
    return (
        f"usage: {PROG} {verb} [-m] [--cfg job] [group=option ...] [key.path=value ...]\n\n"
        f"{short}\n\n{textwrap.fill(long, 88)}\n\n"
        f"config groups (choose with group=option; modality=<m> also applies preset <m>):\n"
        f"{_group_help()}\n\n"
        "any key can be set with dotted paths, e.g. trainer.max_steps=500, data.batch_size=8,\n"
        "diffusion.process.prediction=v, autoencoder.channel_mult=[1,2,4].\n\n"
        "options:\n"
        "  -m, --multirun   sweep comma-separated values, e.g. -m regularizer=kl,vq,ae\n"
        "  --cfg job        print the composed config and exit (no work is done)\n"
        "  -h, --help       show this message\n"
    )


def _user_errors(verb: str) -> tuple[type[BaseException], ...]:
    """What a verb reports as one line (no traceback; ``HYDRA_FULL_ERROR=1`` shows it). Every verb: a
    :class:`~mmldm.registry.RegistryError`, a component that is not installed or whose plugin's module does
    not import (its message names the component, the plugin and the cause). ``encode``/``evaluate`` also: they
    only read an export and data, so a ``ValueError``/``OSError`` is a missing setting or a bad file, and its
    message names it. (:func:`mmldm.training.run.run` reports damaged exports, checkpoints and configs that
    do not fit together as one line itself, for every verb.)"""
    from .registry import RegistryError

    return (RegistryError, ValueError, OSError) if verb in ("encode", "evaluate") else (RegistryError,)


def _run_hydra_verb(verb: str, args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(_hydra_verb_help(verb))
        return 0
    try:
        flags, overrides = _split_flags(args)
    except ValueError as e:
        return _fail(verb, str(e))

    from .configuration import ConfigProblem, validate

    try:
        final = validate(overrides).overrides
    except ConfigProblem as e:
        return _fail(verb, str(e))

    def task(cfg) -> None:  # noqa: ANN001
        from hydra.core.hydra_config import HydraConfig

        from .training.run import run

        try:
            run(verb, cfg, HydraConfig.get().runtime.output_dir)
        except _user_errors(verb) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(_fail(verb, " ".join(str(e).split()) or type(e).__name__)) from None

    return _hydra_main(verb, flags, final, task)


def _hydra_main(verb: str, flags: Sequence[str], overrides: Sequence[str], task: Callable[..., None]) -> int:
    """Run ``task(cfg)`` under Hydra (run directory, logging) with the primary ``train`` config."""
    import hydra

    from .configuration import config_dir

    saved = sys.argv
    sys.argv = [f"{PROG} {verb}", *flags, *overrides]
    try:
        hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(task)()
    except SystemExit as e:  # hydra reports errors itself and exits
        return int(e.code or 0)
    finally:
        sys.argv = saved
    return 0


# ------------------------------------------------------------------------------------------ train-vocoder
VOCODER_HELP = f"""\
usage: {PROG} train-vocoder [--cfg job] [group=option ...] [key.path=value ...]

Train a neural vocoder for a modality's features and write a folder the modality loads it from
(audio: modality.vocoder=vocos modality.vocoder_path=<folder>; a model exported with it carries
its weights, so the export no longer needs the folder).

The config is composed as for `{PROG} train` (modality=audio unless given, with its preset, e.g.
preset=audio_fsdd modality.root=<folder>), plus the vocoder group: vocoder=vocos unless given, its
keys set with vocoder.<key>=value. The vocoder trains on random crops of the modality's "train"
clips, then vocodes the held-out "val" clips beside Griffin-Lim, and writes into the run
directory (outputs/vocoder/<date_time>/, or hydra.run.dir=<folder>):
  vocoder.safetensors   the weights
  config.yaml           the vocoder config, the feature settings it fits, provenance (steps, seconds,
                        data root and split) and held-out metrics (multi-resolution STFT distance,
                        log-mel L1, for the vocoder and for Griffin-Lim)
  heldout/*.wav         held-out clips: real, the vocoder's, Griffin-Lim's

budget: vocoder.max_steps and vocoder.max_minutes (whichever ends first); trainer.max_steps and
trainer.max_minutes cap them when set. seed=<int> seeds weights and crops.

vocoders (vocoder=<name>, then vocoder.<key>=value):
{{vocoders}}

options:
  --cfg job        print the composed config and exit (no work is done)
  -h, --help       show this message

examples:
  {PROG} train-vocoder modality=audio preset=audio_fsdd modality.root=<fsdd recordings> \\
      vocoder.max_minutes=30 hydra.run.dir=runs/vocoder
  {PROG} train modality=audio preset=audio_fsdd modality.root=<fsdd recordings> \\
      modality.vocoder=vocos modality.vocoder_path=runs/vocoder
"""


def _vocoder_options() -> str:
    """One line per registered vocoder: its keys and defaults."""
    import dataclasses

    lines = []
    for comp in plugins().registry:
        if comp.kind != "vocoder":
            continue
        default = comp.default_config()
        values = {f.name: getattr(default, f.name) for f in dataclasses.fields(comp.config)} if comp.config else {}
        keys = " ".join(f"{k}={v}".replace(", ", ",") for k, v in values.items() if k != "name")
        lines.append(textwrap.fill(f"{comp.name}: {keys or '(no keys)'}", 96, initial_indent="  ",
                                   subsequent_indent="      ", break_on_hyphens=False))
    return "\n".join(lines) or "  (none installed)"


def _vocoder_overrides(overrides: Sequence[str]) -> list[str]:
    """``modality=audio`` and ``+vocoder=vocos`` unless given (``vocoder=x`` becomes ``+vocoder=x``: the group is
    not in the ``train`` config's defaults), and the run directory ``outputs/vocoder/<date_time>``."""
    keys = [o.split("=", 1)[0] for o in overrides]
    out = [f"+{o}" if k == "vocoder" else o for o, k in zip(overrides, keys)]
    if "modality" not in keys:
        out.insert(0, "modality=audio")
    if "vocoder" not in keys and "+vocoder" not in keys:
        out.append("+vocoder=vocos")
    if "hydra.run.dir" not in keys:
        out.append("hydra.run.dir=outputs/vocoder/${now:%Y-%m-%d_%H-%M-%S}")
    return out


def cmd_train_vocoder(args: Sequence[str]) -> int:
    verb = "train-vocoder"
    if any(a in ("-h", "--help") for a in args):
        print(VOCODER_HELP.format(vocoders=_vocoder_options()))
        return 0
    try:
        flags, overrides = _split_flags(args)
        if any(f in ("-m", "--multirun") for f in flags):
            raise ValueError("train-vocoder trains one vocoder: -m/--multirun is not supported")
    except ValueError as e:
        return _fail(verb, str(e))

    from .configuration import ConfigProblem, validate
    from .registry import RegistryError

    overrides = _vocoder_overrides(overrides)
    given = next((o.split("=", 1)[1] for o in overrides if o.startswith("+vocoder=")), "vocos")
    try:
        names = plugins().registry.names("vocoder")
        if given not in names:
            raise ConfigProblem(f"unknown vocoder '{given}'; valid choices for vocoder: {', '.join(names) or '(none)'}")
        final = validate(overrides).overrides
    except ConfigProblem as e:
        return _fail(verb, str(e))

    def task(cfg) -> None:  # noqa: ANN001
        from hydra.core.hydra_config import HydraConfig

        from .export import ExportError
        from .training.rundir import RunDirectoryBusy

        try:
            train_vocoder(cfg, HydraConfig.get().runtime.output_dir)
        except (RegistryError, ValueError, OSError, ExportError, RunDirectoryBusy, NotImplementedError,
                FloatingPointError) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(_fail(verb, " ".join(str(e).split()) or type(e).__name__)) from None

    return _hydra_main(verb, flags, final, task)


def train_vocoder(cfg, run_dir: str) -> dict:  # noqa: ANN001 - a composed DictConfig
    """What ``mmldm train-vocoder`` does with a composed config: build the modality and ``cfg.vocoder`` (seeded),
    and :meth:`~mmldm.interfaces.Vocoder.fit` it into ``run_dir`` (locked while it trains)."""
    from pathlib import Path

    import torch

    from .build import build_modality
    from .plugins import registry
    from .training.rundir import RunLock

    torch.manual_seed(cfg.seed)
    modality = build_modality(cfg.modality)
    vocoder = registry().build("vocoder", cfg.vocoder, modality=modality)
    run_dir = Path(run_dir)
    with RunLock(run_dir, " ".join([PROG, "train-vocoder", *sys.argv[1:]])):
        record = vocoder.fit(modality, run_dir, seed=int(cfg.seed), max_steps=cfg.trainer.max_steps,
                             max_minutes=cfg.trainer.max_minutes)
    steps = record.get("provenance", {}).get("steps", "?")
    print(f"{PROG}: vocoder trained ({steps} steps) and written to {run_dir}; use it with "
          f"modality.vocoder={cfg.vocoder.name} modality.vocoder_path={run_dir}")
    return record


def _plugins_table() -> str:
    loaded = plugins()
    rows = []
    for info in sorted(loaded.info.values(), key=lambda i: i.name):
        by_kind: dict[str, list[str]] = {}
        for kind, name in info.components:
            by_kind.setdefault(kind, []).append(name)
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(by_kind.items())) or "(no components)"
        rows.append((info.name, info.version, info.module, comps))
    width = max([len(r[0]) for r in rows] + [6])
    out = [f"{'plugin':<{width}}  {'version':<9} components"]
    out += [f"{n:<{width}}  {v:<9} {c}   [{m}]" for n, v, m, c in rows]
    if loaded.blocked:
        out.append(f"blocked by MMLDM_DISABLED_PLUGINS: {', '.join(loaded.blocked)}")
    if loaded.skipped:
        out.append(f"skipped (failed to load, see the 'mmldm: plugin ...' lines): {', '.join(sorted(loaded.skipped))}")
    return "\n".join(out)


def cmd_plugins(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} plugins",
        description="List every installed mmldm plugin (entry-point group 'mmldm'), its version and "
        "the components it registers. Plugins named in MMLDM_DISABLED_PLUGINS (comma-separated) are skipped. "
        "A plugin that fails (does not import, raises in a hook, registers an unknown kind or a component name "
        "another plugin holds) is left out whole and named in one line on stderr.",
    )
    parser.parse_args(args)
    print(_plugins_table())
    return 0


def cmd_ablate(args: Sequence[str]) -> int:
    from .ablation import main as ablate_main

    return ablate_main(args)


def cmd_sample(args: Sequence[str]) -> int:
    from .sampling_cli import main as sample_main

    return sample_main(args)


def cmd_prepare(args: Sequence[str]) -> int:
    from .prepare_cli import main as prepare_main

    return prepare_main(args)


def cmd_edit(args: Sequence[str]) -> int:
    from .edit_cli import main as edit_main

    return edit_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmldm`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(MAIN_HELP)
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(f"{PROG} {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    commands: dict[str, Callable[[Sequence[str]], int]] = {
        "plugins": cmd_plugins,
        "sample": cmd_sample,
        "edit": cmd_edit,
        "prepare": cmd_prepare,
        "ablate": cmd_ablate,
        "train-vocoder": cmd_train_vocoder,
        **{v: (lambda a, v=v: _run_hydra_verb(v, a)) for v in HYDRA_VERB_HELP},
    }
    if verb not in commands:
        return _fail(verb, f"unknown command; valid commands: {', '.join(sorted(commands))}")
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    return commands[verb](rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
