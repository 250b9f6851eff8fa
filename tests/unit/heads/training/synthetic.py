"""Synthetic embeddings for the trainer's tests: clusters, a linear truth, an XOR truth."""

from __future__ import annotations

import numpy as np

from heads.training.params import TrainParams


FAST = TrainParams(epochs_max=15, cv_folds=0, search_grid={"dropout": [0.3]})


def clusters(n_per_class: dict[str, int], dim: int = 384, spread: float = 0.9, seed: int = 0, sample_seed: int = 0):
    """Unit-norm points around one centre per class; the same `seed` gives the same centres."""
    centers = np.random.default_rng(seed).normal(size=(len(n_per_class), dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, sample_seed])
    X, y = [], []
    for center, (label, n) in zip(centers, sorted(n_per_class.items())):
        pts = center + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
        X.append(pts / np.linalg.norm(pts, axis=1, keepdims=True))
        y += [label] * n
    return np.concatenate(X).astype(np.float32), y


def linear_problem(n: int, dim: int = 64, classes: int = 3, seed: int = 0, sample_seed: int = 0):
    """Gaussian points labelled by a fixed random linear map: the truth is linear, and with
    few examples per dimension a 128-unit MLP has room to overfit."""
    W = np.random.default_rng(seed).normal(size=(dim, classes))
    X = np.random.default_rng([seed, sample_seed]).normal(size=(n, dim)).astype(np.float32)
    return X, [f"c{k}" for k in (X @ W).argmax(axis=1)]


def xor_problem(n: int, dim: int = 32, seed: int = 0):
    """The label is the sign of x0 * x1: no linear model beats chance, an MLP learns it."""
    X = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return X, ["same" if v > 0 else "diff" for v in X[:, 0] * X[:, 1]]
