"""Statistics that every quality figure carries: n and a 95% interval for a share, repeats and a
real-vs-real reference for a set metric.

Two kinds of figure need them:

* **a share** (class accuracy, the classifier's held-out accuracy): ``k`` of ``n`` items are right.
  :func:`proportion` gives the Wilson score interval (Wilson 1927; recommended over the normal
  approximation by Brown, Cai & DasGupta 2001), computed by scipy's ``binomtest(k, n).proportion_ci``.
  At 100 of 120 the share is 83.3% and the interval 75.7-88.9%: a 2-point difference between two runs
  of 120 samples is noise.
* **a set metric** (1-NNA, COV, MMD, JSD of voxels; spectrum statistics of audio): it compares a
  generated set with a real one, and its value depends on the two sizes as much as on the generator.
  1-NNA of two equal-size sets drawn from the same distribution is 0.5 in expectation but spreads by a
  few points at a hundred items; COV of a perfect generator is well below 1 (a real item is "covered"
  only when it is some generated item's nearest neighbour). :func:`repeated_set_metrics` therefore
  measures at one size for both sets, over several random subsets, and measures the same metric on two
  disjoint real subsets (the *null*: what a perfect generator scores at this size), so that a reader
  compares the generator with the null rather than with the textbook ideal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import binomtest

#: ``metric_fn(real, generated[, labels])``: the signature of ``Modality.generation_metrics``.
SetMetric = Callable[..., Mapping[str, float]]


# ---------------------------------------------------------------------------- shares
@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n`` with its share ``value = k / n`` and a confidence interval ``[low, high]``."""

    k: int
    n: int
    value: float
    low: float
    high: float
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        """``{"k", "n", "value", "low", "high", "confidence"}``, plain numbers (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        """E.g. ``83.3% (100/120, 95% CI 75.7-88.9%)``."""
        return (f"{100 * self.value:.1f}% ({self.k}/{self.n}, {100 * self.confidence:g}% CI "
                f"{100 * self.low:.1f}-{100 * self.high:.1f}%)")


def proportion_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of ``k`` successes in ``n`` trials (scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")``); stays inside [0, 1] at ``k = 0`` and ``k = n``."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def proportion(k: int, n: int, confidence: float = 0.95) -> Proportion:
    """``k`` of ``n`` as a :class:`Proportion` with its Wilson interval."""
    low, high = proportion_interval(k, n, confidence)
    return Proportion(int(k), int(n), k / n, low, high, confidence)


def proportion_from_share(share: float, n: int, confidence: float = 0.95, tol: float = 1e-3) -> Proportion | None:
    """The :class:`Proportion` behind a stored ``share`` of ``n`` items (results written before counts
    were stored): ``k = round(share * n)``. ``None`` when ``share * n`` is not within ``tol`` of an
    integer, i.e. when ``n`` cannot have been the denominator (float32 shares are exact to ~1e-5 at n = 200)."""
    if n < 1 or share is None or not math.isfinite(share):
        return None
    k = round(share * n)
    return proportion(k, n, confidence) if abs(share * n - k) <= tol and 0 <= k <= n else None


# ---------------------------------------------------------------------------- set metrics
def summarize(values: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric over repeats: ``{"mean", "sd", "values"}`` (``sd`` with ``ddof=1``, 0 for one repeat;
    NaN values, e.g. the JSD of an empty set, are left out of mean and sd)."""
    keys = sorted({k for v in values for k in v})
    out = {}
    for key in keys:
        xs = [float(v[key]) for v in values if key in v]
        finite = np.asarray([x for x in xs if math.isfinite(x)])
        mean = float(finite.mean()) if len(finite) else float("nan")
        sd = float(finite.std(ddof=1)) if len(finite) > 1 else (0.0 if len(finite) else float("nan"))
        out[key] = {"mean": mean, "sd": sd, "values": xs}
    return out


def means(summary: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{metric: mean}`` of a :func:`summarize` result: the flat form older readers expect."""
    return {k: v["mean"] for k, v in summary.items()}


def equal_set_size(generated: int, real: int) -> int:
    """The size :func:`repeated_set_metrics` uses for ``generated`` and ``real`` items: every generated
    item when the real pool holds two disjoint subsets of that size, else half the real pool."""
    return min(generated, real // 2)


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a tensor or array (``None`` stays ``None``)."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx, dtype=torch.long, device=x.device)]
    return np.asarray(x)[idx]


def _call(metric_fn: SetMetric, real: Any, generated: Any, labels: Any) -> Mapping[str, float]:
    return metric_fn(real, generated) if labels is None else metric_fn(real, generated, labels)


def repeated_set_metrics(metric_fn: SetMetric, real: Any, generated: Any, size: int, repeats: int = 5,
                         seed: int = 0, labels: Any = None, real_labels: Any = None,
                         null: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A set metric at equal sizes, over ``repeats`` random subsets, beside its real-vs-real null.

    Each repeat draws (without replacement, from one ``numpy`` generator seeded with ``seed``):

    * ``real_a``: ``size`` real items, the reference of both comparisons;
    * ``real_b``: ``size`` other real items (disjoint from ``real_a``): a perfect generator's output;
    * ``gen``: ``size`` generated items (all of them, reordered, when ``size == len(generated)``);

    and calls ``metric_fn(real_a, gen)`` and ``metric_fn(real_a, real_b)`` (the *null*), so every metric of
    a repeat sees the same subsets and the two comparisons differ only in the second set.

    Args:
        metric_fn: ``(real, generated) -> {name: value}``, e.g. ``Modality.generation_metrics``; called
            with a third argument, the labels of the second set, when ``labels`` is given.
        real (`Tensor` or `ndarray`, ``[R, ...]``): the real pool; needs ``R >= 2 * size``.
        generated (``[G, ...]``): the generated pool; needs ``G >= size``.
        size (`int`): items per set.
        repeats (`int`, defaults to 5): random subsets measured.
        seed (`int`, defaults to 0): the subsets' seed; the same seed gives the same subsets.
        labels (``[G]``, optional): the generated items' conditioning classes (subset with them).
        real_labels (``[R]``, optional): the real items' classes, passed with ``real_b`` in the null.
        null (optional): an earlier result of this function on the same real pool; its null is reused
            when its ``size``, ``repeats`` and ``seed`` match (several samplers judged against one pool).

    Returns:
        ``{"size", "repeats", "seed", "real_pool", "generated_pool", "generated": {metric: {"mean", "sd",
        "values"}}, "null": {...}}``.
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"repeated_set_metrics needs size >= 1 and repeats >= 1, got size={size}, repeats={repeats}")
    if len(real) < 2 * size or len(generated) < size:
        raise ValueError(f"equal-size set metrics at size {size} need >= {2 * size} real items (two disjoint "
                         f"subsets for the real-vs-real null) and >= {size} generated ones; got {len(real)} real "
                         f"and {len(generated)} generated: pass size <= {equal_set_size(len(generated), len(real))}")
    reuse = null is not None and all(null.get(k) == v for k, v in
                                     (("size", size), ("repeats", repeats), ("seed", seed), ("real_pool", len(real))))
    rng = np.random.default_rng(seed)
    gen_values, null_values = [], []
    for _ in range(repeats):
        order = rng.permutation(len(real))
        a, b = order[:size], order[size:2 * size]
        g = rng.permutation(len(generated))[:size]
        real_a = _take(real, a)
        gen_values.append(_call(metric_fn, real_a, _take(generated, g), _take(labels, g)))
        if not reuse:
            null_values.append(_call(metric_fn, real_a, _take(real, b), _take(real_labels, b)))
    return {"size": size, "repeats": repeats, "seed": seed, "real_pool": len(real), "generated_pool": len(generated),
            "generated": summarize(gen_values), "null": dict(null["null"]) if reuse else summarize(null_values)}


def format_share(value: float | None, n: int | None, digits: int = 4) -> str:
    """A stored share as ``83.3% (100/120, 95% CI 75.7-88.9%)`` when ``n`` fits it
    (:func:`proportion_from_share`), else the bare value (``digits`` significant digits)."""
    p = proportion_from_share(value, n) if value is not None and n else None
    return str(p) if p else ("" if value is None else f"{value:.{digits}g}")


def format_mean_sd(summary: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.512 ± 0.021"`` of one metric's ``{"mean", "sd"}`` (empty for ``None``)."""
    if not summary:
        return ""
    return f"{summary['mean']:.{digits}g} ± {summary['sd']:.2g}"


def difference_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the difference of two shares ``k1/n1 - k2/n2`` (Newcombe 1998, method 10: the
    two Wilson intervals of :func:`proportion_interval` combined; it stays sensible at shares near 0 or 1,
    where a normal approximation breaks down). Used for equivalence claims: two settings are equivalent
    within a margin stated in advance when this whole interval lies inside ``[-margin, margin]``; a
    non-significant test alone is not evidence of equivalence."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = proportion_interval(k1, n1, confidence), proportion_interval(k2, n2, confidence)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def paired_comparison(hits_a: Any, hits_b: Any) -> dict[str, Any]:
    """Two judges' verdicts, or one judge's on two versions, of the **same** items: boolean ``hits_a [n]`` and
    ``hits_b [n]``. Unpaired intervals (:func:`difference_interval`) waste the pairing: when two versions of
    500 clips differ on a dozen, a one-clip difference in shares is decided by those dozen alone.

    Returns ``{"n", "a_only", "b_only", "difference", "p_value"}``: the items right only under ``a`` and only
    under ``b`` (the discordant pairs), the difference of the shares ``(a_only - b_only) / n``, and the exact
    McNemar test's two-sided p-value (a binomial test of ``a_only`` among the discordant pairs at 1/2, scipy's
    ``binomtest``; 1 when there is none)."""
    a = np.asarray(hits_a, dtype=bool).reshape(-1)
    b = np.asarray(hits_b, dtype=bool).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a paired comparison needs two equal, non-empty sets of verdicts, got {a.size} and {b.size}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {"n": int(a.size), "a_only": a_only, "b_only": b_only, "difference": (a_only - b_only) / a.size,
            "p_value": p}


__all__: Sequence[str] = ["Proportion", "difference_interval", "equal_set_size", "format_mean_sd", "format_share",
                          "means", "paired_comparison", "proportion", "proportion_from_share", "proportion_interval",
                          "repeated_set_metrics", "summarize"]
