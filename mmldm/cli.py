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
  encode     encode a dataset into a latent cache with a trained autoencoder
  evaluate   measure a trained autoencoder or model on held-out data
  ablate     train the variants of a study (regularizer, kl_weight, latent_scale, compression,
             voxel_latent) with one budget and compare reconstruction and generation
  plugins    list installed plugins, their versions and components

Run `{PROG} <command> --help` for the options of one command.

examples:
  {PROG} train modality=voxel trainer=quick
  {PROG} train modality=audio regularizer=vq trainer.max_steps=500
  {PROG} train -m regularizer=kl,vq,ae trainer=quick
  {PROG} sample outputs/voxel/<run>/export n=16 guidance=3
  {PROG} ablate regularizer --quick
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

    from .configuration import ConfigProblem, config_dir, validate

    try:
        final = validate(overrides).overrides
    except ConfigProblem as e:
        return _fail(verb, str(e))

    import hydra

    def task(cfg) -> None:  # noqa: ANN001
        from hydra.core.hydra_config import HydraConfig

        from .training.run import run

        try:
            run(verb, cfg, HydraConfig.get().runtime.output_dir)
        except _user_errors(verb) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(_fail(verb, " ".join(str(e).split()) or type(e).__name__)) from None

    saved = sys.argv
    sys.argv = [f"{PROG} {verb}", *flags, *final]
    try:
        hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(task)()
    except SystemExit as e:  # hydra reports errors itself and exits
        return int(e.code or 0)
    finally:
        sys.argv = saved
    return 0


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
        "ablate": cmd_ablate,
        **{v: (lambda a, v=v: _run_hydra_verb(v, a)) for v in HYDRA_VERB_HELP},
    }
    if verb not in commands:
        return _fail(verb, f"unknown command; valid commands: {', '.join(sorted(commands))}")
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    return commands[verb](rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
