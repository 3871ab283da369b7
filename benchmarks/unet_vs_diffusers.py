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

Both run eagerly on the same inputs (latents ``[B, 4, R, R]``, timesteps ``[B]``, tokens
``[B, 77, d]``): a no-grad forward, and a training step (forward, MSE loss, backward, AdamW). Rounds
alternate the order of the variants; the figures are medians over rounds, and ratios are medians of
per-round ratios against diffusers measured in the same round. Variants (:data:`VARIANTS`): the
matched pair with torch's default AdamW (for-each), then mmldm's fast-path switches: channels-last,
the fused AdamW kernel (also given to diffusers, to show where a gain comes from), bf16 autocast
(what ``trainer.precision=bf16-mixed`` does; numerics change) and, with ``--compile``, the U-Net's
``compile`` option (inductor; its first step, mostly compilation, is reported separately).
Peak memory: bytes held by torch's CPU allocator during one call, above those held before
(:func:`benchmarks.utilization.peak_tensor_memory`), so parameters and optimizer state are excluded.

    python -m benchmarks.unet_vs_diffusers               # the unet2d preset's widths, 32x32 latents
    python -m benchmarks.unet_vs_diffusers --quick       # a tiny pair, seconds
    python -m benchmarks.unet_vs_diffusers --compile     # adds the torch.compile variant (minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.latent_vs_pixel import timed
from benchmarks.utilization import peak_tensor_memory

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


#: a pair that builds and runs in well under a second (smoke runs and tests)
QUICK = Arch(block_channels=(32, 64), layers_per_block=1, attention_levels=(1,), head_dim=16, context_dim=32,
             resolution=8, tokens=8, batch=2)


@dataclass(frozen=True)
class Variant:
    name: str
    side: str  # "mmldm" or "diffusers"
    channels_last: bool = False
    fused_adamw: bool = False
    bf16: bool = False
    compile: bool = False

    @property
    def model_key(self) -> tuple[str, bool, bool]:
        return self.side, self.channels_last, self.compile

    @property
    def forward_key(self) -> tuple[str, bool, bool, bool]:
        return self.side, self.channels_last, self.compile, self.bf16


VARIANTS = (
    Variant("diffusers", "diffusers"),
    Variant("mmldm", "mmldm"),
    Variant("mmldm_channels_last", "mmldm", channels_last=True),
    Variant("diffusers_fused_adamw", "diffusers", fused_adamw=True),
    Variant("mmldm_fused_adamw", "mmldm", fused_adamw=True),
    Variant("mmldm_channels_last_fused_adamw", "mmldm", channels_last=True, fused_adamw=True),
    # what `trainer.precision=bf16-mixed` (the `auto` default on CPUs and GPUs with native bf16) trains with:
    # Lightning's autocast (weight cache off) and torch's default AdamW (Lightning refuses fused optimizers
    # under mixed precision with gradient clipping)
    Variant("mmldm_bf16", "mmldm", bf16=True),
)
COMPILED = Variant("mmldm_compiled_fused_adamw", "mmldm", fused_adamw=True, compile=True)


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


def build_diffusers(arch: Arch) -> Any:
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


def check_parameter_counts(mmldm: Any, diffusers: Any, tolerance: float = 0.01) -> dict[str, int]:
    """Both parameter counts; a ``RuntimeError`` if they differ by more than ``tolerance`` (relative)."""
    counts = {"mmldm": sum(p.numel() for p in mmldm.parameters()),
              "diffusers": sum(p.numel() for p in diffusers.parameters())}
    gap = abs(counts["mmldm"] - counts["diffusers"]) / counts["diffusers"]
    if gap > tolerance:
        raise RuntimeError(f"parameter counts differ by {gap:.2%} (mmldm {counts['mmldm']:,}, diffusers "
                           f"{counts['diffusers']:,}), more than {tolerance:.0%}: the architectures are not matched")
    return counts


def _call_order(model: Any, run: Callable[[], Any]) -> list[Any]:
    """Modules owning parameters, in the order a forward first uses their parameters.

    First use, not first call: mmldm applies some layers' weights through functions (the 1x1 projections
    of its SpatialTransformer are matrix products on tokens), so a forward hook would not see them.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    owner_of = {id(p): m for m in owners for p in m.parameters(recurse=False)}
    order: list[Any] = []

    class FirstUse(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            for leaf in tree_leaves((args, kwargs or {})):
                m = owner_of.get(id(leaf)) if isinstance(leaf, torch.Tensor) else None
                if m is not None and m not in order:
                    order.append(m)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), FirstUse():
        run()
    if len(order) != len(owners):
        missing = len(owners) - len(order)
        raise RuntimeError(f"{missing} parameterized modules of {type(model).__name__} were not used")
    return order


def copy_weights(src: Any, dst: Any, run_src: Callable[[], Any], run_dst: Callable[[], Any]) -> int:
    """Copy ``src``'s parameters into ``dst`` by call order; returns the number of tensors copied.

    Layers are grouped by (class, parameter shapes) and paired in the order the forwards use them:
    within a group the order is the same in both networks even where they use a block's layers in a
    different order (for example the time projection of a ResBlock before or after its first norm).
    """
    import torch

    def groups(order: list[Any]) -> dict[tuple, list[Any]]:
        out: dict[tuple, list[Any]] = defaultdict(list)
        for m in order:
            out[(type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))].append(m)
        return out

    a, b = groups(_call_order(src, run_src)), groups(_call_order(dst, run_dst))
    if {k: len(v) for k, v in a.items()} != {k: len(v) for k, v in b.items()}:
        raise RuntimeError("the two networks' layers do not pair up by class and parameter shapes")
    copied = 0
    with torch.no_grad():
        for key, modules in a.items():
            for m_src, m_dst in zip(modules, b[key]):
                for p_src, p_dst in zip(m_src.parameters(recurse=False), m_dst.parameters(recurse=False)):
                    p_dst.copy_(p_src)
                    copied += 1
    return copied


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


def runners(call: Callable, params: list, variant: Variant, inputs: tuple, state: dict) -> dict[str, Callable]:
    """``forward`` (no grad) and ``train_step`` of one variant. ``state`` is the AdamW state shared by the
    variants of one model (fused and for-each AdamW keep the same state tensors)."""
    import torch
    import torch.nn.functional as F

    x, t, context, target = inputs
    opt = torch.optim.AdamW(params, lr=1e-5, fused=variant.fused_adamw)
    opt.state = state

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=variant.bf16, cache_enabled=False):
            call(x, t, context)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=variant.bf16, cache_enabled=False):
            pred = call(x, t, context)
        loss = F.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()

    return {"forward": forward, "train_step": train_step}


def build_all(arch: Arch, variants: Sequence[Variant]) -> tuple[dict[str, Any], dict[str, dict]]:
    """The models (one per side / memory format / compile, all with diffusers' initial weights) and each
    variant's runners; also the parameter counts and the output difference of the matched pair."""
    import torch

    torch.manual_seed(0)
    inputs = make_inputs(arch)
    x, t, context, _ = inputs
    reference, eager = build_diffusers(arch), build_mmldm(arch)
    counts = check_parameter_counts(eager, reference)
    ref_call, eager_call = caller(reference, "diffusers"), caller(eager, "mmldm")
    copy_weights(reference, eager, lambda: ref_call(x, t, context), lambda: eager_call(x, t, context))
    with torch.no_grad():
        diff = (eager_call(x, t, context) - ref_call(x, t, context)).abs().max().item()
    models: dict[tuple, Any] = {("diffusers", False, False): reference, ("mmldm", False, False): eager}
    for key in dict.fromkeys(v.model_key for v in variants):
        if key not in models:  # other memory formats / compiled: the same weights
            if key[0] != "mmldm":
                raise ValueError(f"variants change diffusers only through the optimizer and autocast, got {key}")
            models[key] = build_mmldm(arch, channels_last=key[1], compile=key[2])
            models[key].load_state_dict(eager.state_dict())
    states: dict[tuple, dict] = {key: defaultdict(dict) for key in models}
    runs = {v.name: runners(caller(models[v.model_key], v.side), list(models[v.model_key].parameters()), v, inputs,
                            states[v.model_key]) for v in variants}
    return {"parameters": counts, "max_abs_output_difference": diff}, runs


def run(arch: Arch, rounds: int = 7, compile: bool = False, memory: bool = True) -> dict[str, Any]:
    """Time every variant in ``rounds`` alternating rounds; medians, ratios to diffusers, peak memory."""
    import torch

    variants = [*VARIANTS, COMPILED] if compile else list(VARIANTS)
    check, runs = build_all(arch, variants)
    timed_forward = {v.forward_key: v.name for v in reversed(variants)}  # first variant of each forward setting
    first_step = {v.name: timed(runs[v.name]["train_step"]) for v in variants}  # warm-up (and compilation)
    for name in timed_forward.values():
        runs[name]["forward"]()
    seconds: dict[str, dict[str, list[float]]] = {v.name: {"forward": [], "train_step": []} for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            if timed_forward[v.forward_key] == v.name:
                seconds[v.name]["forward"].append(timed(runs[v.name]["forward"]))
            seconds[v.name]["train_step"].append(timed(runs[v.name]["train_step"]))
    rows = {}
    for v in variants:
        med = {k: statistics.median(s) if s else None for k, s in seconds[v.name].items()}
        per_round = {k: [a / b for a, b in zip(s, seconds["diffusers"][k])] for k, s in seconds[v.name].items()}
        ratio = {k: statistics.median(q) if q else None for k, q in per_round.items()}
        spread = {k: [min(q), max(q)] if q else None for k, q in per_round.items()}
        rows[v.name] = {**asdict(v), "median_seconds": med, "ratio_to_diffusers": ratio,
                        "ratio_range": spread, "first_step_seconds": first_step[v.name]}
        if memory:
            rows[v.name]["peak_mb"] = {k: peak_tensor_memory(fn) / 2**20 for k, fn in runs[v.name].items()
                                       if k == "train_step" or timed_forward[v.forward_key] == v.name}
    return {"arch": arch.as_dict(), "rounds": rounds, "threads": torch.get_num_threads(), **check,
            "seconds": seconds, "variants": rows}


def report(r: dict[str, Any]) -> str:
    a, p = r["arch"], r["parameters"]
    fmt = lambda x, spec: "" if x is None else format(x, spec)  # noqa: E731
    lines = [
        "# mmldm U-Net vs diffusers UNet2DConditionModel",
        "",
        f"Levels {a['block_channels']}, {a['layers_per_block']} ResBlocks per level, attention at levels "
        f"{a['attention_levels']} and in the middle, heads of {a['head_dim']}, context {a['context_dim']}; "
        f"latents [{a['batch']}, {a['latent_channels']}, {a['resolution']}, {a['resolution']}], "
        f"{a['tokens']} tokens. "
        f"Parameters: mmldm {p['mmldm']:,}, diffusers {p['diffusers']:,}; largest output difference with the same "
        f"weights {r['max_abs_output_difference']:.1e}. Medians of {r['rounds']} alternating rounds, "
        f"{r['threads']} CPU threads; ratios are medians of per-round ratios against diffusers (eager, fp32, "
        "torch's default AdamW), with the smallest and largest per-round ratio beside them: the run's noise.",
        "",
        "| variant | forward s | fwd / diffusers | train step s | step / diffusers | per-round step ratios "
        "| first step s | peak MB fwd | peak MB step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in r["variants"].items():
        m, q, mem = v["median_seconds"], v["ratio_to_diffusers"], v.get("peak_mb", {})
        lo, hi = v["ratio_range"]["train_step"]
        lines.append(f"| {name} | {fmt(m['forward'], '.3f')} | {fmt(q['forward'], '.2f')} | {m['train_step']:.3f} "
                     f"| **{q['train_step']:.2f}** | {lo:.2f}-{hi:.2f} | {v['first_step_seconds']:.1f} "
                     f"| {fmt(mem.get('forward'), '.0f')} "
                     f"| {fmt(mem.get('train_step'), '.0f')} |")
    lines += ["", "Peak MB: bytes held by torch's CPU allocator during one call above those held before "
              "(activations, gradients, temporaries; not weights or optimizer state).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.unet_vs_diffusers", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--batch", type=int, default=Arch.batch)
    p.add_argument("--resolution", type=int, default=Arch.resolution)
    p.add_argument("--compile", action="store_true", help="add the torch.compile variant (compiles for minutes)")
    p.add_argument("--quick", action="store_true", help="a tiny pair and 2 rounds (a smoke run)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "unet_vs_diffusers")
    args = p.parse_args(argv)
    arch = QUICK if args.quick else replace(Arch(), batch=args.batch, resolution=args.resolution)
    result = run(arch, 2 if args.quick else args.rounds, args.compile)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(report(result))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
