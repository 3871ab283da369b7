"""How much of the CPU's matrix-multiply rate the U-Net achieves, forward and training step, measured in one run.

* **FLOPs** of one forward are counted with :class:`torch.utils.flop_counter.FlopCounterMode`
  (convolutions, matrix products and attention, a multiply-add counting 2); its table lacks the
  CPU flash-attention kernel, which is added here with the library's own SDPA formula.
* **Reference rate**: the FLOP/s of an ``n x n`` float32 matrix product (``2 n^3`` FLOPs), timed in
  rounds that alternate with the forward's, so load on the machine hits both alike.
* **Utilization** = (FLOPs / median forward seconds) / median matmul FLOP/s.
* **Per precision, the training step** (forward + MSE + backward; the optimizer, memory-bound and nearly
  FLOP-free, is left out): float32 against a float32 matmul, bf16 autocast against a bf16 matmul, each
  with what bounds it where it is below :data:`STEP_TARGET` (60%).
* **What bounds it**: one profiled forward, its self CPU time split into FLOP-carrying operators
  (convolution, matmul, attention), normalizations and the rest (element-wise, copies, concatenation,
  interpolation): the share of time outside FLOP-carrying operators, and the rate those operators reach
  on their own, say whether memory-bound layers or small matrix shapes hold the figure down.

Also the memory helpers of the performance benchmarks: :func:`peak_tensor_memory` (peak of the
bytes held by torch's CPU allocator during a call, from the profiler's memory events) and
:func:`peak_rss` (the process's peak resident set during a block, reset through
``/proc/self/clear_refs`` where Linux allows it).

    python -m benchmarks.utilization                 # the 2D preset U-Net, batch 8, 32x32 latents
    python -m benchmarks.utilization --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from benchmarks.latent_vs_pixel import timed
from benchmarks import save_results

REPO = Path(__file__).resolve().parents[1]
#: operator-name fragments of the profiler's FLOP-carrying operators and of normalizations
FLOP_OPS = ("conv", "mm", "matmul", "scaled_dot_product", "flash_attention", "linear")
NORM_OPS = ("group_norm", "layer_norm", "batch_norm")
TARGET = 0.40
STEP_TARGET = 0.60
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's C++ backend otherwise logs a missing-GPU error


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` by :class:`~torch.utils.flop_counter.FlopCounterMode`, CPU flash attention included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def cpu_flash_attention(q, k, v, *args, out_shape=None, **kwargs) -> int:  # q, k, v: [B, heads, N, d]
        return sdpa_flop_count(q, k, v)

    def cpu_flash_attention_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention,
               torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_flash_attention_backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_operands(n: int, dtype: Any = None) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(n, n, generator=g).to(dtype or torch.float32) for _ in range(2))


def time_breakdown(fn: Callable[[], Any]) -> dict[str, float]:
    """Shares of ``fn()``'s self CPU time: ``flop_ops``, ``normalization``, ``other`` (they sum to 1)."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    shares = {"flop_ops": 0.0, "normalization": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name = event.key.lower()
        kind = ("flop_ops" if any(s in name for s in FLOP_OPS)
                else "normalization" if any(s in name for s in NORM_OPS) else "other")
        shares[kind] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def peak_tensor_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch's CPU allocator during ``fn()`` and live at the same time.

    Read from the profiler's ``[memory]`` events: blocks allocated before the call (weights, optimizer
    state) are not counted, nor is memory that libraries such as oneDNN take outside torch's allocator.
    """
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e["ts"], e["args"]["Ev Idx"], e["args"]["Addr"], e["args"]["Bytes"])
                    for e in events if e.get("name") == "[memory]")
    live, peak, blocks = 0, 0, {}
    for _, _, addr, size in memory:
        if size > 0:
            blocks[addr] = size
            live += size
        elif addr in blocks:  # freeing a block allocated during the call
            live -= blocks.pop(addr)
        peak = max(peak, live)
    return peak


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in KiB; None off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), None)


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, Any]]:
    """Yield a dict that gets ``rss_before_mb``, ``peak_rss_mb`` and ``method`` when the block ends.

    The peak is the process's high-water resident set (``VmHWM``), first reset to the current RSS by
    writing 5 to ``/proc/self/clear_refs``; where that is not allowed, the peak since process start.
    """
    out: dict[str, Any] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        out["method"] = "VmHWM after reset via /proc/self/clear_refs"
    except OSError:
        out["method"] = "VmHWM since process start (reset not permitted)"
    before = _status_kib("VmRSS")
    try:
        yield out
    finally:
        peak = _status_kib("VmHWM")
        out["rss_before_mb"] = before / 1024 if before is not None else None
        out["peak_rss_mb"] = peak / 1024 if peak is not None else None


def measure(forward: Callable[[], Any], rounds: int = 5, n: int = 2048, dtype: Any = None,
            target: float = TARGET, what: str = "forward") -> dict[str, Any]:
    """Utilization of ``forward`` (any call: a no-grad forward or a training step) against an ``n x n``
    matmul in ``dtype`` (default float32), ``rounds`` alternating rounds; ``target`` and ``what`` word
    the explanation."""
    import torch

    flops = count_flops(forward)
    a, b = matmul_operands(n, dtype)
    forward(), torch.mm(a, b)  # warm-up
    seconds: dict[str, list[float]] = {"forward": [], "matmul": []}
    for r in range(rounds):
        for kind in ("forward", "matmul") if r % 2 == 0 else ("matmul", "forward"):
            seconds[kind].append(timed(forward if kind == "forward" else lambda: torch.mm(a, b)))
    med = {k: statistics.median(v) for k, v in seconds.items()}
    achieved, peak = flops / med["forward"], 2 * n**3 / med["matmul"]
    shares = time_breakdown(forward)
    flop_op_rate = flops / (med["forward"] * shares["flop_ops"]) if shares["flop_ops"] else 0.0
    result = {
        "forward_flops": flops, "seconds": seconds, "median_seconds": med, "matmul_n": n,
        "achieved_flops_per_s": achieved, "matmul_flops_per_s": peak, "utilization": achieved / peak,
        "time_shares": shares, "flop_ops_utilization": flop_op_rate / peak, "threads": torch.get_num_threads(),
        "matmul_dtype": str(a.dtype).replace("torch.", ""), "target": target, "what": what,
    }
    result["bound"] = explain(result)
    return result


def explain(r: dict[str, Any]) -> str:
    """One sentence on what holds utilization down (or that it meets the target)."""
    s, target, what = r["time_shares"], r.get("target", TARGET), r.get("what", "forward")
    head = f"utilization {r['utilization']:.0%} of the {r['matmul_n']}^2 {r.get('matmul_dtype', 'float32')} matmul rate"
    if r["utilization"] >= target:
        return f"{head} (target >= {target:.0%})."
    parts = [f"{1 - s['flop_ops']:.0%} of the {what}'s CPU time is in operators without FLOPs "
             f"(normalizations {s['normalization']:.0%}, element-wise/copies/other {s['other']:.0%}), "
             f"which are memory-bound"]
    parts.append(f"the convolution/matmul/attention operators themselves reach {r['flop_ops_utilization']:.0%} "
                 "of the matmul rate (small spatial maps and channel counts make small, poorly blocked GEMMs)")
    main = "memory-bound layers" if 1 - s["flop_ops"] > 0.5 else "the efficiency of the conv/GEMM kernels"
    return f"{head}, below {target:.0%}: " + "; ".join(parts) + f". Mostly bound by {main}."


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from benchmarks.unet_vs_diffusers import QUICK, Arch

    p = argparse.ArgumentParser(prog="python -m benchmarks.utilization", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="tiny U-Net, 2 rounds, 512^2 matmul")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "utilization")
    args = p.parse_args(argv)
    arch = QUICK if args.quick else Arch(batch=args.batch)
    result = run(arch, 2 if args.quick else args.rounds, 512 if args.quick else args.matmul_n)
    save_results(args.out, result, report(result))
    return result


def run(arch: Any, rounds: int, n: int) -> dict[str, Any]:
    """:func:`measure` on the mmldm 2D U-Net of :class:`benchmarks.unet_vs_diffusers.Arch` ``arch``: the
    no-grad forward in float32, then the training step in float32 and in bf16 autocast (``train_step``)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.unet_vs_diffusers import build_mmldm, make_inputs
    from mmldm.interfaces import Conditioning

    torch.manual_seed(0)
    model = build_mmldm(arch).eval()
    x, t, context, target = make_inputs(arch)

    def forward() -> None:
        with torch.no_grad():
            model(x, t, Conditioning(crossattn=context))

    def train_step(bf16: bool) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16, cache_enabled=False):
                pred = model(x, t, Conditioning(crossattn=context))
            F.mse_loss(pred.float(), target).backward()
        return step

    result = {"arch": arch.as_dict(), **measure(forward, rounds, n)}
    model.train()
    result["train_step"] = {
        name: measure(train_step(dtype == torch.bfloat16), rounds, n, dtype, STEP_TARGET, "training step")
        for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16))}
    return result


def report(r: dict[str, Any]) -> str:
    a = r["arch"]
    lines = [
        "# U-Net utilization",
        "",
        f"mmldm 2D U-Net {a['block_channels']}, batch {a['batch']} of [{a['latent_channels']}, {a['resolution']}, "
        f"{a['resolution']}] latents, {r['threads']} threads: {r['forward_flops'] / 1e9:.1f} GFLOP per forward in "
        f"{r['median_seconds']['forward']:.3f} s = {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"{r['matmul_n']}^2 float32 matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s.",
        "",
        f"**Forward, float32: {r['bound']}**",
        "",
    ]
    steps = r.get("train_step", {})
    if steps:
        lines += ["Training step (forward + MSE + backward; the optimizer left out), per precision, against a "
                  "matmul in the same dtype:", "",
                  "| precision | GFLOP per step | step s | GFLOP/s | matmul GFLOP/s | utilization | what bounds it |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in steps.items():
            lines.append(f"| {name} | {m['forward_flops'] / 1e9:.1f} | {m['median_seconds']['forward']:.3f} "
                         f"| {m['achieved_flops_per_s'] / 1e9:.1f} | {m['matmul_flops_per_s'] / 1e9:.1f} "
                         f"| **{m['utilization']:.0%}** | {m['bound']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
