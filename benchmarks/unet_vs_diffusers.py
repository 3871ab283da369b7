"""mmldm's 2D U-Net against diffusers' ``UNet2DConditionModel`` at the same architecture, in one run.

The two networks are configured to compute the same function:

* levels ``block_channels`` (mmldm: ``model_channels`` times ``channel_mult``), ``layers_per_block``
  ResBlocks down and one more up, a strided 3x3 conv down and nearest + 3x3 conv up between levels;
* ResBlocks with GroupNorm(32), a 1x1 shortcut where channels change and scale-shift time conditioning
  (Dhariwal & Nichol 2021; diffusers ``resnet_time_scale_shift="scale_shift"``), norm eps 1e-6;
* a SpatialTransformer (Rombach et al. 2022; diffusers ``Transformer2DModel`` with conv projections)
  after every ResBlock of the ``attention_levels`` and in the middle block, heads of ``head_dim``
  channels (diffusers takes the number of heads per level, through its ``attention_head_dim``
  argument), cross-attention to ``context_dim``-wide tokens, GEGLU feed-forward;
* a sinusoidal time embedding ``[cos, sin]`` and a 2-layer SiLU MLP to ``4 * block_channels[0]``.

There is no structural difference left: the parameter shapes are the same multiset (so the counts are
equal, and the benchmark stops if they differ by more than 1%), and with diffusers' weights copied
into mmldm (:func:`copy_weights`, pairing layers in the order the forward uses their weights) the outputs
agree to float rounding; the run reports the largest difference. Only module names and
registration order differ, and how some layers compute the same function: mmldm applies the
SpatialTransformer's 1x1 projections as matrix products on tokens, and an upsampler (nearest x2 +
3-conv) as one stride-2 transposed convolution where :func:`mmldm.nn.transposed_upsample_pays` says it
is cheaper (here the 256-channel 16x16 one; the 512-channel 8x8 one at batch 2 stays interpolate + conv).

Both run on the same inputs (latents ``[B, 4, R, R]``, timesteps ``[B]``, tokens ``[B, 77, d]``):
a no-grad forward, and a training step (forward, MSE loss, backward, AdamW), at every setting of
:data:`benchmarks.unet_peer.SETTINGS` on both sides (float32 eager, fused AdamW, bf16 autocast,
channels-last; ``--compile`` adds torch.compile), in interleaved rounds: each ratio is mmldm /
diffusers at the same setting (:mod:`benchmarks.unet_peer` has the harness).

    python -m benchmarks.unet_vs_diffusers               # the unet2d preset's widths, 32x32 latents
    python -m benchmarks.unet_vs_diffusers --quick       # a tiny pair, seconds
    python -m benchmarks.unet_vs_diffusers --compile     # adds the torch.compile setting (minutes)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks import unet_peer
from benchmarks import save_results
from benchmarks.unet_peer import COMPILED, SETTINGS, check_parameter_counts, copy_weights  # noqa: F401

#: the peer's side name in results
PEER = "diffusers"

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arch:
    """One architecture for both libraries, and the input it is timed on."""

    block_channels: tuple[int, ...] = (128, 256, 512)  # the unet2d preset: model_channels 128, channel_mult [1, 2, 4]
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (1, 2)
    head_dim: int = 32
    context_dim: int = 768  # width of Stable Diffusion v1's text tokens
    latent_channels: int = 4
    resolution: int = 32  # latents [B, latent_channels, resolution, resolution]
    tokens: int = 77
    batch: int = 2

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: the pair ``python -m benchmarks`` times
DEFAULT = Arch()
#: a pair that builds and runs in well under a second (smoke runs and tests)
QUICK = Arch(block_channels=(32, 64), layers_per_block=1, attention_levels=(1,), head_dim=16, context_dim=32,
             resolution=8, tokens=8, batch=2)


def build_mmldm(arch: Arch, channels_last: bool = False, compile: bool = False) -> Any:
    """mmldm's U-Net for ``arch``, built from its registry config (``unet2d``) like a training run does."""
    from mmldm_unet.config import UNet2dConfig
    from mmldm_unet.unet import build_unet

    base = arch.block_channels[0]
    if any(c % base for c in arch.block_channels):
        raise ValueError(f"block_channels {arch.block_channels} must be multiples of the first level's {base} "
                         "(mmldm's widths are model_channels * channel_mult)")
    cfg = UNet2dConfig(name="unet2d", model_channels=base, channel_mult=[c // base for c in arch.block_channels],
                       num_res_blocks=arch.layers_per_block, attention_levels=list(arch.attention_levels),
                       head_dim=arch.head_dim, mid_attention=True, channels_last=channels_last, compile=compile)
    return build_unet(cfg, dims=2, in_channels=arch.latent_channels, out_channels=arch.latent_channels,
                      context_dim=arch.context_dim)


def build_peer(arch: Arch) -> Any:
    """diffusers' ``UNet2DConditionModel`` configured to compute the same function as :func:`build_mmldm`."""
    from diffusers import UNet2DConditionModel

    levels = range(len(arch.block_channels))
    attn = set(arch.attention_levels)
    return UNet2DConditionModel(
        in_channels=arch.latent_channels, out_channels=arch.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=arch.block_channels,
        layers_per_block=arch.layers_per_block, norm_num_groups=32, norm_eps=1e-6,
        cross_attention_dim=arch.context_dim, resnet_time_scale_shift="scale_shift",
        # diffusers reads `attention_head_dim` as the number of heads per level (its documented naming quirk)
        attention_head_dim=tuple(c // arch.head_dim for c in arch.block_channels),
        flip_sin_to_cos=True, freq_shift=0,
    )


build_diffusers = build_peer


def make_inputs(arch: Arch, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """``x [B, c, R, R]``, ``t [B]``, ``context [B, tokens, d]`` and a regression target like ``x``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, r = arch.batch, arch.resolution
    x = torch.randn(b, arch.latent_channels, r, r, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    return x, t, torch.randn(b, arch.tokens, arch.context_dim, generator=g), torch.randn(x.shape, generator=g)


def caller(model: Any, side: str) -> Callable[[Any, Any, Any], Any]:
    """``f(x, t, context) -> prediction`` for either library."""
    from mmldm.interfaces import Conditioning

    if side == "mmldm":
        return lambda x, t, c: model(x, t, Conditioning(crossattn=c))
    return lambda x, t, c: model(x, t, encoder_hidden_states=c, return_dict=False)[0]


def describe(arch: Arch) -> str:
    """One sentence on the matched pair for the report."""
    return (f"diffusers `UNet2DConditionModel` vs mmldm `unet2d`: levels {list(arch.block_channels)}, "
            f"{arch.layers_per_block} ResBlocks per level, attention at levels {list(arch.attention_levels)} and "
            f"in the middle, heads of {arch.head_dim}, context {arch.context_dim}; latents [{arch.batch}, "
            f"{arch.latent_channels}, {arch.resolution}, {arch.resolution}], {arch.tokens} tokens.")


def run(arch: Arch, rounds: int = 7, compile: bool = False, memory: bool = True) -> dict[str, Any]:
    """:func:`benchmarks.unet_peer.run` against diffusers; ``compile`` adds the compiled setting."""
    return unet_peer.run(sys.modules[__name__], arch, rounds, [*SETTINGS, COMPILED] if compile else SETTINGS,
                         memory)


def report(r: dict[str, Any]) -> str:
    return unet_peer.report(r, "mmldm U-Net vs diffusers UNet2DConditionModel, at equal settings")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.unet_vs_diffusers", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--batch", type=int, default=Arch.batch)
    p.add_argument("--resolution", type=int, default=Arch.resolution)
    p.add_argument("--compile", action="store_true", help="add the torch.compile setting (compiles for minutes)")
    p.add_argument("--quick", action="store_true", help="a tiny pair and 2 rounds (a smoke run)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "unet_vs_diffusers")
    args = p.parse_args(argv)
    arch = QUICK if args.quick else replace(Arch(), batch=args.batch, resolution=args.resolution)
    result = run(arch, 2 if args.quick else args.rounds, args.compile)
    save_results(args.out, result, report(result))
    return result


if __name__ == "__main__":
    main()
