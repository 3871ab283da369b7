"""mmldm built-in plugin: the image modality (2D samples ``[B, 1|3, H, W]`` in [-1, 1]).

Kept torch-free at import: components are registered as lazy ``"module:attr"`` factories.
"""

from mmldm import hookimpl

from .config import ImageConfig


@hookimpl
def mmldm_register_components(registry):  # type: ignore[no-untyped-def]
    registry.add(
        "modality",
        "image",
        "mmldm_image.modality:ImageModality",
        config=ImageConfig,
        description="2D images [B,1|3,H,W] in [-1,1]: procedural shapes (default), digits, MNIST, a folder",
    )


@hookimpl
def mmldm_config_dirs():  # type: ignore[no-untyped-def]
    """Presets applied by `modality=image` (`preset/image.yaml`)."""
    return ["pkg://mmldm_image.conf"]
