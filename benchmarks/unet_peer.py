"""The timing harness behind mmldm's U-Net speed comparisons with a peer library, at equal settings.

A *peer module* (:mod:`benchmarks.unet_vs_diffusers` for 2D, :mod:`benchmarks.unet_vs_monai` for 3D)
builds mmldm's U-Net and the peer's network at one matched architecture and exposes:
``PEER`` (the peer's side name), ``Arch`` (sizes and the input), ``build_mmldm(arch, channels_last,
compile)``, ``build_peer(arch)``, ``caller(model, side)``, ``make_inputs(arch)`` and ``describe(arch)``;
optionally its own ``copy_weights(src, dst, run_src, run_dst)`` where the layouts need more than
:func:`copy_weights`.

Every speed ratio compares like with like (:data:`SETTINGS`): both sides run at the same setting
(precision / autocast, memory format, optimizer kernel, compiled or eager), on the same inputs and
the same weights (the peer's initial weights, copied into mmldm by :func:`copy_weights`), in
interleaved rounds whose order alternates; each ratio is the median of per-round ratios mmldm / peer
at that setting, with the smallest and largest per-round ratio beside it (the run's noise). What a
setting buys (say bf16 autocast over float32) is a separate figure, each side against itself, never
a ratio against the peer.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Callable, Sequence

from benchmarks.latent_vs_pixel import timed
from benchmarks.utilization import peak_tensor_memory


@dataclass(frozen=True)
class Setting:
    """One way of running both networks. ``compile``: ``torch.compile`` (inductor) of the forward."""

    name: str
    label: str
    channels_last: bool = False
    fused_adamw: bool = False
    bf16: bool = False
    compile: bool = False

    @property
    def model_key(self) -> tuple[bool, bool]:
        return self.channels_last, self.compile


FP32 = Setting("fp32", "float32, eager, torch's default (for-each) AdamW")
SETTINGS = (
    FP32,
    Setting("fused_adamw", "float32, eager, fused AdamW", fused_adamw=True),
    # what `trainer.precision=bf16-mixed` runs: Lightning's autocast (weight cache off), for-each AdamW
    Setting("bf16", "bf16 autocast, eager, for-each AdamW", bf16=True),
    Setting("channels_last", "float32, channels-last memory format, eager, for-each AdamW", channels_last=True),
)
COMPILED = Setting("compiled", "float32, torch.compile (inductor), for-each AdamW", compile=True)


def check_parameter_counts(mmldm: Any, peer: Any, tolerance: float = 0.01, peer_name: str = "diffusers"
                           ) -> dict[str, int]:
    """Both parameter counts; a ``RuntimeError`` if they differ by more than ``tolerance`` (relative)."""
    counts = {"mmldm": sum(p.numel() for p in mmldm.parameters()),
              peer_name: sum(p.numel() for p in peer.parameters())}
    gap = abs(counts["mmldm"] - counts[peer_name]) / counts[peer_name]
    if gap > tolerance:
        raise RuntimeError(f"parameter counts differ by {gap:.2%} (mmldm {counts['mmldm']:,}, {peer_name} "
                           f"{counts[peer_name]:,}), more than {tolerance:.0%}: the architectures are not matched")
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


def _memory_format(x: Any) -> Any:
    import torch

    return torch.channels_last_3d if x.ndim == 5 else torch.channels_last


def runners(call: Callable, params: list, setting: Setting, inputs: tuple, state: dict) -> dict[str, Callable]:
    """``forward`` (no grad) and ``train_step`` (forward, MSE, backward, AdamW) of one side at ``setting``.
    ``state`` is the AdamW state shared by the settings of one model (fused and for-each AdamW keep the
    same state tensors)."""
    import torch
    import torch.nn.functional as F

    x, t, context, target = inputs
    if setting.channels_last and x.ndim > 3:
        x = x.contiguous(memory_format=_memory_format(x))
    opt = torch.optim.AdamW(params, lr=1e-5, fused=setting.fused_adamw)
    opt.state = state

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=setting.bf16, cache_enabled=False):
            call(x, t, context)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=setting.bf16, cache_enabled=False):
            pred = call(x, t, context)
        loss = F.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()

    return {"forward": forward, "train_step": train_step}


def _variant(peer: ModuleType, arch: Any, key: tuple[bool, bool], side: str, base: Any, memory_format: Any) -> Any:
    """``side``'s model in memory format / compile ``key``, with ``base``'s weights (mmldm converts its own
    layout through its ``channels_last`` option and compiles through its ``compile`` option)."""
    import torch

    channels_last, compile = key
    if side == "mmldm":
        model = peer.build_mmldm(arch, channels_last=channels_last, compile=compile)
        model.load_state_dict(base.state_dict())
        return model
    model = peer.build_peer(arch)
    model.load_state_dict(base.state_dict())
    if channels_last:
        model = model.to(memory_format=memory_format)
    return torch.compile(model) if compile else model


def build_all(peer: ModuleType, arch: Any, settings: Sequence[Setting]) -> tuple[dict[str, Any], dict]:
    """Every (setting, side)'s runners, all models starting from the peer's initial weights; also the
    parameter counts and the largest output difference of the eager pair."""
    import torch

    torch.manual_seed(0)
    inputs = peer.make_inputs(arch)
    x, t, context, _ = inputs
    sides = ("mmldm", peer.PEER)
    base = {peer.PEER: peer.build_peer(arch), "mmldm": peer.build_mmldm(arch)}
    counts = check_parameter_counts(base["mmldm"], base[peer.PEER], peer_name=peer.PEER)
    calls = {s: peer.caller(base[s], s) for s in sides}
    copy = getattr(peer, "copy_weights", copy_weights)  # a peer whose layouts differ pairs layers itself
    copy(base[peer.PEER], base["mmldm"], lambda: calls[peer.PEER](x, t, context),
                 lambda: calls["mmldm"](x, t, context))
    with torch.no_grad():
        diff = (calls["mmldm"](x, t, context) - calls[peer.PEER](x, t, context)).abs().max().item()
    models = {(s, False, False): base[s] for s in sides}
    for setting in settings:
        for s in sides:
            if (s, *setting.model_key) not in models:
                models[(s, *setting.model_key)] = _variant(peer, arch, setting.model_key, s, base[s],
                                                           _memory_format(x))
    states = {key: defaultdict(dict) for key in models}
    runs = {}
    for setting in settings:
        for s in sides:
            model = models[(s, *setting.model_key)]
            runs[(setting.name, s)] = runners(peer.caller(model, s), list(model.parameters()), setting, inputs,
                                              states[(s, *setting.model_key)])
    return {"parameters": counts, "max_abs_output_difference": diff}, runs


def profile_gap(steps: dict[str, Callable[[], None]], calls: int = 2, top: int = 12) -> dict[str, Any]:
    """Where one side spends more time than the other: ``calls`` train steps of each side under
    ``torch.profiler``, self CPU ms per step by operator, the ``top`` operators by absolute difference.
    Run where mmldm is slower than the peer at a setting, so the report says where the time goes."""
    import warnings
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    per_side: dict[str, Counter] = {}
    for side, step in steps.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(calls):
                    step()
        per_side[side] = Counter({e.key: e.self_cpu_time_total / 1e3 / calls for e in prof.key_averages()})
    a, b = per_side.values()
    ops = sorted(set(a) | set(b), key=lambda k: -abs(a[k] - b[k]))[:top]
    return {"sides": list(per_side), "total_ms": [sum(a.values()), sum(b.values())],
            "ops": [[op, a[op], b[op]] for op in ops]}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(peer: ModuleType, arch: Any, rounds: int = 7, settings: Sequence[Setting] = SETTINGS,
        memory: bool = True, profile: bool = True) -> dict[str, Any]:
    """Time every setting on both sides in ``rounds`` interleaved rounds (order reversed every other round).

    Returns per setting: each side's median seconds (forward and train step), the ratio mmldm / peer
    (median and range of per-round ratios), the first step's seconds (warm-up; compilation when
    compiled), with ``memory`` peak tensor memory of a train step, and with ``profile``, where mmldm's
    median is above the peer's, a :func:`profile_gap` table; plus ``buys``: each side's time at a setting
    over its own float32 eager time (what the setting buys)."""
    import torch

    check, runs = build_all(peer, arch, settings)
    sides = ("mmldm", peer.PEER)
    order = [(s.name, side) for s in settings for side in sides]
    # forward timed once per (memory format, bf16): fused AdamW shares fp32's; not when compiled (a no-grad
    # forward is another graph to compile, minutes more for each side)
    forward_of = {}
    for s in settings:
        for side in sides:
            if not s.compile:
                forward_of.setdefault((side, s.model_key, s.bf16), (s.name, side))
    timed_forward = set(forward_of.values())
    first = {key: timed(runs[key]["train_step"]) for key in order}
    for key in timed_forward:
        runs[key]["forward"]()
    seconds: dict[tuple, dict[str, list[float]]] = {key: {"forward": [], "train_step": []} for key in order}
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            if key in timed_forward:
                seconds[key]["forward"].append(timed(runs[key]["forward"]))
            seconds[key]["train_step"].append(timed(runs[key]["train_step"]))
    rows: dict[str, Any] = {}
    for s in settings:
        ours, theirs = seconds[(s.name, "mmldm")], seconds[(s.name, peer.PEER)]
        row: dict[str, Any] = {**asdict(s), "seconds": {}, "ratio": {}, "first_step_seconds": {}}
        for kind in ("forward", "train_step"):
            if ours[kind] and theirs[kind]:
                row["ratio"][kind] = _spread([a / b for a, b in zip(ours[kind], theirs[kind])])
        for side in sides:
            row["seconds"][side] = {k: statistics.median(v) if v else None
                                    for k, v in seconds[(s.name, side)].items()}
            row["first_step_seconds"][side] = first[(s.name, side)]
        if memory:
            row["peak_mb"] = {side: peak_tensor_memory(runs[(s.name, side)]["train_step"]) / 2**20
                              for side in sides}
        if profile and row["ratio"]["train_step"]["median"] > 1.0:
            row["profile"] = profile_gap({side: runs[(s.name, side)]["train_step"] for side in sides})
        rows[s.name] = row
    buys = {s.name: {side: _spread([a / b for a, b in zip(seconds[(s.name, side)]["train_step"],
                                                           seconds[(FP32.name, side)]["train_step"])])
                     for side in sides} for s in settings if s.name != FP32.name and FP32 in settings}
    return {"peer": peer.PEER, "arch": arch.as_dict(), "description": peer.describe(arch), "rounds": rounds,
            "threads": torch.get_num_threads(), **check, "settings": rows, "buys": buys}


def report(r: dict[str, Any], title: str) -> str:
    """Markdown: one row per setting, mmldm / peer at that setting; then what each setting buys."""
    peer, p = r["peer"], r["parameters"]
    fmt = lambda x, spec: "" if x is None else format(x, spec)  # noqa: E731
    lines = [
        f"# {title}", "",
        f"{r['description']} Parameters: mmldm {p['mmldm']:,}, {peer} {p[peer]:,}; largest output difference "
        f"with the same weights {r['max_abs_output_difference']:.1e}. {r['rounds']} interleaved rounds, "
        f"{r['threads']} CPU threads. Each ratio is mmldm / {peer} at the same setting: the median of per-round "
        "ratios, with the smallest and largest beside it (the run's noise).", "",
        f"| setting | mmldm step s | {peer} step s | step mmldm / {peer} (min-max) | forward mmldm / {peer} "
        f"| first step s, mmldm / {peer} | peak MB step, mmldm / {peer} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["settings"].values():
        sec, q, first, mem = row["seconds"], row["ratio"], row["first_step_seconds"], row.get("peak_mb", {})
        step, fwd = q["train_step"], q.get("forward")
        lines.append(
            f"| {row['label']} | {sec['mmldm']['train_step']:.3f} | {sec[peer]['train_step']:.3f} "
            f"| **{step['median']:.2f}** ({step['min']:.2f}-{step['max']:.2f}) "
            f"| {fmt(fwd and fwd['median'], '.2f')} | {first['mmldm']:.1f} / {first[peer]:.1f} "
            f"| {fmt(mem.get('mmldm'), '.0f')} / {fmt(mem.get(peer), '.0f')} |")
    lines += ["", f"What each setting buys, each side against its own float32 eager step (median of per-round "
              "ratios; below 1 is faster):", "", f"| setting | mmldm | {peer} |", "| --- | --- | --- |"]
    for name, b in r["buys"].items():
        lines.append(f"| {r['settings'][name]['label']} | {b['mmldm']['median']:.2f} "
                     f"| {b[peer]['median']:.2f} |")
    for row in r["settings"].values():
        if "profile" in row:
            g = row["profile"]
            lines += ["", f"Where the time goes at {row['label']} (mmldm above {peer}): self CPU ms per train step "
                      f"under torch.profiler, the operators that differ most (totals {g['total_ms'][0]:.0f} / "
                      f"{g['total_ms'][1]:.0f} ms):", "", f"| operator | mmldm ms | {peer} ms |", "| --- | --- | --- |"]
            lines += [f"| `{op}` | {a:.1f} | {b:.1f} |" for op, a, b in g["ops"]]
    lines += ["", "Peak MB: bytes held by torch's CPU allocator during one train step above those held before "
              "(activations, gradients, temporaries; not weights or optimizer state).", ""]
    return "\n".join(lines)
