"""L2-regularised logistic regression: scikit-learn's LogisticRegression, on the raw embeddings.

The "logreg" family, and the simple baseline every head must match: the trainer
(heads.training.fit) compares it with the other families on the validation data. It is
scikit-learn's own estimator (lbfgs, its default tolerance), fitted on the embeddings as they
are, so the default candidate at C=10 is exactly the `LogisticRegression(C=10)` a data scientist
would fit on the same vectors: the trainer departs from it only where validation shows a clear
gain. (An earlier hand-written L-BFGS on centred, rescaled inputs solved the same objective more
tightly and still differed from scikit-learn's early-stopped solution by a test example or two:
noise, but noise the baseline does not have.)

`sample_weight` carries the class weights (and zeros for a fold's held-out examples under
cross-validation); `init` warm-starts a fit from a neighbouring C's solution (the trainer walks
a C grid). Classes absent from a fit (a small class missing from one fold) get a bias far below
the others, so they are never predicted by that fit. scikit-learn is imported here only, i.e.
only when training, never in a serving process.

The family walks `TrainParams.logreg_c_grid` from its middle C (the default candidate), each way
while the validation score improves, each fit warm-started from its neighbour's: the score is
close to unimodal in log C, and the fits far from the optimum (the costliest, from a cold start)
are skipped. Under cross-validation it fits one path per fold, scored on the pooled out-of-fold
predictions. The refit fits the chosen C from a cold start on all the data (at C=10, unweighted:
exactly LogisticRegression(C=10) fitted on train + val).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from heads.model import HeadModel, softmax
from heads.training.family_api import Candidate, Clock, Final, FinalData, SearchData
from heads.training.params import TrainParams

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


def to_head(members: list[LogregFit], labels: list[str], mean: np.ndarray, scale: np.ndarray, shift: np.ndarray,
            meta: dict[str, Any]) -> HeadModel:
    """Fold the input scaling ((x - mean) * scale) and the prior shift into each member's W, b."""
    Ws, bs = [], []
    for m in members:
        W = m.W.astype(np.float64)
        Ws.append(W * scale[:, None])
        bs.append(m.b.astype(np.float64) - (mean * scale) @ W + shift)
    return HeadModel("logreg", {"W": np.stack(Ws).astype(np.float32), "b": np.stack(bs).astype(np.float32)},
                     labels, meta=meta)


def middle(values: list[float]) -> float:
    """The geometric middle of a sorted grid (the default C, and the only one when nothing can be validated)."""
    return float(sorted(values)[(len(values) - 1) // 2])


class LogregFamily:
    name = "logreg"

    def default_params(self, p: TrainParams) -> dict[str, Any] | None:
        return {"C": middle(p.logreg_c_grid)}

    def search(self, data: SearchData) -> list[Candidate]:
        p, folds, C = data.p, data.folds, data.n_classes
        if not data.primary and p.logreg_first_set_only:
            return []
        Cs = list(p.logreg_c_grid) if data.validated else [middle(p.logreg_c_grid)]
        # scikit-learn's estimator on the raw embeddings, as the baseline is fitted (no input scaling)
        R_fit = np.ascontiguousarray(data.X_fit, np.float32)
        R_sel = np.ascontiguousarray(data.X_sel, np.float32) if data.X_sel is not None else None
        sw = data.class_w[data.y_fit]
        n_members = p.cv_folds if folds is not None else 1
        # under cross-validation member k trains without fold k and predicts it (pooled out-of-fold scores)
        member_sw = [sw * (folds != k) for k in range(n_members)] if folds is not None else [sw]
        tried: dict[int, Candidate] = {}

        def try_c(j: int, init: list[LogregFit] | None) -> tuple[list[LogregFit], float]:
            clock = Clock()
            # A warm start sits within scikit-learn's default tol of its neighbour's optimum (a change of C
            # moves the gradient by ~|W| / (C N)), so it would stop at once: neighbours are solved with a
            # tighter tol, within as many iterations as the cold-started default needed (a time budget).
            tol, max_iter = (p.logreg_tol, p.logreg_max_iter) if init is None else (
                p.logreg_tol * 1e-2, max(10, max(f.n_iter for f in init)))
            fits = [fit(R_fit, data.y_fit, C, member_sw[k], Cs[j], init=init[k] if init else None,
                        max_iter=max_iter, tol=tol) for k in range(n_members)]
            if folds is not None:
                proba = np.empty((len(data.y_fit), C), np.float32)
                for k, f in enumerate(fits):
                    proba[folds == k] = f.proba(R_fit[folds == k])
            else:
                proba = fits[0].proba(R_sel) if R_sel is not None else None
            scored = data.score(proba)
            if data.progress:
                data.progress({"stage": "search", "family": "logreg", "C": Cs[j], "val_score": scored.score})
            tried[j] = Candidate(self.name, {"C": Cs[j]}, scored, proba, fits, clock.wall_s(),
                                 {"iterations": max(f.n_iter for f in fits)}, cpu_s=clock.cpu_s())
            return fits, scored.score

        middle_j = Cs.index(middle(Cs))
        first, first_score = try_c(middle_j, None)
        for step in (1, -1):
            fits, best_score, j = first, first_score, middle_j + step
            while 0 <= j < len(Cs):
                fits, score = try_c(j, fits)
                if not score > best_score + 1e-9:
                    break
                best_score, j = score, j + step
            if best_score > first_score + 1e-9:
                break  # the score rose this way: close to unimodal in log C, the other way will not
        return [tried[j] for j in sorted(tried)]  # recorded in ascending C

    def final(self, chosen: Candidate, data: FinalData) -> Final:
        p = data.p
        c_value = float(chosen.params["C"])
        D = data.X.shape[1]
        mean, scale = np.zeros(D), np.ones(D)  # fitted on the raw embeddings
        if data.refit:
            # from a cold start, as LogisticRegression(C).fit(train + val) would be: at the default C on
            # evenly weighted classes this is exactly the baseline's model
            members = [fit(np.ascontiguousarray(data.X, np.float32), data.y, data.n_classes, data.class_w[data.y],
                           c_value, max_iter=p.logreg_max_iter, tol=p.logreg_tol)]
        else:  # the search fit itself (under cross-validation: the fold fits, as an ensemble)
            members = chosen.fitted
        return Final(lambda meta: to_head(members, data.labels, mean, scale, data.shift, meta),
                     p.model_copy(update={"head_type": "logreg"}),
                     {"C": c_value, "iterations": [m.n_iter for m in members]})


FAMILY = LogregFamily()
