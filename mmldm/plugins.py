"""Plugin loading: the ``mmldm`` entry-point group, blocking, errors per plugin.

Built-in plugins (``plugins/`` in the source tree) are declared in the
project's own ``pyproject.toml`` and load exactly like a third party's.

Nothing here runs at import time: call :func:`load_plugins`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import logging
import os
import sys
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .registry import Registry, RegistryError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mmldm"
#: Comma-separated plugin names that are not loaded.
DISABLE_ENV = "MMLDM_DISABLED_PLUGINS"


@dataclass
class PluginInfo:
    """One loaded plugin: name, distribution version and what it registered."""

    name: str
    version: str
    module: str
    components: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Plugins:
    """The result of :func:`load_plugins`."""

    manager: pluggy.PluginManager
    registry: Registry
    info: dict[str, PluginInfo]
    #: One line per plugin that failed to import or register.
    errors: list[str]
    blocked: list[str]
    config_dirs: list[str]


def get_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with mmldm's hook specifications."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in eps:  # a name may appear twice when a package is installed twice
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda e: e.name)


def _version(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "unknown"


def load_plugins(extra: dict[str, object] | None = None, report: bool = True) -> Plugins:
    """Load every plugin of the entry-point group ``mmldm`` and fill a registry.

    Args:
        extra (`dict[str, module]`, *optional*): plugin objects to register in
            addition to the entry points (e.g. from tests), by name.
        report (`bool`): print one line per failing plugin to stderr.

    A plugin that fails to import or to register is reported by name (in
    :attr:`Plugins.errors`) and left out; the others still load. Two plugins
    registering one ``(kind, name)`` raise :class:`~mmldm.registry.RegistryError`
    naming both.
    """
    pm = get_plugin_manager()
    blocked = [b.strip() for b in os.environ.get(DISABLE_ENV, "").split(",") if b.strip()]
    for name in blocked:
        pm.set_blocked(name)

    errors: list[str] = []
    info: dict[str, PluginInfo] = {}
    candidates: list[tuple[str, str, str, object]] = []
    for ep in _entry_points():
        if pm.is_blocked(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as e:  # noqa: BLE001 - any import failure is reported by name
            errors.append(f"plugin '{ep.name}' ({ep.value}) failed to import: {type(e).__name__}: {e}")
            continue
        candidates.append((ep.name, _version(ep), ep.value, module))
    for name, module in (extra or {}).items():
        if not pm.is_blocked(name):
            candidates.append((name, getattr(module, "__version__", "unknown"), getattr(module, "__name__", name), module))

    for name, version, modname, module in candidates:
        try:
            pm.register(module, name=name)
        except ValueError as e:
            errors.append(f"plugin '{name}' ({modname}) could not be registered: {e}")
            continue
        info[name] = PluginInfo(name, version, modname)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        bad = getattr(e, "plugin_name", None) or str(e)
        raise RegistryError(f"a plugin implements an unknown hook (misspelled?): {bad}: {e}") from e

    registry = Registry()
    config_dirs: list[str] = []
    for impl in pm.hook.mmldm_register_components.get_hookimpls():
        name = impl.plugin_name
        before = {(c.kind, c.name) for c in registry}
        try:
            impl.function(registry=registry.for_plugin(name))
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - reported by name, the others go on
            errors.append(f"plugin '{name}' failed to register its components: {type(e).__name__}: {e}")
            # drop what it registered before failing, so a half-registered plugin is absent
            for key in {(c.kind, c.name) for c in registry} - before:
                registry._components.pop(key)
            info.pop(name, None)
            pm.unregister(name=name)
            continue
        if name in info:
            info[name].components = sorted({(c.kind, c.name) for c in registry} - before)
    for impl in pm.hook.mmldm_config_dirs.get_hookimpls():
        try:
            dirs = impl.function() or []
        except Exception as e:  # noqa: BLE001
            errors.append(f"plugin '{impl.plugin_name}' failed to list its config dirs: {type(e).__name__}: {e}")
            continue
        config_dirs.extend([dirs] if isinstance(dirs, str) else list(dirs))

    if report:
        for line in errors:
            print(f"mmldm: {line}", file=sys.stderr)
    return Plugins(pm, registry, info, errors, blocked, config_dirs)


_cached: Plugins | None = None


def plugins() -> Plugins:
    """Load plugins once per process and return them (see :func:`load_plugins`)."""
    global _cached
    if _cached is None:
        _cached = load_plugins()
    return _cached


def registry() -> Registry:
    """The registry of the plugins loaded in this process."""
    return plugins().registry


def reset() -> None:
    """Forget the loaded plugins (tests that install plugins call this)."""
    global _cached
    _cached = None
