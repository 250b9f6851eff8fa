"""L2-regularised logistic regression: scikit-learn's LogisticRegression, on the raw embeddings.

The simple baseline every head must match: `heads.training.fit` compares it with the MLP family
on the validation data. It is scikit-learn's own estimator (lbfgs, its default tolerance), fitted
on the embeddings as they are, so the default candidate at C=10 is exactly the
`LogisticRegression(C=10)` a data scientist would fit on the same vectors: the trainer departs
from it only where validation shows a clear gain. (An earlier hand-written L-BFGS on centred,
rescaled inputs solved the same objective more tightly and still differed from scikit-learn's
early-stopped solution by a test example or two: noise, but noise the baseline does not have.)

`sample_weight` carries the class weights (and zeros for a fold's held-out examples under
cross-validation); `init` warm-starts a fit from a neighbouring C's solution (the trainer walks
a C grid). Classes absent from a fit (a small class missing from one fold) get a bias far below
the others, so they are never predicted by that fit. scikit-learn is imported here only, i.e.
only when training, never in a serving process.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from heads.model import softmax

_ABSENT_BIAS = -30.0  # logit offset of a class the fit never saw (exp(-30) ~ 1e-13)


@dataclass
class LogregFit:
    W: np.ndarray  # [D, K] float32, columns in the trainer's label order
    b: np.ndarray  # [K] float32
    C: float
    n_iter: int

    def proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(X @ self.W + self.b, axis=1)


def fit(X: np.ndarray, y: np.ndarray, n_classes: int, sample_weight: np.ndarray, C: float, *,
        init: LogregFit | None = None, max_iter: int = 1000, tol: float = 1e-4) -> LogregFit:
    """LogisticRegression(C, tol, max_iter) on X [N, D], integer labels y in [0, n_classes)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(X)
    sw = np.asarray(sample_weight, np.float64)
    keep = sw > 0  # a fold's held-out examples: left out rather than carried with weight 0
    if not keep.any():
        raise ValueError("logistic regression needs a positive total sample weight")
    X, y, sw = X[keep], np.asarray(y)[keep], sw[keep]
    present = np.unique(y)
    if len(present) < 2:  # one class only (a degenerate fold): predict it
        W = np.zeros((X.shape[1], n_classes), np.float32)
        b = np.full(n_classes, _ABSENT_BIAS, np.float32)
        b[present] = 0.0
        return LogregFit(W, b, float(C), 0)
    clf = LogisticRegression(C=C, tol=tol, max_iter=max_iter, warm_start=init is not None)
    if init is not None:
        if len(present) == 2:  # binary: one coefficient vector, the logit of the second class
            clf.coef_ = (init.W[:, present[1]] - init.W[:, present[0]]).astype(np.float64)[None, :]
            clf.intercept_ = np.array([init.b[present[1]] - init.b[present[0]]], np.float64)
        else:
            clf.coef_ = init.W[:, present].T.astype(np.float64)
            clf.intercept_ = init.b[present].astype(np.float64)
    with warnings.catch_warnings():  # max_iter reached: the fit is still usable; n_iter says so
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y, sample_weight=sw)
    W = np.zeros((X.shape[1], n_classes), np.float64)
    b = np.full(n_classes, _ABSENT_BIAS, np.float64)
    if len(present) == 2:  # softmax over [0, z] is the sigmoid of z
        W[:, present[1]] = clf.coef_[0]
        b[present[0]], b[present[1]] = 0.0, clf.intercept_[0]
    else:
        W[:, clf.classes_] = clf.coef_.T
        b[clf.classes_] = clf.intercept_
        b[np.setdiff1d(np.arange(n_classes), present)] = clf.intercept_.min() + _ABSENT_BIAS
    return LogregFit(W.astype(np.float32), b.astype(np.float32), float(C), int(np.max(clf.n_iter_)))
