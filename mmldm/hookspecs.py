"""Hook specifications of the pluggy project ``mmldm``.

A plugin is a module (declared in the entry-point group ``mmldm``) that
implements some of these hooks with :data:`hookimpl`::

    from mmldm import hookimpl

    @hookimpl
    def mmldm_register_components(registry):
        registry.add("denoiser", "my_unet", "my_pkg.model:build", config=MyUNetConfig)

Keep the plugin module light: import torch and models lazily (pass factories
as ``"module:attr"`` strings) so that ``mmldm plugins`` and config validation
stay fast.
"""

from __future__ import annotations

import pluggy

PROJECT = "mmldm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mmldm_register_components(registry) -> None:  # type: ignore[no-untyped-def]
    """Register this plugin's components.

    Args:
        registry (`mmldm.registry.PluginRegistry`): call
            ``registry.add(kind, name, factory, config=..., description=...)``
            once per component. Each component's config dataclass is stored in
            Hydra's ConfigStore under group ``kind``, option ``name``.
    """


@hookspec
def mmldm_config_dirs() -> list[str]:  # type: ignore[empty-body]
    """Config directories this plugin adds to Hydra's search path.

    Return ``pkg://package.sub`` or absolute ``file://`` paths. Their groups
    merge with the core's: a plugin ships presets such as
    ``preset/<modality>.yaml`` (selected automatically by ``modality=<name>``)
    or extra options of any group.
    """
