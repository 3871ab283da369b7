"""Class-conditional samples judged by the independent classifier and by the modality's own metrics.

One implementation shared by ``benchmarks/generation.py`` and ``mmldm ablate``. Class accuracy comes
with its n and Wilson 95% interval; the modality's set metrics (1-NNA, COV, MMD, ...) are measured at
equal sizes over repeated subsets, beside the same metrics of two disjoint real subsets (what a perfect
generator scores at that size; :func:`.stats.repeated_set_metrics`).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from .classifier import FeatureClassifier, classifier_metrics, per_class_accuracy
from .stats import equal_set_size, means, repeated_set_metrics

#: Random subsets each set metric is measured on (and its real-vs-real null).
SET_REPEATS = 5


def modality_set_metrics(modality: Any, real: Tensor, generated: Tensor, labels: Tensor | None = None, *,
                         real_labels: Tensor | None = None, repeats: int = SET_REPEATS, seed: int = 0,
                         null: dict[str, Any] | None = None) -> dict[str, Any]:
    """``modality.generation_metrics`` at equal sizes, repeated, with its real-vs-real null.

    The size rule: every generated item, capped at half the real pool so that the null's two real
    subsets are disjoint, ``size = min(len(generated), len(real) // 2)``
    (:func:`.stats.equal_set_size`). ``null``: an earlier result on the same ``real`` to reuse its null.

    Returns:
        :func:`.stats.repeated_set_metrics`'s result: ``{"size", "repeats", "seed", "real_pool",
        "generated_pool", "generated": {metric: {"mean", "sd", "values"}}, "null": {...}}``.
    """
    size = equal_set_size(len(generated), len(real))
    return repeated_set_metrics(modality.generation_metrics, real, generated, size, repeats, seed, labels,
                                real_labels, null)


def judge_samples(pipe: Any, classifier: FeatureClassifier, real: Tensor, per_class: int, *, sampler: str = "dpmpp_2m",
                  steps: int = 25, guidance: float = 3.0, seed: int = 0, real_labels: Tensor | None = None,
                  null: dict[str, Any] | None = None) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Draw ``per_class`` samples of every class of ``pipe`` (a class-conditional
    :class:`~mmldm.pipeline.LatentDiffusion`) from one seed and measure them.

    Args:
        pipe: the model; ``pipe.modality.num_classes`` classes, each sampled ``per_class`` times in turn.
        classifier: an independent classifier trained on the real data (:func:`.classifier.train_classifier`).
        real: held-out samples ``[N, C, *s]`` the generated set is compared with.
        sampler, steps, guidance, seed: as in ``LatentDiffusion.sample``; ``seed`` also draws the set
            metrics' subsets.
        real_labels: classes of ``real`` (optional), handed to ``generation_metrics`` in the null.
        null: an earlier ``metrics["modality_sets"]`` on the same ``real`` whose null is reused
            (the null depends on ``real``, the size and the seed only, not on the samples).

    Returns:
        ``(metrics, samples [K*per_class, C, *s], labels [K*per_class])``; the metrics hold
        ``class_accuracy`` (the share the classifier labels as its conditioning class; it judges
        ``pipe.modality.finalize(samples)``, the form the modality delivers, e.g. 0/1 voxel occupancy)
        with ``class_accuracy_n`` and ``class_accuracy_ci`` (Wilson 95% ``[low, high]``),
        ``frechet_distance`` (classifier features, against ``real``), ``per_class_accuracy``,
        ``sampling_seconds``, ``modality_sets`` (:func:`modality_set_metrics`: ``generation_metrics``,
        e.g. 1-NNA for voxels, at equal sizes over repeats, with the real-vs-real null) and ``modality``
        (the generated means of ``modality_sets``, the flat form earlier readers use).
    """
    classes = pipe.modality.num_classes
    if classes < 2:
        raise ValueError(f"judging needs a class-conditional model of >= 2 classes; modality={pipe.modality.name} "
                         f"has {classes}")
    labels = torch.arange(classes).repeat_interleave(per_class)
    start = time.perf_counter()
    samples = pipe.sample(len(labels), cond={"class": labels}, steps=steps, sampler=sampler, guidance=guidance,
                          seed=seed, progress=False)
    seconds = time.perf_counter() - start
    # the classifier sees samples in the form the modality delivers them (e.g. 0/1 voxel occupancy)
    final = pipe.modality.finalize(samples)
    metrics: dict[str, Any] = classifier_metrics(classifier, pipe.modality.finalize(real), final, labels)
    metrics["per_class_accuracy"] = per_class_accuracy(classifier, final, labels)
    metrics["sampling_seconds"] = round(seconds, 1)
    metrics["modality_sets"] = modality_set_metrics(pipe.modality, real, samples, labels, real_labels=real_labels,
                                                    seed=seed, null=null)
    metrics["modality"] = means(metrics["modality_sets"]["generated"])
    return metrics, samples, labels
