"""Statistics of quality figures: Wilson intervals of shares, equal-size repeated set metrics with a
real-vs-real null, and the voxel null reference built from them."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from mmldm.evaluation.stats import (
    Proportion, equal_set_size, format_mean_sd, format_share, means, proportion, proportion_from_share,
    proportion_interval, repeated_set_metrics, summarize,
)


# ---------------------------------------------------------------------------- shares
def test_wilson_interval_matches_known_values():
    low, high = proportion_interval(100, 120)
    assert (low, high) == pytest.approx((0.7565, 0.8894), abs=1e-4)
    # Wilson 1927 by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, p, n = 1.959964, 100 / 120, 120
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (low, high) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)), abs=1e-6)
    assert proportion_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert proportion_interval(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)
    for k, n in ((0, 1), (1, 1), (0, 1000), (1000, 1000), (3, 7)):
        lo, hi = proportion_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert proportion_interval(50, 100, confidence=0.99)[0] < proportion_interval(50, 100)[0]


def test_a_proportion_prints_its_count_and_interval():
    p = proportion(100, 120)
    assert isinstance(p, Proportion) and (p.k, p.n) == (100, 120) and p.value == pytest.approx(0.8333, abs=1e-4)
    assert str(p) == "83.3% (100/120, 95% CI 75.7-88.9%)"
    assert set(p.as_dict()) == {"k", "n", "value", "low", "high", "confidence"}
    for k, n in ((-1, 5), (6, 5), (0, 0)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            proportion_interval(k, n)


def test_a_stored_share_gives_back_its_count_only_when_n_fits():
    assert proportion_from_share(0.8450000286102295, 200).k == 169  # a float32 share of 169/200
    assert proportion_from_share(0.99, 10) is None  # 9.9 of 10 items: 10 was not the denominator
    assert proportion_from_share(float("nan"), 10) is None
    assert format_share(0.5416666865348816, 120) == "54.2% (65/120, 95% CI 45.3-62.8%)"
    assert format_share(0.99, 10) == "0.99" and format_share(0.99, None) == "0.99"


# ---------------------------------------------------------------------------- set metrics
class Recorder:
    """A toy set metric that records the sets it saw: items are integers, real ones < 1000."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def __call__(self, real, generated, labels=None):
        self.calls.append((np.asarray(real), np.asarray(generated), None if labels is None else np.asarray(labels)))
        return {"gap": float(np.mean(generated) - np.mean(real)), "size": float(len(generated))}


REAL, GEN = np.arange(100), np.arange(1000, 1030)


def test_each_repeat_compares_equal_size_sets_and_a_disjoint_real_null():
    metric = Recorder()
    out = repeated_set_metrics(metric, REAL, GEN, size=30, repeats=4, seed=0)
    assert (out["size"], out["repeats"], out["real_pool"], out["generated_pool"]) == (30, 4, 100, 30)
    assert len(metric.calls) == 8  # per repeat: generated vs real, then real vs real
    for (real_a, gen, _), (null_a, null_b, _) in zip(metric.calls[::2], metric.calls[1::2]):
        assert len(real_a) == len(gen) == len(null_a) == len(null_b) == 30
        assert np.array_equal(real_a, null_a)  # one reference set per repeat: the comparisons differ in one set
        assert set(gen) == set(GEN) and (null_b < 1000).all()
        assert not set(null_a) & set(null_b) and len(set(null_b)) == 30
    assert len({tuple(c[0]) for c in metric.calls[::2]}) == 4  # new real subsets each repeat
    assert out["generated"]["size"] == {"mean": 30.0, "sd": 0.0, "values": [30.0] * 4}
    assert out["generated"]["gap"]["mean"] > 900 and abs(out["null"]["gap"]["mean"]) < 30
    assert means(out["generated"]) == {"gap": out["generated"]["gap"]["mean"], "size": 30.0}


def test_repeats_are_reproducible_with_the_seed():
    a = repeated_set_metrics(Recorder(), REAL, GEN, 20, seed=3)
    assert a == repeated_set_metrics(Recorder(), REAL, GEN, 20, seed=3)
    assert a["null"]["gap"]["values"] != repeated_set_metrics(Recorder(), REAL, GEN, 20, seed=4)["null"]["gap"]["values"]


def test_too_small_pools_are_refused_with_the_sizes():
    with pytest.raises(ValueError, match=r"at size 60 need >= 120 real items .* got 100 real and 30 generated: "
                                         r"pass size <= 30"):
        repeated_set_metrics(Recorder(), REAL, GEN, 60)
    with pytest.raises(ValueError, match="size >= 1"):
        repeated_set_metrics(Recorder(), REAL, GEN, 0)
    assert equal_set_size(120, 200) == 100 and equal_set_size(16, 100) == 16 and equal_set_size(16, 16) == 8


def test_labels_follow_their_items_and_a_null_is_reused():
    metric = Recorder()
    first = repeated_set_metrics(metric, REAL, GEN, 10, repeats=3, labels=GEN % 7, real_labels=REAL % 7)
    for _, second, labels in metric.calls:
        assert np.array_equal(labels, second % 7)
    metric = Recorder()
    again = repeated_set_metrics(metric, REAL, GEN + 5, 10, repeats=3, null=first)
    assert len(metric.calls) == 3 and again["null"] == first["null"]  # only the generated comparisons ran
    assert again["generated"] != first["generated"]
    metric = Recorder()
    repeated_set_metrics(metric, REAL, GEN, 10, repeats=3, seed=1, null=first)  # another seed: measured anew
    assert len(metric.calls) == 6


def test_summaries_skip_nan_and_format():
    s = summarize([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}])
    assert s["a"]["mean"] == 2.0 and s["a"]["sd"] == pytest.approx(math.sqrt(2))
    assert s["b"]["mean"] == 2.0 and s["b"]["sd"] == 0.0 and math.isnan(s["b"]["values"][0])
    assert format_mean_sd({"mean": 0.5123, "sd": 0.0213}) == "0.512 ± 0.021" and format_mean_sd(None) == ""


# ---------------------------------------------------------------------------- voxel set metrics
def balls(n: int, seed: int, side: int = 10) -> np.ndarray:
    """Boolean grids ``[n, side^3]`` of one ball each, centre and radius drawn at random."""
    rng = np.random.default_rng(seed)
    axis = np.arange(side)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    grids = []
    for _ in range(n):
        c, r = rng.uniform(3, side - 4, 3), rng.uniform(1.5, 3.5)
        grids.append((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r)
    return np.stack(grids)


def test_voxel_null_1nna_is_near_one_half():
    from mmldm_voxel.metrics import generation_metrics

    metric = functools.partial(generation_metrics, points=64)
    real = balls(48, seed=0)
    cubes = np.zeros_like(real[:24])
    cubes[:, 2:8, 2:8, 2:8] = True
    out = repeated_set_metrics(metric, real, cubes, size=24, repeats=4)
    assert set(out["null"]) == {"1nna_cd", "cov_cd", "mmd_cd", "jsd"}
    assert abs(out["null"]["1nna_cd"]["mean"] - 0.5) < 0.15
    assert out["generated"]["1nna_cd"]["mean"] > 0.9  # one cube for every item: told apart


def test_null_reference_assembles_the_voxel_metrics_exactly():
    """benchmarks.null_reference computes each Chamfer distance once and assembles the set metrics from the
    matrix; on the same surface points it gives generation_metrics' values."""
    from mmldm_voxel.metrics import chamfer_matrix, generation_metrics, surface_points

    from benchmarks.null_reference import parse_size, set_metrics_from_distances

    real, gen = balls(7, seed=1), balls(5, seed=2)
    pr = [surface_points(g, 64, seed=i) for i, g in enumerate(real)]
    pg = [surface_points(g, 64, seed=i) for i, g in enumerate(gen)]
    d = chamfer_matrix(pr + pg, pr + pg)
    mine = set_metrics_from_distances(d[:7, :7], d[7:, 7:], d[:7, 7:], real, gen)
    assert mine == pytest.approx(generation_metrics(real, gen, points=64))
    assert parse_size("120x200") == (120, 200)


def test_difference_interval_matches_newcombes_worked_example():
    from mmldm.evaluation.stats import difference_interval

    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    low, high = difference_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    low, high = difference_interval(1000, 1000, 1000, 1000)  # identical perfect scores: an interval around 0
    assert low < 0 < high and -0.01 < low


def test_paired_comparison_counts_discordant_items_and_gives_the_exact_mcnemar_p():
    from mmldm.evaluation.stats import paired_comparison

    # 21 items: 9 right under both, 9 wrong under both, 2 right only under a (items 1 and 20), 1 only under b (3)
    a = np.array([1, 1, 0, 0] + [1] * 8 + [0] * 8 + [1], dtype=bool)
    b = np.array([1, 0, 0, 1] + [1] * 8 + [0] * 8 + [0], dtype=bool)
    r = paired_comparison(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (21, 2, 1)
    assert r["difference"] == pytest.approx(1 / 21)
    assert r["p_value"] == pytest.approx(1.0)  # binomial(2 of 3, 1/2), two-sided: 1
    many = paired_comparison(np.array([1] + [0] * 8, dtype=bool), np.array([0] + [1] * 8, dtype=bool))
    assert (many["a_only"], many["b_only"]) == (1, 8)
    assert many["p_value"] == pytest.approx(2 * (1 + 9) / 2**9)  # exact: 2 P(X <= 1), X ~ Bin(9, 1/2)
    assert paired_comparison([True, False], [True, False])["p_value"] == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_comparison([True], [True, False])
