"""mmldm built-in plugin: the N-d diffusion transformer denoiser (``dit``).

A DiT (Peebles & Xie 2023) over N-d patches of ``[B, c, *s]`` latents, ``dims`` 1, 2 or 3,
conditioned through adaLN-Zero (time + vector) and, when the conditioners emit tokens,
PixArt-style cross-attention. Select it with ``denoiser=dit``; ``dims`` comes from the factory call.
"""

from mmldm import hookimpl

from .config import DiTConfig

__version__ = "0.1.0"


@hookimpl
def mmldm_register_components(registry):  # type: ignore[no-untyped-def]
    registry.add("denoiser", "dit", "mmldm_dit.dit:build_dit", config=DiTConfig,
                 description="N-d diffusion transformer (DiT, adaLN-Zero; cross-attention to tokens), dims 1-3")
