"""The component registry: ``(kind, name) -> factory``, filled by plugins.

A plugin's :func:`~mmldm.hookspecs.mmldm_register_components` receives a
:class:`PluginRegistry` (the same registry, tagged with the plugin's name, so
that a clash names both plugins) and calls :meth:`PluginRegistry.add`.
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
    "dataset",
    "metric",
)


class RegistryError(LookupError):
    """A component is missing, registered twice, or registered wrongly."""


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
    """

    kind: str
    name: str
    factory: Callable[..., Any] | str
    config: type | None
    plugin: str
    description: str = ""

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

    def add(self, component: Component) -> None:
        if component.kind not in KINDS:
            raise RegistryError(
                f"plugin '{component.plugin}' registers unknown kind '{component.kind}' "
                f"(name '{component.name}'); valid kinds: {', '.join(KINDS)}"
            )
        if component.config is not None and not (
            dataclasses.is_dataclass(component.config)
            and issubclass(component.config, ComponentConfig)
        ):
            raise RegistryError(
                f"plugin '{component.plugin}': the config of {component.kind} '{component.name}' "
                f"must be a dataclass derived from mmldm.config.ComponentConfig, got {component.config!r}"
            )
        key = (component.kind, component.name)
        if key in self._components:
            other = self._components[key]
            raise RegistryError(
                f"{component.kind} '{component.name}' is registered by two plugins: "
                f"'{other.plugin}' and '{component.plugin}'; uninstall one or block it with "
                f"MMLDM_DISABLED_PLUGINS={component.plugin}"
            )
        self._components[key] = component

    def for_plugin(self, plugin: str) -> "PluginRegistry":
        return PluginRegistry(self, plugin)

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
            raise RegistryError(
                f"no {kind} named '{name}'; valid choices: {choices}"
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
    """The registry as a plugin sees it: every ``add`` is tagged with the plugin's name."""

    registry: Registry
    plugin: str

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
        self.registry.add(Component(kind, name, factory, config, self.plugin, description))
