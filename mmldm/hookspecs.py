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

A plugin that fails (its module does not import, it implements a hook not
specified here, one of its hooks raises, or it registers an unknown kind or a
``(kind, name)`` a built-in or earlier plugin holds) is skipped whole: none of
its components, config directories or other hooks stay (:mod:`mmldm.plugins`).
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
            Hydra's ConfigStore under group ``kind``, option ``name``. Built-in
            plugins register first; a name one of them (or an earlier plugin)
            holds makes ``add`` raise :class:`~mmldm.registry.RegistrationError`
            and the plugin is skipped whole.
    """


@hookspec
def mmldm_config_dirs() -> list[str]:  # type: ignore[empty-body]
    """Config directories this plugin adds to Hydra's search path.

    Return ``pkg://package.sub`` or absolute ``file://`` paths. Their groups
    merge with the core's: a plugin ships presets such as
    ``preset/<modality>.yaml`` (selected automatically by ``modality=<name>``)
    or extra options of any group.
    """


@hookspec(firstresult=True)
def mmldm_phase1_latent_shape(path: str, sample_shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """The latent shape ``(c, *spatial)`` of a phase-1 checkpoint in a format this plugin reads.

    Called for ``phase1.checkpoint=<path>`` when ``path`` is not an mmldm export, before
    any training (the run's pre-flight check). Return ``None`` when ``path`` is not in
    this plugin's format; raise a ``ValueError`` naming the file when it is, but does
    not fit ``sample_shape`` (the modality's ``(C, *spatial)``). Should not load weights.
    """


@hookspec(firstresult=True)
def mmldm_load_phase1(path: str, modality_cfg):  # type: ignore[no-untyped-def]
    """Phase 1 from a checkpoint in a format this plugin reads, or ``None`` when it does not.

    Return a :class:`~mmldm.pipeline.LatentDiffusion` without a denoiser (modality,
    autoencoder, latent statistics and their component configs), as
    ``LatentDiffusion.from_pretrained`` returns for an mmldm autoencoder export.
    ``modality_cfg`` is the run's ``modality`` config node. The built-in autoencoder
    plugin reads diffusers ``AutoencoderKL`` folders (Stable Diffusion's VAE) this way.
    """
