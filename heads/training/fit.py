"""Train a classifier head (numpy only) from sentence embeddings and string labels.

    result = train_head(X_train, y_train, X_val, y_val, params=TrainParams())
    result.model.predict_proba(X)           # a heads.model.HeadModel
    evaluate(result.model, X_test, y_test)  # heads.training.evaluation

What `train_head` does:

1. encodes the string labels (sorted); by default every example counts once, as in the baseline
   (`class_weighting="balanced"`: n / (C * n_c) per class, as scikit-learn's, for macro metrics);
2. compares the head families of `TrainParams.families` (plug-ins registered by name in
   heads.training.families) on the same validation predictions:
   * "mlp" (heads.training.mlp): AdamW-trained networks over `search_grid`, early-stopped on the
     validation metric;
   * "logreg" (heads.training.logreg): scikit-learn's LogisticRegression on the raw embeddings over
     `logreg_c_grid`, walked from its middle C. This is the simple baseline; keeping it unless
     another candidate validates clearly better keeps the trainer from losing to it.
   The validation data: the given (X_val, y_val); else, for up to `cv_max_examples` examples,
   `cv_folds`-fold stratified cross-validation (each family scored on its pooled out-of-fold
   predictions, far less noisy than one small split); else a seeded stratified `val_fraction` split;
3. picks the prior adjustment tau (see `TrainParams.prior_adjustment`) on the same validation
   predictions for every candidate; keeps the default candidate (a family's `default_params`:
   logreg at the grid's middle C) unless another one is clearly better on the validation examples
   (heads.training.selection: `selection_min_gain`, McNemar's one-sided test at `selection_alpha`,
   Bonferroni-corrected for the number of alternatives). With `refit` (default) the chosen family
   retrains its choice on all the data (train + val) with the training split's class weights.
   `TrainResult.selection` (and the artifact's metrics.json) lists every candidate's validation
   score and the choice.

Defaults (chosen on the benchmark in scripts/bench_heads.py, mean of 3 seeds): an ensemble of 2
ReLU MLPs with 128 hidden units each (~400-550 KB of float32 weights in all), dropout 0.5, AdamW
lr 3e-3, weight decay 1e-2, batch 128, no label smoothing (0.1 cost CLINC150 several points of
out-of-scope recall), at most 40 epochs. The default grid is a single candidate: wider grids
(dropout, lr, hidden size) chosen on the validation data did not beat it on average, the
validation sets being too small to tell such settings apart; epochs and the prior adjustment are
still selected per dataset. The logreg family's C grid (1-300 in scikit-learn's units) is wide on
purpose, to hold whatever C suits a dataset rather than to fit the benchmark sets; its middle,
C=10, the default candidate, is the LogisticRegression(C=10) the trainer must never lose to.

Everything is seeded: the same inputs, params and seed give identical weights. Training runs
BLAS and OpenMP single-threaded by default (threadpoolctl): the matmuls are small, and threads
fighting over shared cores slowed training down six- to eight-fold on a busy 2-core machine
(scikit-learn's LogisticRegression on CLINC150: 12 s with one thread, 44 s with two, load ~6).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from heads.model import HeadModel
from heads.training import families as registry
from heads.training.data import class_weights, log_prior, stratified_folds, stratified_split
from heads.training.family_api import Candidate, FinalData, Progress, SearchData
from heads.training.params import TrainParams
from heads.training.selection import Scorer, choose


@dataclass
class TrainResult:
    model: HeadModel
    params: TrainParams  # the settings of the final model (grid choice applied)
    chosen: dict[str, Any]  # the grid choice, the epoch count and the prior adjustment
    val_score: float  # selection metric of the chosen candidate on the validation predictions
    val_metric: str
    train_time_s: float
    search: list[dict[str, Any]] = field(default_factory=list)  # every candidate's score, epochs, time
    n_train: int = 0
    n_val: int = 0  # examples scored for selection (out-of-fold predictions under cross-validation)
    val_source: str = ""  # "given", "cv", "split" or "none"
    # [n_val, C] held-out probabilities of the chosen candidate at its best epoch, prior adjustment
    # applied: on the given val split, the out-of-fold predictions (cv) or the held-out split. The
    # final (refit) model never trained without these texts, so this is its honest confidence.
    val_proba: np.ndarray | None = None
    selection: dict[str, Any] = field(default_factory=dict)  # metric, source, chosen, every candidate's score


def _blas_threads(n: int | None):
    """Limit BLAS and OpenMP threads for the duration (results do not depend on it; speed does).

    scikit-learn (the logreg family) is imported first: threadpoolctl only limits the thread pools of
    libraries already loaded, and scikit-learn brings its own OpenMP runtime."""
    if n is None:
        return contextlib.nullcontext()
    import sklearn.linear_model  # noqa: F401  loads scikit-learn's OpenMP before the limit is set
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def train_head(X_train: np.ndarray, y_train: Sequence[str], X_val: np.ndarray | None = None,
               y_val: Sequence[str] | None = None, *, params: TrainParams | None = None, seed: int = 0,
               progress: Progress | None = None) -> TrainResult:
    """Train a head on embeddings [N, D] and string labels; see the module docstring.

    Labels are strings (other values are converted with str()); the model's labels are sorted.
    `progress`, if given, is called with dicts such as
    {"stage": "search", "candidate": 0, "of": 1, "overrides": {...}, "epoch": 3, "val_score": 0.91}
    and {"stage": "refit", ..., "epoch": 3}.
    """
    p = params or TrainParams()
    with _blas_threads(p.blas_threads):
        return _train_head(X_train, y_train, X_val, y_val, p, seed, progress)


def _train_head(X_train, y_train, X_val, y_val, p: TrainParams, seed: int, progress: Progress | None) -> TrainResult:
    started = time.perf_counter()
    X_train = np.asarray(X_train, np.float32)
    y_train = np.array([str(v) for v in y_train])
    if X_train.ndim != 2 or len(X_train) != len(y_train):
        raise ValueError(f"X_train {X_train.shape} and y_train ({len(y_train)}) do not match")
    if len(X_train) == 0:
        raise ValueError("no training data")
    given_val = X_val is not None and y_val is not None and len(y_val) > 0
    if given_val:
        X_val = np.asarray(X_val, np.float32)
        y_val = np.array([str(v) for v in y_val])
        if X_val.ndim != 2 or len(X_val) != len(y_val) or X_val.shape[1] != X_train.shape[1]:
            raise ValueError(f"X_val {X_val.shape} and y_val ({len(y_val)}) do not match X_train {X_train.shape}")
        labels = sorted(set(y_train.tolist()) | set(y_val.tolist()))
    else:
        labels = sorted(set(y_train.tolist()))
    if len(labels) < 2:
        raise ValueError(f"need at least two classes, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    C = len(labels)
    yi = np.array([index[v] for v in y_train], np.int64)

    # -- where validation predictions come from ----------------------------------------------------
    folds = None
    if given_val:
        val_source = "given"
        X_fit, y_fit = X_train, yi
        X_sel, y_sel = X_val, np.array([index[v] for v in y_val], np.int64)
    elif p.cv_folds >= 2 and len(X_train) <= p.cv_max_examples and len(X_train) >= 2 * p.cv_folds:
        val_source = "cv"
        X_fit, y_fit = X_train, yi
        X_sel, y_sel = None, yi
        folds = stratified_folds(yi, p.cv_folds, seed)
    else:
        tr, va = stratified_split(yi, p.val_fraction, seed)
        val_source = "split" if len(va) else "none"
        X_fit, y_fit = X_train[tr], yi[tr]
        X_sel, y_sel = X_train[va], yi[va]
    validated = val_source != "none"
    log_prior_fit = log_prior(y_fit, C)
    # Class weights come from the training split and stay fixed in the refit: the validated
    # objective is the one refitted, whatever the class mix of the validation split.
    fit_class_w = class_weights(y_fit, C, p.class_weighting)

    # -- search: every family's candidates, scored on the same validation predictions --------------
    data = SearchData(p, seed, C, X_fit, y_fit, X_sel if X_sel is not None and len(X_sel) else None, y_sel, folds,
                      validated, fit_class_w, Scorer(p, y_sel, log_prior_fit, C), progress=progress)
    candidates: list[Candidate] = []
    for name in (p.families if validated else p.families[:1]):  # without validation nothing to compare on
        candidates += registry.get(name).search(replace(data, first_index=len(candidates)))
    # The default candidate (the simple baseline a family declares: logreg at its grid's middle C) is
    # replaced only for a clear gain on the validation examples, not for one or two examples' worth of
    # noise. Among those with a clear gain: the best score (ties: a baseline family's, the earlier).
    defaults = {c.family: registry.get(c.family).default_params(p) for c in candidates}
    base_i = next((i for i, c in enumerate(candidates) if c.params == defaults[c.family]), 0)
    best_i = choose([c.scored.score for c in candidates], [c.scored.correct for c in candidates],
                    [defaults[c.family] is not None for c in candidates], base_i, p)
    search = [c.entry() for c in candidates]
    best, base = candidates[best_i], candidates[base_i]
    val_score, tau = float(best.scored.score), float(best.scored.prior_adjustment)
    selection = {"metric": p.selection_metric, "source": val_source, "default": base.params | {"family": base.family},
                 "chosen": {"family": best.family, "params": best.params}, "candidates": search}

    # -- the final model: the chosen family's, refitted on all the data or its search fit ----------
    X_all = np.concatenate([X_train, X_val]) if given_val else X_train
    y_all = np.concatenate([yi, y_sel]) if given_val else yi
    refit = p.refit and validated
    n_fit, prior = (len(X_all), log_prior(y_all, C)) if refit else (len(X_fit), log_prior_fit)
    final = registry.get(best.family).final(best, FinalData(p, seed, C, labels, X_all, y_all, refit, fit_class_w,
                                                            tau * prior, progress))
    chosen = {"family": best.family, **best.params, **final.meta, "prior_adjustment": tau}
    elapsed = time.perf_counter() - started
    meta = {"trainer": "heads.training.fit", "seed": seed, "chosen": chosen, "epochs": final.meta.get("epochs", 0),
            "prior_adjustment": tau, "val_score": val_score, "val_metric": p.selection_metric,
            "val_source": val_source, "n_fit": n_fit, "train_time_s": round(elapsed, 3),
            "selection": selection, "params": final.params.model_dump(exclude={"search_grid"})}
    model = final.build(meta)
    return TrainResult(model=model, params=final.params, chosen=chosen, val_score=val_score,
                       val_metric=p.selection_metric, train_time_s=time.perf_counter() - started, search=search,
                       n_train=len(X_train), n_val=len(y_sel) if validated else 0, val_source=val_source,
                       selection=selection, val_proba=_adjusted(best.val_proba, tau * log_prior_fit))


def _adjusted(proba: np.ndarray | None, shift: np.ndarray) -> np.ndarray | None:
    """Probabilities with `shift` added to their logits (the prior adjustment the final model gets)."""
    if proba is None or not np.any(shift):
        return proba
    logits = np.log(np.maximum(proba, 1e-30)) + shift
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
