"""Composing mmldm's Hydra configuration from the core tree and the plugins.

* the core tree (``configs/`` in the source, ``mmldm_configs`` when installed),
* schemas of the core groups (:mod:`mmldm.schema`) stored as ``base_<group>``,
* every registered component's config dataclass, stored under group ``kind``
  and option ``name`` (so ``denoiser=unet3d`` selects it),
* config directories that plugins return from ``mmldm_config_dirs`` (presets),
  added to Hydra's search path.

Torch-free: the CLI validates a config with this module before it imports
the training stack.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from . import schema
from .plugins import Plugins, plugins
from .registry import KINDS

#: Groups of the primary config, in the order ``--help`` shows them.
GROUPS = (
    "modality", "stage", "autoencoder", "regularizer", "denoiser", "conditioner",
    "diffusion", "sampler", "data", "trainer", "preset",
)
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
        cs.store(group=comp.kind, name=comp.name, node=comp.default_config(), provider=comp.plugin)


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
        return [str(v) for v in override.sweep_string_iterator()]
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
                        raise ConfigProblem(
                            f"unknown {key} '{v}' (in '{text}'); valid choices for {key}: "
                            f"{', '.join(groups[key]) or '(none installed)'}"
                        )
            single.append(f"{o.get_key_element()}={values[0]}" if o.is_sweep_override() and values else text)
        preset = _preset_overrides(parsed, groups)
        single += preset
        try:
            cfg = hydra_compose(config_name, overrides=with_searchpath(single))
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigProblem(_explain(e, single, config_name, hydra_compose)) from None
    _check_listed_components(cfg)
    return Validated(cfg, with_searchpath([*overrides, *preset]))


def _check_listed_components(cfg: DictConfig) -> None:
    """Entries of a component list (e.g. ``conditioner: [class, text]``) against their schemas.

    A single node is typed by Hydra's ConfigStore already; list entries are not, so a
    typo in one would otherwise surface only when phase 2 builds, after phase 1 trained.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .plugins import registry
    from .registry import RegistryError

    for kind in ("conditioner",):
        nodes = cfg.get(kind)
        if not OmegaConf.is_list(nodes):
            continue
        for i, node in enumerate(nodes):
            where = f"{kind}.{i}"
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


def _explain(error: Exception, overrides: list[str], config_name: str, hydra_compose) -> str:  # noqa: ANN001
    """Turn a Hydra/OmegaConf composition error into a message with the valid keys."""
    text = str(error)
    cause = error.__cause__ or error
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" not in text and o not in text:
            continue
        parent, _, leaf = key.rpartition(".")
        rest = [x for x in overrides if x != o]
        try:
            base = hydra_compose(config_name, overrides=with_searchpath(rest))
            node = OmegaConf.select(base, parent) if parent else base
        except Exception:  # noqa: BLE001 - fall back to Hydra's own message
            node = None
        value = o.split("=", 1)[1] if "=" in o else ""
        if isinstance(node, DictConfig) and leaf not in node:
            return (
                f"unknown config key '{key}' (value '{value}'); valid keys under "
                f"'{parent or '<root>'}': {', '.join(sorted(str(k) for k in node.keys()))}"
            )
        return f"invalid value '{value}' for config key '{key}': {str(cause).splitlines()[0]}"
    return f"invalid configuration: {text}"
