"""The independent evaluation classifier and its metrics, over dims 1, 2, 3."""

from __future__ import annotations

import pytest
import torch

from mmldm.evaluation.classifier import (
    FeatureClassifier, accuracy, classifier_metrics, per_class_accuracy, train_classifier,
)


class Blobs(torch.utils.data.Dataset):
    """Class 0: noise around +1, class 1: noise around -1."""

    def __init__(self, n: int, dims: int, side: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = 0.3 * torch.randn(n, 1, *([side] * dims), generator=g)
        self.x += (1.0 - 2.0 * self.y.float()).view(n, *([1] * (dims + 1)))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "cond": {"class": int(self.y[i])}}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_classifier_shapes(dims):
    model = FeatureClassifier(dims, 2, 5, width=8, levels=2, feature_dim=16)
    x = torch.randn(3, 2, *([8] * dims))
    assert model(x).shape == (3, 5)
    assert model.features(x).shape == (3, 16)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_trained_classifier_separates_classes_and_metrics_follow(dims):
    train, val = Blobs(64, dims, seed=0), Blobs(32, dims, seed=1)
    model, report = train_classifier(train, val, dims, 1, 2, epochs=10, batch_size=16, lr=3e-3, augment_shift=0,
                                     width=8, levels=2, feature_dim=16)
    assert report["val_accuracy"] == 1.0 and report["train_accuracy"] == 1.0
    assert not model.training
    m = classifier_metrics(model, val.x, val.x, val.y)
    assert m["class_accuracy"] == 1.0
    assert m["class_accuracy_n"] == 32 and m["class_accuracy_ci"] == pytest.approx([0.8928, 1.0], abs=1e-4)
    assert (report["val_accuracy_n"], report["val_accuracy_ci"][1]) == (32, 1.0)
    assert m["frechet_distance"] == pytest.approx(0.0, abs=1e-3)
    wrong = classifier_metrics(model, val.x, val.x, 1 - val.y)
    assert wrong["class_accuracy"] == 0.0
    # samples of one class only: far from the real mixture
    ones = val.x[val.y == 1]
    assert classifier_metrics(model, val.x, ones)["frechet_distance"] > 10 * max(m["frechet_distance"], 1e-3)
    assert per_class_accuracy(model, val.x, val.y) == {0: 1.0, 1: 1.0}
    assert accuracy(model, val.x, val.y) == 1.0


def test_unlabelled_data_is_refused_with_the_item():
    data = [{"x": torch.zeros(1, 4), "cond": {}}]
    with pytest.raises(ValueError, match=r"item 0 .* no class label"):
        train_classifier(data, data, 1, 1, 2, epochs=1)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        FeatureClassifier(2, 1, 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_symmetry_augmentation_draws_every_flip_and_axis_order(dims):
    """Each draw is a symmetry of the grid (axes of equal length permuted, axes flipped); over many draws
    all 2**dims * dims! of them appear, and each keeps the content."""
    import itertools
    import math

    from mmldm.evaluation.classifier import _random_symmetry

    x = torch.arange(3**dims, dtype=torch.float).view(1, 1, *[3] * dims)
    group = {}
    for order in itertools.permutations(range(2, 2 + dims)):
        for flips in itertools.product([False, True], repeat=dims):
            y = x.permute(0, 1, *order).flip([a for a, f in zip(range(2, 2 + dims), flips) if f])
            group[tuple(y.flatten().tolist())] = 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(60 * len(group)):
        key = tuple(_random_symmetry(x, gen).flatten().tolist())
        assert key in group
        group[key] += 1
    assert len(group) == 2**dims * math.factorial(dims) and min(group.values()) > 0
    # a non-cubic grid only permutes axes of equal length
    flat = torch.randn(2, 1, 4, 4, 2)
    assert all(_random_symmetry(flat, gen).shape == flat.shape for _ in range(20))


def test_classifier_trains_with_symmetry_augmentation():
    train, val = Blobs(64, 3, seed=0), Blobs(32, 3, seed=1)
    _, report = train_classifier(train, val, 3, 1, 2, epochs=4, batch_size=16, lr=3e-3, augment_symmetries=True,
                                 width=8, levels=2, feature_dim=16)
    assert report["val_accuracy"] == 1.0


class ToyModality:
    """Two classes of blobs; its set metric is the gap between the sets' means (0 for real vs real)."""

    name, num_classes = "toy", 2

    def finalize(self, x):
        return x

    def generation_metrics(self, real, generated, labels=None):
        return {"mean_gap": float((generated.mean() - real.mean()).abs())}


class ToyPipe:
    """A collapsed model: whatever the class, its samples are blobs of class 0 (around +1)."""

    modality = ToyModality()

    def sample(self, n, cond, seed, **_):
        return Blobs(2 * n, 1, seed=seed + 7).x[::2]


def test_judged_samples_carry_counts_intervals_and_a_real_null():
    from mmldm.evaluation.generation import judge_samples

    torch.manual_seed(0)
    real = Blobs(400, 1, seed=1).x
    classifier = FeatureClassifier(1, 1, 2, width=4, levels=1, feature_dim=8)
    m, samples, labels = judge_samples(ToyPipe(), classifier, real, per_class=15)
    assert len(samples) == len(labels) == m["class_accuracy_n"] == 30
    low, high = m["class_accuracy_ci"]
    assert low <= m["class_accuracy"] <= high
    sets = m["modality_sets"]
    assert (sets["size"], sets["repeats"], sets["real_pool"], sets["generated_pool"]) == (30, 5, 400, 30)
    assert m["modality"] == {"mean_gap": sets["generated"]["mean_gap"]["mean"]}
    assert sets["null"]["mean_gap"]["mean"] < 0.5 < sets["generated"]["mean_gap"]["mean"]  # a collapsed model
    again, _, _ = judge_samples(ToyPipe(), classifier, real, per_class=15, null=sets)
    assert again["modality_sets"]["null"] == sets["null"]


def test_run_metrics_use_twice_the_samples_of_held_out_data_and_say_when_it_is_short():
    from mmldm.training.run import measure_sets

    val = Blobs(12, 1, seed=2)
    samples, labels = Blobs(4, 1, seed=3).x, torch.tensor([0, 1, 0, 1])
    out = measure_sets(ToyModality(), val, samples, labels)
    assert out["generation_sets"]["size"] == 4 and out["generation_sets"]["real_pool"] == 8
    assert out["generation"] == {"mean_gap": out["generation_sets"]["generated"]["mean_gap"]["mean"]}
    assert "generation_note" not in out
    short = measure_sets(ToyModality(), Blobs(6, 1, seed=2), samples, labels)
    assert short["generation_sets"]["size"] == 3
    assert "held-out set (6 items) holds two disjoint subsets of 3 at most" in short["generation_note"]
    single = measure_sets(ToyModality(), Blobs(1, 1, seed=2), samples, labels)
    assert "no real-vs-real null" in single["generation_note"] and "generation_sets" not in single
