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
