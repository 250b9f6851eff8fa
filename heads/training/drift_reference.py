"""Build a head's `DriftReference` at training time (what serving compares production with)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from heads.drift import (CONFIDENCE_EDGES, MAX_WINDOW, SIMILARITY_LEVELS, DriftReference, SamplingNoise,
                         nearest_centroid_similarity, unit_rows)


def build_reference(X: np.ndarray, y: Sequence[str], labels: Sequence[str], held_out_proba: np.ndarray | None,
                    *, confidence_source: str) -> DriftReference:
    """X, y: every text the final model was fitted on (train, plus val when given).
    held_out_proba: [n, C] probabilities of predictions on texts the scoring model did not train on
    (see TrainResult.val_proba); None leaves the confidence reference empty (mean NaN)."""
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    yi = np.array([index[str(v)] for v in y], np.int64)
    prior = np.bincount(yi, minlength=len(labels)).astype(np.float64)
    prior /= prior.sum()
    units = unit_rows(X)
    sums = np.zeros((len(labels), units.shape[1]), np.float64)
    np.add.at(sums, yi, units)
    centroids = unit_rows(sums).astype(np.float32)  # mean direction of each class
    sims = nearest_centroid_similarity(units, centroids)
    quantiles = np.percentile(sims.astype(np.float64), SIMILARITY_LEVELS)
    if held_out_proba is not None and len(held_out_proba):
        top = np.asarray(held_out_proba, np.float64).max(axis=1)
        counts, _ = np.histogram(top, bins=CONFIDENCE_EDGES)
        mean = float(top.mean())
    else:
        counts, mean = np.zeros(len(CONFIDENCE_EDGES) - 1, np.int64), float("nan")
    meta = {"confidence_source": confidence_source, "n_train": int(len(yi)),
            "n_confidence": int(counts.sum())}
    # Any window a config may set, at the density serving used to simulate for a 1000-text window.
    noise = SamplingNoise(prior, MAX_WINDOW, points=48)
    return DriftReference(labels, prior, counts, mean, centroids, quantiles, meta, noise.sizes, noise.noise)
