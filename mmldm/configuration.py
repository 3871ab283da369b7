"""Composing mmldm's Hydra configuration from the core tree and the plugins.

* the core tree (``configs/`` in the source, ``mmldm_configs`` when installed),
* schemas of the core groups (:mod:`mmldm.schema`) stored as ``base_<group>``,
* every registered component's config dataclass, stored under group ``kind``
  and option ``name`` (so ``denoiser=unet3d`` selects it),
* config directories that plugins return from ``mmldm_config_dirs`` (presets),
  added to Hydra's search path.

A composed config is then range-checked (:func:`check_values`): every value
against the :class:`~mmldm.schema.Check` its schema field declares, every
component config's own checks, and the denoiser's dimensions against the
modality's, so a value that would fail or give garbage later fails here.

Torch-free: the CLI validates a config with this module before it imports
the training stack.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from . import schema
from .plugins import Plugins, plugins
from .registry import KINDS

#: Groups of the primary config, in the order ``--help`` shows them.
GROUPS = (
    "modality", "stage", "autoencoder", "regularizer", "denoiser", "conditioner",
    "diffusion", "process", "sampler", "data", "trainer", "preset",
)
#: Where a kind's group is stored when not at the root: the process is part of the diffusion config
#: (``process=flow`` selects it, ``diffusion.process.shift=3`` sets a key), so an export records it there.
PACKAGES = {"process": "diffusion.process"}
PRIMARY = "train"


def config_dir() -> Path:
    """The directory of the core config tree (works from a wheel and from a checkout)."""
    return Path(str(importlib.resources.files("mmldm_configs")))


def store_configs(loaded: Plugins | None = None) -> None:
    """Put the core schemas and every component's config into Hydra's ConfigStore (idempotent)."""
    loaded = loaded or plugins()
    cs = ConfigStore.instance()
    cs.store(name="base_run", node=schema.RunConfig)
    for group, node in schema.SCHEMAS.items():
        cs.store(group=group, name=f"base_{group}", node=node)
    cs.store(group="conditioner", name="none", node={"name": "none"})
    for comp in loaded.registry:
        cs.store(group=comp.kind, name=comp.name, node=comp.default_config(), provider=comp.plugin,
                 package=PACKAGES.get(comp.kind))


def searchpath(loaded: Plugins | None = None) -> list[str]:
    """Config directories contributed by plugins, for ``hydra.searchpath``."""
    loaded = loaded or plugins()
    return list(dict.fromkeys(loaded.config_dirs))


def searchpath_override(loaded: Plugins | None = None, existing: str | None = None) -> str | None:
    """A ``hydra.searchpath=[...]`` override with the plugins' directories (and a user's own, if given)."""
    paths = searchpath(loaded)
    if existing:
        user = existing.strip().strip("[]")
        paths = [p.strip() for p in user.split(",") if p.strip()] + paths
    if not paths:
        return None
    return "hydra.searchpath=[" + ",".join(paths) + "]"


def with_searchpath(overrides: Sequence[str], loaded: Plugins | None = None) -> list[str]:
    """``overrides`` with the plugins' config directories merged into ``hydra.searchpath``."""
    rest = [o for o in overrides if not o.startswith("hydra.searchpath=")]
    user = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.searchpath=")), None)
    extra = searchpath_override(loaded, user)
    return rest + ([extra] if extra else [])


def compose(overrides: Sequence[str] = (), config_name: str = PRIMARY) -> DictConfig:
    """Compose the run config as ``mmldm train <overrides>`` would (for the Python API and tests).

    Raises :class:`ConfigProblem` for an override that does not fit. Example::

        cfg = compose(["modality=voxel", "trainer=quick"])
        cfg.trainer.max_steps  # 300
    """
    return validate(overrides, config_name).config


@dataclass
class ConfigProblem(ValueError):
    """An override that does not fit the config tree, with a message that names key, value and choices."""

    message: str

    def __str__(self) -> str:
        return self.message


def _sweep_values(override) -> list[str]:  # noqa: ANN001 - hydra's Override
    if override.is_sweep_override():
        from hydra.errors import HydraException

        try:
            return [str(v) for v in override.sweep_string_iterator()]
        except HydraException:  # interval(...) sweeps are for sweeper plugins: nothing to enumerate
            return []
    return [override.get_value_element_as_str()] if override.value() is not None else []


def _visible(options: list[str]) -> list[str]:
    return sorted(o for o in options if not o.startswith("base_"))


@dataclass
class Validated:
    """A validated command line: the first composition and the overrides to hand Hydra."""

    config: DictConfig
    overrides: list[str]


def _preset_overrides(parsed: list, groups: dict[str, list[str]]) -> list[str]:  # noqa: ANN001
    """``preset=<modality>`` for ``modality=<modality>`` (or ``~preset`` when it ships none).

    The defaults list selects ``preset/voxel`` with the default modality; a
    preset may override other groups' choices, which Hydra forbids in an
    interpolated defaults entry, so the choice is made here.
    """
    keys = {o.key_or_group: o for o in parsed}
    if "preset" in keys or "modality" not in keys or keys["modality"].is_delete():
        return []
    modality = keys["modality"]
    if modality.is_sweep_override():
        raise ConfigProblem(
            "sweeping modality with -m is not supported: each modality applies its own preset; "
            "run one multirun per modality (or pass preset=... / ~preset explicitly)"
        )
    value = modality.get_value_element_as_str()
    return [f"preset={value}"] if value in groups["preset"] else ["~preset"]


def validate(overrides: Sequence[str], config_name: str = PRIMARY) -> Validated:
    """Check a command line by composing it (once per value of every sweep).

    Returns the first composition and the overrides to pass on (with the
    modality's preset and the plugins' config directories). Raises
    :class:`ConfigProblem` naming the key, the bad value and the valid choices
    (group options or keys) for the first override that does not fit.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    store_configs()
    user = [o for o in overrides if not o.startswith("hydra.")]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except HydraException as e:
        raise ConfigProblem(f"cannot parse the overrides: {e}") from None
    with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="mmldm"):
        loader = GlobalHydra.instance().config_loader()
        sp = with_searchpath([])
        groups = {g: _visible(loader.get_group_options(g, overrides=sp)) for g in GROUPS}
        single: list[str] = []
        for o, text in zip(parsed, user):
            key = o.key_or_group
            values = _sweep_values(o)
            if key in groups and not o.is_delete():
                for v in values:
                    if v not in groups[key]:
                        elsewhere = [g for g, options in groups.items() if v in options and g != key]
                        why = plugins().registry.why_missing(key, v) if key in KINDS else ""  # a skipped plugin
                        raise ConfigProblem(
                            f"unknown {key} '{v}' (in '{text}'); valid choices for {key}: "
                            f"{', '.join(groups[key]) or '(none installed)'}"
                            + (f"; '{v}' is an option of {elsewhere[0]}: {elsewhere[0]}={v}" if elsewhere else "")
                            + (f"; {why}" if why else "")
                        )
            single.append(f"{o.get_key_element()}={values[0]}" if o.is_sweep_override() and values else text)
        preset = _preset_overrides(parsed, groups)
        single += preset
        try:
            cfg = hydra_compose(config_name, overrides=with_searchpath(single))
        except (HydraException, OmegaConfBaseException, ValueError) as e:  # ValueError: a key into a list
            raise ConfigProblem(_explain(e, single, config_name, hydra_compose)) from None
    given = {o.key_or_group.lstrip("+~"): _sweep_values(o) for o in parsed if not o.is_delete()}
    check_values(cfg, {k: v[0] for k, v in given.items() if v})
    _check_other_sweep_values(cfg, [o for o in parsed if o.is_sweep_override() and o.key_or_group not in groups])
    return Validated(cfg, with_searchpath([*overrides, *preset]))


def check_values(cfg: DictConfig, given: Mapping[str, str] | None = None) -> None:
    """Range-check a composed config; raise :class:`ConfigProblem` for the first bad value.

    * every value against its schema field's :class:`~mmldm.schema.Check` ("invalid value '-1' for
      config key 'phase1.lr': expected > 0"; ``given`` maps keys to the text typed on the command line),
    * every component config's own checks (its ``__post_init__``, e.g. combinations of keys),
    * the denoiser's declared dimensions against the modality's samples.

    Torch-free and fast (milliseconds).
    """
    from .schema import problems, show

    for p in problems(cfg, schema.RunConfig if OmegaConf.get_type(cfg) is dict else None, "", _entry_type):
        value = (given or {}).get(p.key, show(p.value))
        raise ConfigProblem(f"invalid value '{value}' for config key '{p.key}': expected {p.expected}")
    _check_components(cfg)
    _check_dims(cfg)
    _check_sampler_fits_process(cfg)


def _entry_type(kind: str, node: DictConfig) -> type | None:
    """The config dataclass of an entry of a component list (``conditioner: [...]``)."""
    from .plugins import registry

    if kind not in KINDS or "name" not in node or (kind, node.name) not in registry():
        return None
    return registry().get(kind, node.name).config


def _check_other_sweep_values(cfg: DictConfig, sweeps: list) -> None:  # hydra's Override objects
    """The 2nd, 3rd, ... values of a ``-m key=a,b,c`` sweep (the first was composed) set into ``cfg`` and checked."""
    from omegaconf.errors import OmegaConfBaseException

    for o in sweeps:
        key = o.key_or_group.lstrip("+~")
        try:
            values = list(zip(o.sweep_iterator(), o.sweep_string_iterator()))[1:]
        except Exception:  # noqa: BLE001 - sweeps that are not lists of values (intervals): Hydra checks them
            continue
        for value, text in values:
            other = cfg.copy()
            try:
                OmegaConf.update(other, key, value, force_add=False)
            except OmegaConfBaseException as e:
                raise ConfigProblem(
                    f"invalid value '{text}' for config key '{key}': {str(e).splitlines()[0]}") from None
            check_values(other, {key: text})


def _check_components(cfg: DictConfig) -> None:
    """Every component config (and each entry of a list such as ``conditioner: [class, text]``) built
    as its dataclass, which runs its own checks (``__post_init__``).

    A single node is typed by Hydra's ConfigStore already; list entries are not, so a
    typo in one would otherwise surface only when phase 2 builds, after phase 1 trained.
    """
    from omegaconf.errors import OmegaConfBaseException

    from .plugins import registry
    from .registry import RegistryError

    for kind in ("modality", "autoencoder", "regularizer", "denoiser", "conditioner", "process", "sampler"):
        key = PACKAGES.get(kind, kind)
        nodes = OmegaConf.select(cfg, key)
        listed = OmegaConf.is_list(nodes)
        for i, node in enumerate(nodes if listed else [] if nodes is None else [nodes]):
            where = f"{key}.{i}" if listed else key
            if not OmegaConf.is_dict(node) or "name" not in node:
                raise ConfigProblem(f"'{where}' must be a mapping with a 'name' (a registered {kind}), got {node!r}")
            if node.name == "none":
                continue
            try:
                registry().config_object(kind, node)
            except RegistryError as e:
                raise ConfigProblem(f"'{where}.name': {e}") from None
            except OmegaConfBaseException as e:
                raise ConfigProblem(f"'{where}' ({node.name}): {str(e).splitlines()[0]}") from None
            except ValueError as e:
                raise ConfigProblem(f"invalid {where} config ({kind}={node.name}): {str(e).splitlines()[0]}") from None


def _check_sampler_fits_process(cfg: DictConfig) -> None:
    """The sampler must work with the process (:func:`mmldm.diffusion.config.check_sampler_fits`: its
    ``spacing`` one the process places noise levels with, the process one the sampler declares)."""
    from .diffusion.config import check_sampler_fits
    from .plugins import registry

    process, sampler = OmegaConf.select(cfg, PACKAGES["process"]), cfg.get("sampler")
    if not OmegaConf.is_dict(process) or not OmegaConf.is_dict(sampler) or "name" not in sampler:
        return
    try:
        check_sampler_fits(registry().config_object("process", process), registry().config_object("sampler", sampler))
    except ValueError as e:
        raise ConfigProblem(str(e)) from None


def _check_dims(cfg: DictConfig) -> None:
    """A denoiser that declares its dimensions (``dims`` of its config class, e.g. ``unet2d``: 2) must get
    latents of those dimensions: the modality's samples' (``sample_dims`` of its config; autoencoders keep
    the dimensions). Components that declare none fit any."""
    from .plugins import registry

    if not cfg.get("stage", {}).get("diffusion", True) or not OmegaConf.is_dict(cfg.get("denoiser")):
        return
    modality = registry().config_object("modality", cfg.modality)
    sample_dims = getattr(modality, "sample_dims", None)
    declared = getattr(registry().get("denoiser", cfg.denoiser.name).config, "dims", None)
    if sample_dims is None or declared is None or sample_dims == declared:
        return
    fitting = [c.name for c in registry()
               if c.kind == "denoiser" and getattr(c.config, "dims", None) in (None, sample_dims)]
    key = getattr(modality, "dims_key", None)
    setting = f" with modality.{key}={getattr(modality, key)}" if key else ""
    raise ConfigProblem(
        f"denoiser={cfg.denoiser.name} is a {declared}-D denoiser, but modality={cfg.modality.name}{setting} gives "
        f"{sample_dims}-D samples and latents; choose denoiser={' or denoiser='.join(fitting) or '?'}"
        + (f" (or change modality.{key})" if key else "")
    )


#: Keys of earlier versions and where they are now: the noise schedule and what the network predicts
#: became the ``process`` group (``process=vp|flow|edm``), stored under ``diffusion.process``.
MOVED_KEYS = {
    "diffusion.parameterization": "diffusion.process.prediction",
    **{f"diffusion.{k}": f"diffusion.process.{k}" for k in (
        "num_timesteps", "schedule", "beta_start", "beta_end", "zero_terminal_snr", "weighting", "min_snr_gamma")},
}


def _explain(error: Exception, overrides: list[str], config_name: str, hydra_compose) -> str:  # noqa: ANN001
    """Turn a Hydra/OmegaConf composition error into a message with the valid keys."""
    text = str(error)
    cause = error.__cause__ or error
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        into_list = isinstance(error, ValueError) and f"'{key.rpartition('.')[2]}'" in text  # int(<leaf>) failed
        if f"'{key}'" not in text and o not in text and not into_list:
            continue
        parent, _, leaf = key.rpartition(".")
        rest = [x for x in overrides if x != o]
        try:
            base = hydra_compose(config_name, overrides=with_searchpath(rest))
            node = OmegaConf.select(base, parent) if parent else base
        except Exception:  # noqa: BLE001 - fall back to Hydra's own message
            node = None
        value = o.split("=", 1)[1] if "=" in o else ""
        if into_list:
            if not OmegaConf.is_list(node):
                continue
            return (f"cannot set '{key}' (value '{value}'): '{parent}' is a list here; set a key of one "
                    f"entry as '{parent}.<index>.{leaf}' (indices 0..{len(node) - 1})")
        if isinstance(node, DictConfig) and leaf not in node:
            moved = MOVED_KEYS.get(key)
            return (
                f"unknown config key '{key}' (value '{value}'); "
                + (f"it moved to '{moved}' (the process group, docs/concepts.md)" if moved else
                   f"valid keys under '{parent or '<root>'}': {', '.join(sorted(str(k) for k in node.keys()))}")
            )
        return f"invalid value '{value}' for config key '{key}': {str(cause).splitlines()[0]}"
    return f"invalid configuration: {text}"
