"""Label-index helpers shared by the trainer and its families: splits, folds, class weights, priors."""

from __future__ import annotations

import numpy as np


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about `fraction` of each class to val, keeping >= 1 of each class in train."""
    rng = np.random.default_rng([seed, 0x5EED])
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx))) if len(idx) >= 2 else 0
        k = min(k, len(idx) - 1)
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per example: each class dealt round-robin over the k folds, in seeded order."""
    rng = np.random.default_rng([seed, 0xF01D])
    folds = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # spread the remainders of small classes over different folds
    return folds


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class weights, "balanced" = n / (C_present * n_c) (mean sample weight 1)."""
    if mode == "none":
        return np.ones(n_classes, np.float32)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)


def log_prior(y: np.ndarray, C: int) -> np.ndarray:
    counts = np.bincount(y, minlength=C).astype(np.float64) + 0.5  # +0.5: no log(0) for a class absent here
    return np.log(counts / counts.sum())
