"""The numpy trainer and model: narrow tests on synthetic clusters, one on real data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from heads.model import HeadModel
from heads.training.evaluation import classification_report, evaluate
from heads.training.fit import _fit, _scaler, stratified_folds, train_head
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


def test_training_is_seeded_and_reproducible():
    X, y = clusters({"a": 60, "b": 60, "c": 60})
    first = train_head(X, y, params=FAST, seed=3).model
    second = train_head(X, y, params=FAST, seed=3).model
    assert first.labels == second.labels == ["a", "b", "c"]
    for name in first.weights:
        assert np.array_equal(first.weights[name], second.weights[name]), name
    other = train_head(X, y, params=FAST, seed=4).model
    assert any(not np.array_equal(first.weights[n], other.weights[n]) for n in first.weights)


def test_learns_separable_clusters():
    X, y = clusters({"a": 80, "b": 80, "c": 80}, spread=1.2)
    Xt, yt = clusters({"a": 30, "b": 30, "c": 30}, spread=1.2, sample_seed=1)  # same centres, new points
    model = train_head(X, y, params=FAST).model
    assert evaluate(model, Xt, yt)["accuracy"] > 0.95
    proba = model.predict_proba(Xt)
    assert proba.shape == (90, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_class_weighting_helps_the_minority_class():
    # Heavily overlapping classes, 20:1 imbalance: unweighted training mostly ignores "rare".
    X, y = clusters({"common": 600, "rare": 30}, spread=6.0, seed=1)
    Xt, yt = clusters({"common": 300, "rare": 300}, spread=6.0, seed=1, sample_seed=1)
    recall = {}
    for mode in ("balanced", "none"):
        params = FAST.model_copy(update={"class_weighting": mode, "prior_adjustment": 0.0})
        report = evaluate(train_head(X, y, params=params).model, Xt, yt)
        recall[mode] = report["per_class"]["rare"]["recall"]
    assert recall["balanced"] > recall["none"] + 0.05, recall


def test_evaluate_matches_hand_computed_metrics():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    # a: P=1, R=2/3, F1=0.8; b: P=1/2, R=1/2, F1=0.5; c: P=1/2, R=1, F1=2/3
    assert r["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_save_load_round_trip_is_exact(tmp_path):
    X, y = clusters({"x": 40, "y": 40})
    model = train_head(X, y, params=FAST).model
    path = model.save(tmp_path / "weights.npz")
    loaded = HeadModel.load(path)
    assert loaded.labels == model.labels and loaded.head_type == model.head_type
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_logreg_head_type_trains_and_serves():
    X, y = clusters({"a": 50, "b": 50})
    model = train_head(X, y, params=FAST.model_copy(update={"head_type": "logreg"})).model
    assert model.head_type == "logreg" and evaluate(model, X, y)["accuracy"] > 0.9


@pytest.mark.parametrize("overrides", [{}, {"linear_skip": True, "activation": "gelu"}, {"head_type": "logreg"},
                                       {"input_scaling": "standardize"}])
def test_served_model_matches_the_training_network(overrides):
    """Input scaling folded into the first layer, members split out: same probabilities as in training."""
    X, y = clusters({"a": 40, "b": 40, "c": 40})
    yi = np.array(["abc".index(v) for v in y])
    p = TrainParams(**overrides)
    mean, scale = _scaler(X, p.input_scaling)
    fit = _fit(p, ((X - mean) * scale).astype(np.float32), yi, 3, K=3, seed=0, epochs=2)
    model = fit.net.to_head(fit.state, ["a", "b", "c"], mean, scale, p, {})
    expected = fit.net.member_proba(((X - mean) * scale).astype(np.float32), fit.state).mean(axis=0)
    assert model.n_members == 3
    np.testing.assert_allclose(model.predict_proba(X), expected, atol=2e-6)


def test_validation_source_and_stratified_folds():
    X, y = clusters({"a": 30, "b": 10})
    assert train_head(X, y, params=FAST.model_copy(update={"cv_folds": 5})).val_source == "cv"
    result = train_head(X, y, params=FAST.model_copy(update={"cv_folds": 5, "cv_max_examples": 10}))
    assert result.val_source == "split" and result.n_val == 4  # 10 % of each class
    folds = stratified_folds(np.array([0] * 30 + [1] * 10), 5, seed=0)
    assert [int((folds == k).sum()) for k in range(5)] == [8] * 5
    assert all(int(((folds == k) & (np.arange(40) >= 30)).sum()) == 2 for k in range(5))


def test_model_module_imports_neither_tensorflow_nor_sklearn():
    code = ("import sys, heads.model; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'sklearn', 'torch')]; assert not bad, bad")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import heads.model, sys; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
