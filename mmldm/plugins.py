"""Plugin loading: the ``mmldm`` entry-point group, blocking, errors per plugin.

Built-in plugins (``plugins/`` in the source tree) are declared in the
project's own ``pyproject.toml`` and load exactly like a third party's,
only first: a third-party plugin that reuses a built-in component's name is
the one left out.

A plugin that fails in any way (it does not import, implements a hook mmldm
does not have, raises in a hook, registers an unknown kind or a name another
plugin holds) is skipped whole, with all its registrations, and reported in
one line naming it and how to block it; the other plugins load.

Nothing here runs at import time: call :func:`load_plugins`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .registry import Registry, SkippedPlugin

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mmldm"
#: Comma-separated plugin names that are not loaded.
DISABLE_ENV = "MMLDM_DISABLED_PLUGINS"
#: The distribution whose entry points are the built-in plugins.
BUILTIN_DIST = "mmldm"


@dataclass
class PluginInfo:
    """One loaded plugin: name, distribution version and what it registered."""

    name: str
    version: str
    module: str
    components: list[tuple[str, str]] = field(default_factory=list)
    builtin: bool = False


@dataclass
class Plugins:
    """The result of :func:`load_plugins`."""

    manager: pluggy.PluginManager
    registry: Registry
    info: dict[str, PluginInfo]
    #: One line per plugin that was skipped (:attr:`SkippedPlugin.line`), in load order.
    errors: list[str]
    blocked: list[str]
    config_dirs: list[str]

    @property
    def skipped(self) -> dict[str, SkippedPlugin]:
        """The plugins left out because they failed, by name."""
        return self.registry.skipped


@dataclass
class _Candidate:
    """A plugin found (an entry point or an object passed in), before it is registered."""

    name: str
    version: str
    module: str
    origin: str
    builtin: bool
    plugin: Any = None


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


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    """The entry point's distribution name and version (``unknown`` when it has none)."""
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("unknown", "unknown")


def _one_line(e: BaseException) -> str:
    """``ImportError: needs libfoo`` (a multi-line message joined into one line)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Loader:
    """One :func:`load_plugins` call: finds, registers and calls the plugins, skipping the failing ones."""

    def __init__(self, blocked: list[str]) -> None:
        self.pm = get_plugin_manager()
        self.blocked = blocked
        for name in blocked:
            self.pm.set_blocked(name)
        self.registry = Registry()
        self.errors: list[str] = []

    def skip(self, c: _Candidate, reason: str, fix: str = "update or uninstall it",
             components: list[tuple[str, str]] | None = None, complete: bool = False) -> None:
        """Leave ``c`` out: its components, its hooks; record and report it in one line."""
        block = ",".join([*self.blocked, c.name])
        skipped = SkippedPlugin(c.name, c.origin, reason, f"{fix}, or set {DISABLE_ENV}={block}",
                                tuple(components or ()), complete)
        self.registry.skipped[c.name] = skipped
        self.errors.append(skipped.line)
        if self.pm.get_plugin(c.name) is not None:
            self.pm.unregister(name=c.name)

    def candidates(self, extra: dict[str, object]) -> list[_Candidate]:
        """Entry points (imported) and ``extra`` objects, built-ins first; failed imports are skipped."""
        found: list[_Candidate] = []
        for ep in _entry_points():
            if self.pm.is_blocked(ep.name):
                continue
            dist, version = _dist(ep)
            c = _Candidate(ep.name, version, ep.value, f"entry point {ep.name} = {ep.value}", dist == BUILTIN_DIST)
            try:
                c.plugin = ep.load()
            except Exception as e:  # noqa: BLE001 - any import failure is reported by name
                self.skip(c, f"it failed to import: {_one_line(e)}")
                continue
            found.append(c)
        for name, obj in extra.items():
            if not self.pm.is_blocked(name):
                module = getattr(obj, "__name__", name)
                found.append(_Candidate(name, getattr(obj, "__version__", "unknown"), module,
                                        f"plugin object {module}", False, obj))
        return sorted(found, key=lambda c: (not c.builtin, c.name))

    def register(self, found: list[_Candidate]) -> list[_Candidate]:
        """Register the plugins with pluggy; one with a hook mmldm does not know is skipped."""
        kept = []
        for c in found:
            first = self.pm.get_name(c.plugin)
            if first is not None:  # pluggy's own error would print every plugin registered
                self.skip(c, f"it is the plugin '{first}' again (one module, two names)")
                continue
            try:
                self.pm.register(c.plugin, name=c.name)
            except Exception as e:  # noqa: BLE001 - a hook's arguments unlike its specification
                self.skip(c, f"it could not be registered: {_one_line(e)}")
                continue
            unknown = self._unknown_hooks(c.name)
            if unknown:
                hooks = ", ".join(sorted(n for n in vars(hookspecs) if n.startswith("mmldm_")))
                self.skip(c, f"it implements unknown hook(s) {', '.join(unknown)} (misspelled?); mmldm's hooks: {hooks}")
                continue
            kept.append(c)
        self.pm.check_pending()  # every plugin left implements known hooks only
        return kept

    def _unknown_hooks(self, plugin: str) -> list[str]:
        out = []
        for name, caller in vars(self.pm.hook).items():
            if name.startswith("_") or caller.has_spec():
                continue
            if any(i.plugin_name == plugin and not i.optionalhook for i in caller.get_hookimpls()):
                out.append(name)
        return out

    def call(self, c: _Candidate) -> tuple[list[tuple[str, str]], list[str]] | None:
        """Run ``c``'s registration and config-dir hooks; ``None`` (and ``c`` skipped) when one fails."""
        reg = self.registry.for_plugin(c.name, c.builtin)
        hook, complete = "mmldm_register_components", False
        try:
            for impl in self._impls(hook, c.name):
                impl.function(registry=reg)
            hook, complete = "mmldm_config_dirs", True
            dirs = [d for impl in self._impls(hook, c.name) for d in _as_list(impl.function())]
        except Exception as e:  # noqa: BLE001 - reported by name, the others go on
            if reg.problem is not None:
                self.skip(c, reg.problem.reason, reg.problem.fix, self.registry.remove_plugin(c.name), complete)
            else:
                self.skip(c, f"its hook {hook} raised {_one_line(e)}", components=self.registry.remove_plugin(c.name),
                          complete=complete)
            return None
        if reg.problem is not None:  # the plugin caught the error itself: still skipped whole
            self.skip(c, reg.problem.reason, reg.problem.fix, self.registry.remove_plugin(c.name), True)
            return None
        return sorted((comp.kind, comp.name) for comp in self.registry if comp.plugin == c.name), dirs

    def _impls(self, hook: str, plugin: str) -> list[Any]:
        return [i for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin_name == plugin]


def _as_list(dirs: Any) -> list[str]:
    if dirs is None:
        return []
    return [dirs] if isinstance(dirs, str) else list(dirs)


def load_plugins(extra: dict[str, object] | None = None, report: bool = True) -> Plugins:
    """Load every plugin of the entry-point group ``mmldm`` and fill a registry.

    Args:
        extra (`dict[str, module]`, *optional*): plugin objects to register in
            addition to the entry points (e.g. from tests), by name; they load
            after the built-in plugins, as third-party ones.
        report (`bool`): print one line per skipped plugin to stderr (``mmldm: plugin ...``).

    Built-in plugins load first, then the others by name. A plugin that fails
    to import, implements an unknown hook, raises in a hook, or registers a
    component wrongly (an unknown kind, a ``(kind, name)`` an earlier plugin
    holds) is skipped whole: none of its components or config directories stay.
    It is named in :attr:`Plugins.errors` (one line with the reason and the
    ``MMLDM_DISABLED_PLUGINS`` setting that blocks it) and in the registry's
    :attr:`~mmldm.registry.Registry.skipped`, so that selecting one of its
    components later says why it is missing.
    """
    blocked = [b.strip() for b in os.environ.get(DISABLE_ENV, "").split(",") if b.strip()]
    loader = _Loader(blocked)
    info: dict[str, PluginInfo] = {}
    config_dirs: list[str] = []
    for c in loader.register(loader.candidates(extra or {})):
        result = loader.call(c)
        if result is None:
            continue
        components, dirs = result
        info[c.name] = PluginInfo(c.name, c.version, c.module, components, c.builtin)
        config_dirs.extend(dirs)
    if report:
        for line in loader.errors:
            print(f"mmldm: {line}", file=sys.stderr)
    return Plugins(loader.pm, loader.registry, info, loader.errors, blocked, config_dirs)


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
