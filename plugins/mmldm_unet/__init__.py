"""mmldm built-in plugin: the N-d U-Net denoiser (``unet``, ``unet1d``, ``unet2d``, ``unet3d``).

All four names build the same class; they differ only in default sizes.
``dims`` always comes from the factory call.
"""

from mmldm import hookimpl

from .config import UNet1dConfig, UNet2dConfig, UNet3dConfig, UNetConfig

_VARIANTS = (
    ("unet", UNetConfig, "N-d U-Net with cross-attention (LDM), medium defaults"),
    ("unet1d", UNet1dConfig, "U-Net sized for 1D latents (audio), 4 levels"),
    ("unet2d", UNet2dConfig, "U-Net sized for 2D latents (images)"),
    ("unet3d", UNet3dConfig, "U-Net sized for 3D latents (voxels), attention at the coarsest level"),
)


@hookimpl
def mmldm_register_components(registry):  # type: ignore[no-untyped-def]
    for name, config, description in _VARIANTS:
        registry.add("denoiser", name, "mmldm_unet.unet:build_unet", config=config, description=description)
