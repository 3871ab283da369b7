"""An independent N-d classifier for judging generated samples of any modality.

Generation quality in mmldm is measured as in the image literature (FID,
classification accuracy score), but in the feature space of a small
classifier trained on the modality's own real data, so the same measure
works for images (dims 2), spectrograms (dims 1 or 2) and voxel grids
(dims 3):

* ``class_accuracy``: the share of samples generated for class ``k`` that the
  classifier labels ``k`` (how well conditioning and guidance work);
* ``frechet_distance``: the Frechet distance between Gaussians fitted to the
  classifier's penultimate features of real and generated samples.

The classifier never sees generated data and is trained apart from the
diffusion model, so the two cannot collude. Its held-out accuracy is
reported with every figure it produces: a weak classifier makes weak
judgments.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..nn.layers import check_dims, conv_nd
from .frechet import frechet_distance
from .stats import proportion


class FeatureClassifier(nn.Module):
    """A plain N-d conv net: ``levels`` stages of two 3-convs (BatchNorm, SiLU), stride-2 between them,
    global average pooling, a ``feature_dim`` embedding (the features of the Frechet distance) and
    a linear head.

    Args:
        dims (`int`): spatial dims of a sample (1, 2 or 3).
        in_channels (`int`): ``C`` of a sample.
        num_classes (`int`): number of labels.
        width (`int`): channels of the first stage; doubled per stage.
        levels (`int`): number of stages.
        feature_dim (`int`): size of the feature vector.
        dropout (`float`): dropout before the head.
    """

    def __init__(self, dims: int, in_channels: int, num_classes: int, width: int = 32, levels: int = 3,
                 feature_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.dims = check_dims(dims)
        if num_classes < 2:
            raise ValueError(f"FeatureClassifier needs num_classes >= 2, got {num_classes}")
        self.config = {"dims": dims, "in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "levels": levels, "feature_dim": feature_dim, "dropout": dropout}
        # BatchNorm, not the GroupNorm of the generative networks: per-sample normalization would erase
        # global intensity, which can be what tells classes apart
        norm = getattr(nn, f"BatchNorm{dims}d")
        layers: list[nn.Module] = []
        ch_in = in_channels
        for level in range(levels):
            ch = width * 2**level
            stride = 1 if level == 0 else 2
            layers += [conv_nd(dims, ch_in, ch, 3, stride=stride, padding=1), norm(ch), nn.SiLU(),
                       conv_nd(dims, ch, ch, 3, padding=1), norm(ch), nn.SiLU()]
            ch_in = ch
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(ch_in, feature_dim), nn.SiLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[B, feature_dim]`` of ``x [B, C, *s]``."""
        h = self.body(x)
        return self.embed(h.flatten(2).mean(-1))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(x))


def _stack(dataset: Any, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """All ``x`` and ``cond["class"]`` of a dataset of ``{"x", "cond"}`` items."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    xs, ys = [], []
    for i in range(n):
        item = dataset[i]
        cond = item.get("cond", {})
        if "class" not in cond:
            raise ValueError(f"item {i} of the dataset has no class label (cond keys: {sorted(cond)}); "
                             "the evaluation classifier needs labelled data")
        xs.append(item["x"])
        ys.append(int(cond["class"]))
    return torch.stack(xs).float(), torch.tensor(ys, dtype=torch.long)


@torch.no_grad()
def predict(model: FeatureClassifier, x: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Logits and features of ``x`` in batches (the model in eval mode)."""
    model.eval()
    logits, feats = [], []
    for chunk in x.split(batch_size):
        f = model.features(chunk.float())
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(logits), torch.cat(feats)


def accuracy(model: FeatureClassifier, x: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Share of ``x`` the classifier labels as ``labels``."""
    logits, _ = predict(model, x, batch_size)
    return float((logits.argmax(-1) == labels).float().mean())


def accuracy_stats(hits: Tensor, key: str) -> dict[str, Any]:
    """``{key: share, key_n: n, key_ci: [low, high]}`` of boolean ``hits [n]`` (Wilson 95% interval,
    :func:`.stats.proportion`): a share is reported with its n and interval, never alone."""
    p = proportion(int(hits.sum()), len(hits))
    return {key: float(hits.float().mean()), f"{key}_n": p.n, f"{key}_ci": [p.low, p.high]}


def train_classifier(
    train: Any, val: Any, dims: int, channels: int, num_classes: int, epochs: int = 8, batch_size: int = 64,
    lr: float = 2e-3, seed: int = 0, augment_shift: int = 2, augment_symmetries: bool = False,
    log_every: float = 30.0, **model_options: Any,
) -> tuple[FeatureClassifier, dict[str, float]]:
    """Train a :class:`FeatureClassifier` on a labelled dataset and measure it on ``val``.

    A plain loop rather than a Lightning run: the network is tiny, trains in
    about a minute, and is a measuring instrument, not a model users keep.
    AdamW with a one-cycle schedule (torch's ``OneCycleLR``); random circular
    shifts of up to ``augment_shift`` cells per spatial axis as augmentation, and
    with ``augment_symmetries`` a random flip of each axis and a random order of the
    equal-length axes per batch (the symmetries of the cube for voxel grids: right
    for data whose classes do not depend on orientation, wrong for digits).

    Returns:
        the model (eval mode) and ``{"train_accuracy", "val_accuracy", "val_accuracy_n", "val_accuracy_ci",
        "seconds", "epochs"}`` (``val_accuracy_ci``: Wilson 95% interval over the ``val_accuracy_n`` items).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _stack(train)
    xv, yv = _stack(val)
    model = FeatureClassifier(dims, channels, num_classes, **model_options)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = last_log = time.perf_counter()
    axes = tuple(range(2, 2 + dims))
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = x[idx]
            if augment_shift > 0:
                shifts = torch.randint(-augment_shift, augment_shift + 1, (dims,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=shifts, dims=axes)
            if augment_symmetries:
                xb = _random_symmetry(xb, gen)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if time.perf_counter() - last_log > log_every:
                last_log = time.perf_counter()
                print(f"classifier: epoch {epoch + 1}/{epochs} step {i + 1}/{steps_per_epoch} loss {loss.item():.4f}",
                      flush=True)
    model.eval()
    logits, _ = predict(model, xv)
    report = {"train_accuracy": accuracy(model, x, y), **accuracy_stats(logits.argmax(-1) == yv, "val_accuracy"),
              "seconds": round(time.perf_counter() - start, 1), "epochs": epochs}
    return model, report


def _random_symmetry(x: Tensor, gen: torch.Generator) -> Tensor:
    """``x [B, C, *s]`` under one random symmetry of its grid: axes of equal length permuted, each axis
    flipped with probability 1/2 (for a cube, one of the 48 symmetries of the cube)."""
    spatial = list(range(2, x.ndim))
    order = list(spatial)
    for size in set(x.shape[2:]):
        same = [a for a in spatial if x.shape[a] == size]
        for a, b in zip(same, [same[i] for i in torch.randperm(len(same), generator=gen).tolist()]):
            order[a - 2] = b
    x = x.permute(0, 1, *order)
    flips = [a for a in spatial if torch.rand((), generator=gen) < 0.5]
    return x.flip(flips) if flips else x


def classifier_metrics(model: FeatureClassifier, real: Tensor, generated: Tensor,
                       labels: Tensor | None = None, batch_size: int = 256) -> dict[str, Any]:
    """``frechet_distance`` between real and generated features and, given the labels the samples were
    generated for, ``class_accuracy`` (the share the classifier labels as their conditioning class) with
    ``class_accuracy_n`` (the samples judged) and ``class_accuracy_ci`` (Wilson 95% interval ``[low, high]``)."""
    if len(real) < 2 or len(generated) < 2:
        raise ValueError(f"the Frechet distance needs >= 2 real and generated samples, got {len(real)} and {len(generated)}")
    _, f_real = predict(model, real, batch_size)
    logits, f_gen = predict(model, generated, batch_size)
    out: dict[str, Any] = {"frechet_distance": frechet_distance(f_real, f_gen)}
    if labels is not None:
        out.update(accuracy_stats(logits.argmax(-1) == labels.to(logits.device), "class_accuracy"))
    return out


def per_class_accuracy(model: FeatureClassifier, generated: Tensor, labels: Tensor,
                       batch_size: int = 256) -> Mapping[int, float]:
    """``{class: share labelled as that class}`` over the classes present in ``labels``."""
    logits, _ = predict(model, generated, batch_size)
    hit = logits.argmax(-1) == labels
    return {int(k): float(hit[labels == k].float().mean()) for k in labels.unique()}


__all__: Sequence[str] = ["FeatureClassifier", "accuracy", "accuracy_stats", "classifier_metrics", "per_class_accuracy",
                          "predict", "train_classifier"]
