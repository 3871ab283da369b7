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

One part differs in function: **time conditioning inside the ResBlocks.** mmldm modulates the second norm,
``norm2(h) * (1 + scale) + shift`` with ``[scale, shift] = Linear(E, 2C)(silu(emb))`` (Dhariwal & Nichol
2021); MONAI has no such option and adds before the norm, ``norm2(h + Linear(E, C)(silu(emb)))``. So mmldm
holds ``(E + 1) * C`` more parameters per ResBlock, and MONAI's GroupNorm removes each group's mean of the
added term. :func:`copy_weights` copies every other layer (by call order) and MONAI's projection into
mmldm's *shift* half, with the scale half zero: the outputs then differ only by where the embedding
enters (on DEFAULT by up to 0.43, outputs averaging 0.27 in size); with both projections zeroed they
agree to float rounding (2e-6; ``tests/test_unet_vs_monai.py`` pins both).

These projections are 1.43% of the voxel preset's U-Net (:data:`PRESET`: 8.51M vs 8.39M parameters),
more than the 1% :func:`~benchmarks.unet_vs_diffusers.check_parameter_counts` allows. Their share hardly
changes with ``model_channels`` (both counts grow as its square); a wider coarsest level dilutes it. So
:data:`DEFAULT` is the preset's U-Net (``unet3d``: 32 channels, one ResBlock per level, attention at
level 2 and in the middle, 4 heads) with ``channel_mult`` (1, 2, 6) instead of (1, 2, 4), 16.8M vs 16.6M
parameters (0.97%), on the preset's phase-2 input: 8^3 x 4 latents at batch 32, and 8 cross-attention
tokens 128 wide (the width of the voxel preset's class embedding; a class token and a short caption).

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
from dataclasses import asdict, dataclass, replace
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
    channel_mult: tuple[int, ...] = (1, 2, 6)
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


#: the pair ``benchmarks.unet_peer`` times: the voxel preset's U-Net with a 192-wide coarsest level
DEFAULT = Arch()
#: the voxel preset's U-Net exactly; its pair fails the 1% parameter check (1.43%, the time projections)
PRESET = replace(DEFAULT, channel_mult=(1, 2, 4))
#: a pair that builds and runs in well under a second; a 6x coarsest level keeps the counts within 1%
QUICK = Arch(channel_mult=(1, 6), attention_levels=(1,), context_dim=32, resolution=4, tokens=4, batch=2)


def build_mmldm(arch: Arch, channels_last: bool = False, compile: bool = False) -> Any:
    """mmldm's U-Net for ``arch``, built from its registry config (``unet3d``) like a training run does."""
    from mmldm_unet.config import UNet3dConfig
    from mmldm_unet.unet import build_unet

    cfg = UNet3dConfig(name="unet3d", model_channels=arch.model_channels, channel_mult=list(arch.channel_mult),
                       num_res_blocks=arch.num_res_blocks, attention_levels=list(arch.attention_levels),
                       num_heads=arch.num_heads, mid_attention=True, channels_last=channels_last, compile=compile)
    return build_unet(cfg, dims=3, in_channels=arch.latent_channels, out_channels=arch.latent_channels,
                      context_dim=arch.context_dim)


def build_peer(arch: Arch) -> Any:
    """MONAI's ``DiffusionModelUNet`` with :func:`build_mmldm`'s layout (the time conditioning aside, see the
    module docstring), its zero-initialized layers drawn with torch's default initialization."""
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
            f"[{a.batch}, {a.latent_channels}, {a.resolution}, {a.resolution}, {a.resolution}]; the ResBlocks' "
            "time conditioning differs: scale-shift after the norm in mmldm, additive before it in MONAI.")


def time_projections(model: Any, run: Callable[[], Any]) -> list[Any]:
    """The ResBlocks' time-embedding projections of ``model`` (mmldm's ``ResBlock.emb``, MONAI's
    ``time_emb_proj``), in the order ``run()`` (a no-grad forward) calls them."""
    import torch
    from mmldm.nn import ResBlock

    layers = [m.emb if isinstance(m, ResBlock) else m.time_emb_proj for m in model.modules()
              if (isinstance(m, ResBlock) and m.emb is not None) or hasattr(m, "time_emb_proj")]
    order: list[Any] = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: order.append(mod)) for layer in layers]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return order


def _without(model: Any, skip: Sequence[Any]) -> Any:
    """A module holding ``model``'s parameterized layers except ``skip`` (a view: the same layer objects)."""
    import torch

    skipped = {id(m) for m in skip}
    view = torch.nn.Module()
    view.layers = torch.nn.ModuleList(m for m in model.modules() if id(m) not in skipped
                                      and next(m.parameters(recurse=False), None) is not None)
    return view


def copy_weights(src: Any, dst: Any, run_src: Callable[[], Any], run_dst: Callable[[], Any]) -> int:
    """Copy MONAI's (``src``) parameters into mmldm's U-Net (``dst``); returns the number of tensors written.

    Every layer but the ResBlocks' time projections pairs up by class, shapes and call order, and is
    copied by :func:`benchmarks.unet_vs_diffusers.copy_weights`. Each MONAI projection ``Linear(E, C)``
    goes into the *shift* rows of mmldm's ``Linear(E, 2C)``, its *scale* rows are zeroed (see the module
    docstring for the difference that remains).
    """
    import torch

    t_src, t_dst = time_projections(src, run_src), time_projections(dst, run_dst)
    if len(t_src) != len(t_dst):
        raise RuntimeError(f"{len(t_src)} time projections in {type(src).__name__}, {len(t_dst)} in "
                           f"{type(dst).__name__}: the networks do not have the same ResBlocks")
    copied = copy_matching_weights(_without(src, t_src), _without(dst, t_dst), run_src, run_dst)
    with torch.no_grad():
        for a, b in zip(t_src, t_dst):
            c = a.out_features
            if b.out_features != 2 * c:
                raise RuntimeError(f"copy_weights goes from MONAI (Linear(E, C)) into mmldm (Linear(E, 2C)), got "
                                   f"{a.out_features} and {b.out_features} outputs")
            b.weight[:c].zero_()  # scale rows: norm2(h) * (1 + 0)
            b.bias[:c].zero_()
            b.weight[c:].copy_(a.weight)  # shift rows: MONAI's additive term, added after the norm
            b.bias[c:].copy_(a.bias)
            copied += 2
    return copied


def compare(arch: Arch) -> dict[str, Any]:
    """Parameter counts (a ``RuntimeError`` beyond 1%) and the largest output differences after
    :func:`copy_weights`: as copied, and with the time projections zeroed on both sides."""
    import torch

    torch.manual_seed(0)
    x, t, context, _ = make_inputs(arch)
    peer, ours = build_peer(arch), build_mmldm(arch)
    counts = check_parameter_counts(ours, peer, peer_name=PEER)
    run_peer, run_ours = (lambda: caller(peer, PEER)(x, t, context)), (lambda: caller(ours, "mmldm")(x, t, context))
    copy_weights(peer, ours, run_peer, run_ours)
    with torch.no_grad():
        a, b = run_ours(), run_peer()
        for layer in time_projections(peer, run_peer) + time_projections(ours, run_ours):
            layer.weight.zero_()
            layer.bias.zero_()
        a0, b0 = run_ours(), run_peer()
    return {"arch": arch.as_dict(), "parameters": counts,
            "parameter_gap": (counts["mmldm"] - counts[PEER]) / counts[PEER],
            "output_abs_mean": b.abs().mean().item(), "max_abs_output_difference": (a - b).abs().max().item(),
            "max_abs_output_difference_time_projections_zeroed": (a0 - b0).abs().max().item()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.unet_vs_monai", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny pair (QUICK) instead of DEFAULT")
    args = p.parse_args(argv)
    result = compare(QUICK if args.quick else DEFAULT)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
