"""mmldm's 3D U-Net against MONAI's ``DiffusionModelUNet(spatial_dims=3)`` at a matched architecture.

The peer module of :mod:`benchmarks.unet_peer` for 3D (its 2D twin is :mod:`benchmarks.unet_vs_diffusers`).
Both networks are built with the same layout:

* levels ``model_channels * channel_mult``, ``num_res_blocks`` ResBlocks down and one more up, a strided
  3x3x3 conv down and nearest x2 + 3x3x3 conv up between levels, skips concatenated on the way up;
* ResBlocks GroupNorm(32, eps 1e-6)-SiLU-conv twice, a 1x1x1 shortcut where the channels change;
* a SpatialTransformer (GroupNorm, 1x1x1 projection in, self-attention, cross-attention to ``context_dim``
  -wide tokens, GEGLU feed-forward, zero-initialized projection out) after every ResBlock of the
  ``attention_levels`` and between the two middle ResBlocks, ``num_heads`` heads per level;
* a sinusoidal time embedding ``[cos, sin]`` of ``model_channels`` features, a 2-layer SiLU MLP to
  ``4 * model_channels``; output GroupNorm-SiLU-conv.

Time conditioning inside the ResBlocks: MONAI has one form, additive before the second norm,
``norm2(h + Linear(E, C)(silu(emb)))``; mmldm builds the same with ``denoiser.time_conditioning=additive``
(its default, ``scale_shift``, modulates after the norm as Dhariwal & Nichol 2021 and holds ``(E + 1) * C``
more parameters per ResBlock). With it the two networks hold the same parameters, layer for layer, and
:func:`copy_weights` pairs every layer by class, shapes and call order: the outputs then agree to float
rounding (``tests/test_unet_vs_monai.py``).

:data:`DEFAULT` is the voxel preset's U-Net (``unet3d``: 32 channels, levels (1, 2, 4), one ResBlock per
level, attention at level 2 and in the middle, 4 heads) on the preset's phase-2 input: 8^3 x 4 latents at
batch 32, and 8 cross-attention tokens 128 wide (the width of the voxel preset's class embedding; a class
token and a short caption).

MONAI's settings: ``use_flash_attention=True`` (its attention then runs through torch's
``scaled_dot_product_attention``, as mmldm's does; it works on CPU, agrees with MONAI's einsum + softmax
path to 3e-6 and took 0.95 (float32) and 1.0 (bf16) of its training-step time on DEFAULT, where attention
over 2^3 cells is a small share), ``upcast_attention=False``, separate q/k/v projections without bias
(``use_combined_linear=False``, the same parameters as mmldm), ``resblock_updown=False``. MONAI, like
mmldm, zero-initializes the last conv of each ResBlock, the transformers' projection out and the output
conv, so both networks output zeros as built; :func:`build_peer` draws those layers with torch's default
initialization instead, so that the outputs compared after :func:`copy_weights` are not trivially zero
(speed does not depend on the values).

    python -m benchmarks.unet_vs_monai           # counts and output differences of DEFAULT
    python -m benchmarks.unet_vs_monai --quick   # of QUICK
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from benchmarks.unet_vs_diffusers import check_parameter_counts
from benchmarks.unet_vs_diffusers import copy_weights as copy_matching_weights

#: the peer's side name in results
PEER = "monai"


@dataclass(frozen=True)
class Arch:
    """One architecture for both libraries, and the input it is timed on.

    Args:
        model_channels (`int`): channels of the first level (MONAI's ``channels[0]``).
        channel_mult (`tuple[int, ...]`): level ``i`` has ``model_channels * channel_mult[i]`` channels;
            all widths must be multiples of 32 (MONAI's GroupNorm groups divide every width).
        num_res_blocks (`int`): ResBlocks per level on the way down (one more on the way up).
        attention_levels (`tuple[int, ...]`): levels with a SpatialTransformer after each ResBlock.
        num_heads (`int`): attention heads at every attention level (MONAI: ``width // num_heads`` channels each).
        context_dim (`int`), tokens (`int`): cross-attention context ``[batch, tokens, context_dim]``.
        latent_channels (`int`), resolution (`int`), batch (`int`): latents ``[batch, c, R, R, R]``.
    """

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    num_heads: int = 4
    context_dim: int = 128
    latent_channels: int = 4
    resolution: int = 8
    tokens: int = 8
    batch: int = 32

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: the pair ``benchmarks.unet_peer`` times: the voxel preset's U-Net (``unet3d``'s defaults)
DEFAULT = Arch()
#: a pair that builds and runs in well under a second
QUICK = Arch(channel_mult=(1, 2), attention_levels=(1,), context_dim=32, resolution=4, tokens=4, batch=2)


def build_mmldm(arch: Arch, channels_last: bool = False, compile: bool = False) -> Any:
    """mmldm's U-Net for ``arch``, built from its registry config (``unet3d``) like a training run does, with
    MONAI's additive time conditioning (``time_conditioning="additive"``)."""
    from mmldm_unet.config import UNet3dConfig
    from mmldm_unet.unet import build_unet

    cfg = UNet3dConfig(name="unet3d", model_channels=arch.model_channels, channel_mult=list(arch.channel_mult),
                       num_res_blocks=arch.num_res_blocks, attention_levels=list(arch.attention_levels),
                       num_heads=arch.num_heads, mid_attention=True, time_conditioning="additive",
                       channels_last=channels_last, compile=compile)
    return build_unet(cfg, dims=3, in_channels=arch.latent_channels, out_channels=arch.latent_channels,
                      context_dim=arch.context_dim)


def build_peer(arch: Arch) -> Any:
    """MONAI's ``DiffusionModelUNet`` with :func:`build_mmldm`'s layout, its zero-initialized layers drawn
    with torch's default initialization."""
    import torch
    from monai.networks.nets import DiffusionModelUNet

    model = DiffusionModelUNet(
        spatial_dims=3, in_channels=arch.latent_channels, out_channels=arch.latent_channels,
        num_res_blocks=arch.num_res_blocks, channels=arch.block_channels,
        attention_levels=tuple(i in arch.attention_levels for i in range(len(arch.channel_mult))),
        norm_num_groups=32, norm_eps=1e-6, resblock_updown=False,
        num_head_channels=tuple(c // arch.num_heads for c in arch.block_channels),
        with_conditioning=True, transformer_num_layers=1, cross_attention_dim=arch.context_dim,
        upcast_attention=False, include_fc=True, use_combined_linear=False, use_flash_attention=True,
    )
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)) and not any(p.any() for p in m.parameters()):
            m.reset_parameters()
    return model


def caller(model: Any, side: str) -> Callable[[Any, Any, Any], Any]:
    """``f(x, t, context) -> prediction`` for ``side`` ``"mmldm"`` or :data:`PEER`."""
    from mmldm.interfaces import Conditioning

    if side == "mmldm":
        return lambda x, t, c: model(x, t, Conditioning(crossattn=c))
    if side == PEER:
        return lambda x, t, c: model(x, timesteps=t, context=c)
    raise ValueError(f"side must be 'mmldm' or {PEER!r}, got {side!r}")


def make_inputs(arch: Arch, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """``x [B, c, R, R, R]``, ``t [B]`` (float), ``context [B, tokens, d]`` and a regression target like ``x``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, r = arch.batch, arch.resolution
    x = torch.randn(b, arch.latent_channels, r, r, r, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    return x, t, torch.randn(b, arch.tokens, arch.context_dim, generator=g), torch.randn(x.shape, generator=g)


def describe(arch: Arch) -> str:
    """One markdown sentence describing ``arch`` (and the pair's one difference) for a report."""
    a = arch
    return (f"3D U-Nets with levels {list(a.block_channels)}, {a.num_res_blocks} ResBlock(s) per level down "
            f"(one more up), attention at levels {list(a.attention_levels)} and in the middle "
            f"({a.num_heads} heads), cross-attention to {a.tokens} tokens of width {a.context_dim}, on latents "
            f"[{a.batch}, {a.latent_channels}, {a.resolution}, {a.resolution}, {a.resolution}]; time conditioning "
            "added before the ResBlocks' second norm on both sides (MONAI's form, mmldm's "
            "`time_conditioning=additive`).")


def copy_weights(src: Any, dst: Any, run_src: Callable[[], Any], run_dst: Callable[[], Any]) -> int:
    """Copy MONAI's (``src``) parameters into mmldm's U-Net (``dst``), every layer paired by class, shapes and
    call order (:func:`benchmarks.unet_vs_diffusers.copy_weights`); returns the number of tensors written."""
    return copy_matching_weights(src, dst, run_src, run_dst)


def compare(arch: Arch) -> dict[str, Any]:
    """Parameter counts (a ``RuntimeError`` beyond 1%) and the largest output difference after
    :func:`copy_weights`."""
    import torch

    torch.manual_seed(0)
    x, t, context, _ = make_inputs(arch)
    peer, ours = build_peer(arch), build_mmldm(arch)
    counts = check_parameter_counts(ours, peer, peer_name=PEER)
    run_peer, run_ours = (lambda: caller(peer, PEER)(x, t, context)), (lambda: caller(ours, "mmldm")(x, t, context))
    copy_weights(peer, ours, run_peer, run_ours)
    with torch.no_grad():
        a, b = run_ours(), run_peer()
    return {"arch": arch.as_dict(), "parameters": counts,
            "parameter_gap": (counts["mmldm"] - counts[PEER]) / counts[PEER],
            "output_abs_mean": b.abs().mean().item(), "max_abs_output_difference": (a - b).abs().max().item()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.unet_vs_monai", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny pair (QUICK) instead of DEFAULT")
    args = p.parse_args(argv)
    result = compare(QUICK if args.quick else DEFAULT)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
