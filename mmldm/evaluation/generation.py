"""Class-conditional samples judged by the independent classifier and by the modality's own metrics.

One implementation shared by ``benchmarks/generation.py`` and ``mmldm ablate``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from .classifier import FeatureClassifier, classifier_metrics, per_class_accuracy


def judge_samples(pipe: Any, classifier: FeatureClassifier, real: Tensor, per_class: int, *, sampler: str = "dpmpp_2m",
                  steps: int = 25, guidance: float = 3.0, seed: int = 0) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Draw ``per_class`` samples of every class of ``pipe`` (a class-conditional
    :class:`~mmldm.pipeline.LatentDiffusion`) from one seed and measure them.

    Args:
        pipe: the model; ``pipe.modality.num_classes`` classes, each sampled ``per_class`` times in turn.
        classifier: an independent classifier trained on the real data (:func:`.classifier.train_classifier`).
        real: held-out samples ``[N, C, *s]`` the generated set is compared with.
        sampler, steps, guidance, seed: as in ``LatentDiffusion.sample``.

    Returns:
        ``(metrics, samples [K*per_class, C, *s], labels [K*per_class])``; the metrics hold
        ``class_accuracy`` (the share the classifier labels as its conditioning class; it judges
        ``pipe.modality.finalize(samples)``, the form the modality delivers, e.g. 0/1 voxel occupancy),
        ``frechet_distance`` (classifier features, against ``real``), ``per_class_accuracy``,
        ``sampling_seconds`` and ``modality`` (``pipe.modality.generation_metrics``, e.g. 1-NNA for voxels).
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
    metrics["modality"] = pipe.modality.generation_metrics(real, samples, labels)
    return metrics, samples, labels
