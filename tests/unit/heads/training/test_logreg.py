"""The logreg family: scikit-learn's LogisticRegression, exactly, and served with the scaling and shift folded in."""

from __future__ import annotations

import numpy as np
import pytest

from heads.training import logreg
from heads.training.fit import train_head
from heads.training.mlp import scaler
from heads.training.params import TrainParams
from tests.unit.heads.training.synthetic import clusters


def test_logreg_family_matches_scikit_learn():
    """Same objective as LogisticRegression(C): on the scaled inputs C is rescaled by scale^2."""
    sklearn_lr = pytest.importorskip("sklearn.linear_model")

    X, y = clusters({"a": 60, "b": 60, "c": 60}, spread=3.0)
    yi = np.array(["abc".index(v) for v in y])
    ours = logreg.fit(X, yi, 3, np.ones(len(yi)), 10.0, max_iter=1000, tol=1e-6)
    ref = sklearn_lr.LogisticRegression(C=10.0, max_iter=5000, tol=1e-8).fit(X, yi)

    def objective(W, b):
        z = X.astype(np.float64) @ W + b
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -log_p[np.arange(len(yi)), yi].sum() + 0.5 / 10.0 * float((W ** 2).sum())

    assert objective(ours.W.astype(np.float64), ours.b) == pytest.approx(objective(ref.coef_.T, ref.intercept_),
                                                                         rel=1e-4)
    assert (ours.proba(X).argmax(axis=1) == ref.predict(X)).mean() >= 0.99


def test_default_candidate_is_exactly_logistic_regression_c10_on_train_plus_val():
    """On evenly weighted classes the logreg head at C=10 is the baseline itself, not an approximation."""
    sklearn_lr = pytest.importorskip("sklearn.linear_model")
    X, y = clusters({"a": 60, "b": 60, "c": 60}, spread=3.0)
    Xv, yv = clusters({"a": 20, "b": 20, "c": 20}, spread=3.0, sample_seed=1)
    result = train_head(X, y, Xv, yv, params=TrainParams(families=["logreg"], logreg_c_grid=[10.0]))
    ref = sklearn_lr.LogisticRegression(C=10, max_iter=2000).fit(np.concatenate([X, Xv]), y + yv)
    Xt, _ = clusters({"a": 30, "b": 30, "c": 30}, spread=3.0, sample_seed=2)
    assert result.model.labels == list(ref.classes_)
    np.testing.assert_allclose(result.model.predict_proba(Xt), ref.predict_proba(Xt), atol=1e-4)
    assert result.model.predict(Xt) == ref.predict(Xt).tolist()


def test_served_logreg_head_folds_the_scaling_and_prior_shift():

    X, y = clusters({"a": 40, "b": 40, "c": 40})
    yi = np.array(["abc".index(v) for v in y])
    mean, scale = scaler(X, "standardize")
    Z = ((X - mean) * scale).astype(np.float32)
    fit = logreg.fit(Z, yi, 3, np.ones(len(yi)), 0.1)
    shift = np.array([0.3, -0.2, 0.0])
    model = logreg.to_head([fit], ["a", "b", "c"], mean, scale, shift, {})
    logits = Z.astype(np.float64) @ fit.W + fit.b + shift
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(model.predict_proba(X), expected / expected.sum(axis=1, keepdims=True), atol=2e-5)
