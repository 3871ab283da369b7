"""The component registry: ``(kind, name) -> factory``, filled by plugins.

A plugin's :func:`~mmldm.hookspecs.mmldm_register_components` receives a
:class:`PluginRegistry` (the same registry, tagged with the plugin's name, so
that a clash names both plugins) and calls :meth:`PluginRegistry.add`.

A plugin that fails (:mod:`mmldm.plugins` skips it whole) is remembered as a
:class:`SkippedPlugin`, so that selecting one of its components later says why
it is missing instead of only listing the others.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from .config import ComponentConfig

#: Component kinds a plugin may register.
KINDS = (
    "modality",
    "autoencoder",
    "regularizer",
    "denoiser",
    "conditioner",
    "sampler",
    "process",
    "vocoder",
)


class RegistryError(LookupError):
    """A component is missing, registered twice, or registered wrongly."""


class RegistrationError(RegistryError):
    """A plugin registers a component wrongly: an unknown kind, a config that is no
    :class:`~mmldm.config.ComponentConfig` dataclass, or a ``(kind, name)`` another plugin holds.

    Args:
        plugin (`str`): the plugin that registers it.
        reason (`str`): what is wrong, without the plugin's name.
        fix (`str`): what the plugin's user can do about it.
    """

    def __init__(self, plugin: str, reason: str, fix: str = "update or uninstall it") -> None:
        super().__init__(f"plugin '{plugin}': {reason}")
        self.plugin, self.reason, self.fix = plugin, reason, fix


@dataclass(frozen=True)
class SkippedPlugin:
    """A plugin left out because it failed: to import, to register, or in one of its hooks.

    Args:
        name (`str`): its entry-point name.
        origin (`str`): where it comes from (``entry point acme = acme_pkg.plugin``).
        reason (`str`): why it was skipped.
        fix (`str`): what to do, ending with how to block it.
        components (`tuple`): the ``(kind, name)`` pairs it registered before it failed (none when it
            failed to import).
        complete (`bool`): whether ``components`` is all it registers (its registration hook ran to
            the end); else it may register more.
    """

    name: str
    origin: str
    reason: str
    fix: str
    components: tuple[tuple[str, str], ...] = ()
    complete: bool = False

    @property
    def line(self) -> str:
        """The one line that reports it."""
        return f"plugin '{self.name}' ({self.origin}) skipped: {self.reason}; {self.fix}"


@dataclass(frozen=True)
class Component:
    """One registered component.

    Args:
        kind (`str`): one of :data:`KINDS`.
        name (`str`): unique within ``kind``.
        factory (`Callable | str`): builds the component (see
            :mod:`mmldm.interfaces` for each kind's call), or a lazy
            ``"module:attr"`` reference, imported on first use so that listing
            plugins and validating configs never imports torch.
        config (`type | None`): the config dataclass, derived from
            :class:`~mmldm.config.ComponentConfig`.
        plugin (`str`): the plugin that registered it.
        description (`str`): one line shown by ``mmldm plugins``.
        builtin (`bool`): whether the plugin is one of mmldm's own (declared by the
            ``mmldm`` distribution), which load before any other.
    """

    kind: str
    name: str
    factory: Callable[..., Any] | str
    config: type | None
    plugin: str
    description: str = ""
    builtin: bool = False

    @property
    def owner(self) -> str:
        """``built-in plugin 'unet'`` or ``plugin 'acme'``, as messages name it."""
        return f"{'built-in ' if self.builtin else ''}plugin '{self.plugin}'"

    def resolve(self) -> Callable[..., Any]:
        """The factory itself, importing a lazy reference."""
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise RegistryError(
                f"{self.kind} '{self.name}' from plugin '{self.plugin}': cannot import "
                f"its factory '{self.factory}': {e}"
            ) from e
        return obj

    def default_config(self) -> Any:
        """The config node stored in Hydra's ConfigStore for this component."""
        if self.config is None:
            return {"name": self.name}
        return self.config(name=self.name)


@dataclass
class Registry:
    """All components of all loaded plugins."""

    _components: dict[tuple[str, str], Component] = field(default_factory=dict)
    #: Plugins left out, by name (filled by :func:`mmldm.plugins.load_plugins`).
    skipped: dict[str, SkippedPlugin] = field(default_factory=dict)

    def add(self, component: Component) -> None:
        """Add ``component``; a :class:`RegistrationError` names the plugin and what is wrong."""
        c = component
        if c.kind not in KINDS:
            raise RegistrationError(
                c.plugin, f"component '{c.name}' has unknown kind '{c.kind}'; valid kinds: {', '.join(KINDS)}"
            )
        if c.config is not None and not (
            isinstance(c.config, type) and dataclasses.is_dataclass(c.config) and issubclass(c.config, ComponentConfig)
        ):
            raise RegistrationError(
                c.plugin, f"the config of {c.kind} '{c.name}' must be a dataclass derived from "
                f"mmldm.config.ComponentConfig, got {c.config!r}"
            )
        other = self._components.get((c.kind, c.name))
        if other is not None:
            raise RegistrationError(
                c.plugin, f"component '{c.name}' of kind '{c.kind}' is already registered by {other.owner}",
                "remove or rename it",
            )
        self._components[(c.kind, c.name)] = c

    def remove_plugin(self, plugin: str) -> list[tuple[str, str]]:
        """Drop every component of ``plugin``; returns their ``(kind, name)`` pairs."""
        keys = sorted(k for k, c in self._components.items() if c.plugin == plugin)
        for key in keys:
            del self._components[key]
        return keys

    def why_missing(self, kind: str, name: str) -> str:
        """Why no ``kind`` is named ``name`` when a skipped plugin may be the cause, else ``""``.

        Names the skipped plugin that registered it before failing, or else every skipped plugin
        whose registration did not run to the end (it may be the one that provides it).
        """
        for s in self.skipped.values():
            if (kind, name) in s.components:
                return f"plugin '{s.name}' ({s.origin}) registers it but was skipped: {s.reason}"
        unknown = [s for s in self.skipped.values() if not s.complete]
        if not unknown:
            return ""
        listed = "; ".join(f"'{s.name}' ({s.origin}): {s.reason}" for s in unknown)
        return f"skipped plugin(s) that may provide it: {listed}"

    def for_plugin(self, plugin: str, builtin: bool = False) -> "PluginRegistry":
        return PluginRegistry(self, plugin, builtin)

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._components if k == kind)

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._components.values(), key=lambda c: (c.kind, c.name)))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._components

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._components[(kind, name)]
        except KeyError:
            choices = ", ".join(self.names(kind)) or "(none installed)"
            why = self.why_missing(kind, name)
            raise RegistryError(
                f"no {kind} named '{name}'; valid choices: {choices}" + (f"; {why}" if why else "")
            ) from None

    def config_object(self, kind: str, cfg: Any) -> Any:
        """Turn a config node (DictConfig, dict or dataclass) into the component's dataclass."""
        name = cfg["name"] if isinstance(cfg, (dict, DictConfig)) else getattr(cfg, "name")
        comp = self.get(kind, name)
        if comp.config is None or isinstance(cfg, comp.config):
            return cfg
        merged = OmegaConf.merge(OmegaConf.structured(comp.config), cfg)
        return OmegaConf.to_object(merged)

    def build(self, kind: str, cfg: Any, **kwargs: Any) -> Any:
        """Build the component that ``cfg.name`` names, passing ``kwargs`` to its factory."""
        obj = self.config_object(kind, cfg)
        name = obj["name"] if isinstance(obj, (dict, DictConfig)) else obj.name
        return self.get(kind, name).resolve()(obj, **kwargs)


@dataclass
class PluginRegistry:
    """The registry as a plugin sees it: every ``add`` is tagged with the plugin's name.

    The first :class:`RegistrationError` is kept in :attr:`problem` even when the plugin catches
    it, so that the loader skips the plugin whole rather than keep half of it.
    """

    registry: Registry
    plugin: str
    builtin: bool = False
    problem: RegistrationError | None = field(default=None, repr=False)

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any] | str,
        config: type | None = None,
        description: str = "",
    ) -> None:
        """Register a component.

        Args:
            kind (`str`): one of :data:`KINDS`.
            name (`str`): the option name users select (``denoiser=<name>``).
            factory (`Callable | str`): the builder or a lazy ``"module:attr"``.
            config (`type`, *optional*): config dataclass derived from
                :class:`~mmldm.config.ComponentConfig`.
            description (`str`): one line for ``mmldm plugins``.
        """
        try:
            self.registry.add(Component(kind, name, factory, config, self.plugin, description, self.builtin))
        except RegistrationError as e:
            self.problem = self.problem or e
            raise
