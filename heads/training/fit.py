"""Train a classifier head (numpy only) from sentence embeddings and string labels.

    result = train_head(X_train, y_train, X_val, y_val, params=TrainParams())
    result.model.predict_proba(X)           # a heads.model.HeadModel
    evaluate(result.model, X_test, y_test)  # heads.training.evaluation

What `train_head` does:

1. encodes the string labels (sorted); by default every example counts once, as in the baseline
   (`class_weighting="balanced"`: n / (C * n_c) per class, as scikit-learn's, for macro metrics);
2. compares the head families of `TrainParams.families` (plug-ins registered by name in
   heads.training.families) on the same validation predictions, on every feature set given (X as
   {"default": ..., "all6": ...}; a head config's `feature_set: auto`):
   * "mlp" (heads.training.mlp): AdamW-trained networks over `search_grid`, early-stopped on the
     validation metric;
   * "logreg" (heads.training.logreg): scikit-learn's LogisticRegression on the raw embeddings over
     `logreg_c_grid` (C=10 alone by default; a longer grid is walked from its middle C), on the first
     feature set only by default (`logreg_first_set_only`). This is
     the simple baseline; keeping it unless another candidate validates clearly better keeps the
     trainer from losing to it;
   * "blend" (heads.training.blend): the MLP and logreg averaged in probability.
   The MLP and the blend skip a set that another given set holds whole (default inside all6; unless
   `mlp_on_contained_sets`): the MLP on all6 sees the same vector, and the default set's MLP was
   never the choice on the tuning half.
   Every candidate records its wall and CPU seconds (`cpu_s`), the final fit too (`selection.final`).
   The validation data: for up to `cv_max_examples` labelled rows, `cv_folds`-fold stratified
   cross-validation over all of them (a given val split joins the folds, `cv_pool_val`): each
   candidate is scored on every row's out-of-fold prediction, far less noisy than one split of a
   few hundred; above that, the given (X_val, y_val) or a seeded stratified `val_fraction` split;
3. picks the prior adjustment tau (see `TrainParams.prior_adjustment`) on the same validation
   predictions for every candidate; keeps the default candidate (a family's `default_params`:
   logreg at the grid's middle C, on the first feature set) unless another one is clearly better on
   the validation examples (heads.training.selection: `selection_min_gain`, McNemar's one-sided
   test at `selection_alpha`, Bonferroni-corrected for the number of alternatives, and under
   cross-validation no loss on a majority of the folds). With `refit` (default) the chosen family
   retrains its choice on all the data (train + val) with the training split's class weights; the
   MLP for the median of its folds' best epochs. `TrainResult.selection` (and the artifact's
   metrics.json) lists every candidate's validation score, the choice and why (`why`);
   `TrainResult.feature_set` names the chosen set.

Defaults (chosen on the benchmark in scripts/bench/heads.py, mean of 3 seeds): an ensemble of 2
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
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from embedder.feature_sets import block_of
from heads.model import HeadModel
from heads.training import families as registry
from heads.training.data import class_weights, log_prior, stratified_folds, stratified_split
from heads.training.family_api import Candidate, Clock, FinalData, Progress, SearchData
from heads.training.params import TrainParams
from heads.training.selection import Scorer, choose, fold_losses


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
    val_truth: np.ndarray | None = None  # [n_val] the true class index (into model.labels) of each val_proba row
    selection: dict[str, Any] = field(default_factory=dict)  # metric, source, chosen, why, every candidate's score
    feature_set: str | None = None  # the chosen candidate's feature set (None: X was one unnamed array)
    train_cpu_s: float = 0.0  # CPU seconds of this process for the whole training (wall: train_time_s)


def _blas_threads(n: int | None):
    """Limit BLAS and OpenMP threads for the duration (results do not depend on it; speed does).

    scikit-learn (the logreg family) is imported first: threadpoolctl only limits the thread pools of
    libraries already loaded, and scikit-learn brings its own OpenMP runtime."""
    if n is None:
        return contextlib.nullcontext()
    import sklearn.linear_model  # noqa: F401  loads scikit-learn's OpenMP before the limit is set
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def train_head(X_train: np.ndarray | Mapping[str, np.ndarray], y_train: Sequence[str],
               X_val: np.ndarray | Mapping[str, np.ndarray] | None = None, y_val: Sequence[str] | None = None, *,
               params: TrainParams | None = None, seed: int = 0, progress: Progress | None = None,
               new_classes: Sequence[str] = ()) -> TrainResult:
    """Train a head on embeddings [N, D] and string labels; see the module docstring.

    `X_train` (and `X_val`) may map feature-set names to vectors of the same rows ({"default": [N, 384],
    "all6": [N, 2304]}): every family is then searched on each set, the choice names its set
    (`TrainResult.feature_set`) and the served model takes that set's vectors.
    Labels are strings (other values are converted with str()); the model's labels are sorted.
    `progress`, if given, is called with dicts such as
    {"stage": "search", "candidate": 0, "of": 1, "overrides": {...}, "epoch": 3, "val_score": 0.91}
    and {"stage": "refit", ..., "epoch": 3}.
    `new_classes`: labels only feedback has taught (heads.training.run.merge_feedback); each is weighted up
    (`TrainParams.new_class_max_weight`, see new_class_weights) and the weights are recorded in
    `selection["new_class_weights"]`.
    """
    p = params or TrainParams()
    with _blas_threads(p.blas_threads):
        return _train_head(X_train, y_train, X_val, y_val, p, seed, progress, tuple(new_classes))


def _as_sets(X: np.ndarray | Mapping[str, np.ndarray] | None, what: str) -> dict[str | None, np.ndarray] | None:
    if X is None:
        return None
    if isinstance(X, Mapping):
        if not X:
            raise ValueError(f"{what}: no feature sets")
        return {str(k): np.asarray(v, np.float32) for k, v in X.items()}
    return {None: np.asarray(X, np.float32)}


def new_class_weights(y: np.ndarray, labels: Sequence[str], new_classes: Sequence[str], max_weight: float) -> dict[str, float]:
    """Per new class: the other classes' mean count over its own, clipped to [1, max_weight]. Labels a review
    queue picks under-represent a class that appeared after deployment (a few of the first hundred labels),
    so at weight 1 its prior keeps it from being predicted; weighting it like an average class (at most
    ``max_weight`` x) lets a handful of examples count without letting them outweigh the others."""
    counts = np.bincount(y, minlength=len(labels)).astype(np.float64)
    new = [i for i, label in enumerate(labels) if label in set(new_classes) and counts[i] > 0]
    old = [i for i in range(len(labels)) if i not in new and counts[i] > 0]
    if not new or not old or max_weight <= 1:
        return {}
    mean_old = float(counts[old].mean())
    return {labels[i]: round(float(np.clip(mean_old / counts[i], 1.0, max_weight)), 4) for i in new}


def _train_head(X_train, y_train, X_val, y_val, p: TrainParams, seed: int, progress: Progress | None,
                new_classes: tuple[str, ...] = ()) -> TrainResult:
    clock = Clock()
    sets_train = _as_sets(X_train, "X_train")
    y_train = np.array([str(v) for v in y_train])
    for X in sets_train.values():
        if X.ndim != 2 or len(X) != len(y_train):
            raise ValueError(f"X_train {X.shape} and y_train ({len(y_train)}) do not match")
    if len(y_train) == 0:
        raise ValueError("no training data")
    given_val = X_val is not None and y_val is not None and len(y_val) > 0
    sets_val = _as_sets(X_val, "X_val") if given_val else None
    if given_val:
        y_val = np.array([str(v) for v in y_val])
        if set(sets_val) != set(sets_train):
            raise ValueError(f"X_val has feature sets {sorted(map(str, sets_val))}, X_train {sorted(map(str, sets_train))}")
        for name, X in sets_val.items():
            if X.ndim != 2 or len(X) != len(y_val) or X.shape[1] != sets_train[name].shape[1]:
                raise ValueError(f"X_val {X.shape} and y_val ({len(y_val)}) do not match X_train "
                                 f"{sets_train[name].shape}")
        labels = sorted(set(y_train.tolist()) | set(y_val.tolist()))
    else:
        labels = sorted(set(y_train.tolist()))
    if len(labels) < 2:
        raise ValueError(f"need at least two classes, got {labels}")
    index = {label: i for i, label in enumerate(labels)}
    C = len(labels)
    yi = np.array([index[v] for v in y_train], np.int64)
    yv = np.array([index[v] for v in y_val], np.int64) if given_val else None
    X_all = {k: np.concatenate([X, sets_val[k]]) for k, X in sets_train.items()} if given_val else sets_train
    y_all = np.concatenate([yi, yv]) if given_val else yi

    # -- where validation predictions come from ----------------------------------------------------
    # Cross-validation over every labelled row (the given val split joins the folds with cv_pool_val):
    # out-of-fold predictions of all rows are far less noisy than one split of a few hundred.
    folds, rows_fit, rows_sel = None, None, None  # rows: indices into X_all; X_fit/X_sel are views of them
    cv_rows = len(y_all) if (p.cv_pool_val or not given_val) else len(yi)
    if (p.cv_pool_val or not given_val) and p.cv_folds >= 2 and 2 * p.cv_folds <= cv_rows <= p.cv_max_examples:
        val_source = "cv"
        rows_fit = np.arange(cv_rows)
        folds = stratified_folds(y_all[rows_fit], p.cv_folds, seed)
    elif given_val:
        val_source = "given"
        rows_fit, rows_sel = np.arange(len(yi)), np.arange(len(yi), len(y_all))
    else:
        tr, va = stratified_split(yi, p.val_fraction, seed)
        val_source = "split" if len(va) else "none"
        rows_fit, rows_sel = tr, va
    y_fit = y_all[rows_fit]
    y_sel = y_fit if folds is not None else y_all[rows_sel]
    validated = val_source != "none"
    log_prior_fit = log_prior(y_fit, C)
    # Class weights come from the training split and stay fixed in the refit: the validated
    # objective is the one refitted, whatever the class mix of the validation split.
    fit_class_w = class_weights(y_fit, C, p.class_weighting)
    # balanced weighting already counts every class alike
    boosted = new_class_weights(y_fit, labels, new_classes, p.new_class_max_weight) if p.class_weighting == "none" else {}
    for label, weight in boosted.items():
        fit_class_w[index[label]] *= weight
    scorer = Scorer(p, y_sel, log_prior_fit, C)

    # -- search: every family's candidates on every feature set, scored on the same predictions ----
    candidates: list[Candidate] = []
    first_set = next(iter(X_all))
    for set_name, X in X_all.items():
        X_sel = X[rows_sel] if rows_sel is not None and len(rows_sel) else None
        data = SearchData(p, seed, C, X[rows_fit], y_fit, X_sel, y_sel, folds, validated, fit_class_w, scorer,
                          progress=progress, feature_set=set_name, primary=set_name == first_set,
                          primary_found=list(candidates), primary_block=block_of(set_name, first_set),
                          contained=any(_holds(X_all[other], other, X, set_name) for other in X_all if other != set_name))
        found: list[Candidate] = []
        for name in (p.families if validated else p.families[:1]):  # without validation nothing to compare on
            for c in registry.get(name).search(replace(data, first_index=len(candidates) + len(found),
                                                       earlier=list(found))):
                c.feature_set = set_name
                found.append(c)
        candidates += found
        if not validated:
            break  # nothing to compare feature sets on: the first (the default's)
    # The default candidate (the simple baseline a family declares: logreg at its grid's middle C, on the
    # first feature set) is replaced only for a clear gain on the validation examples, not for one or two
    # examples' worth of noise. Among those with a clear gain: the best score (ties: a baseline family's,
    # the earlier).
    defaults = {c.family: registry.get(c.family).default_params(p) for c in candidates}
    base_i = next((i for i, c in enumerate(candidates) if c.params == defaults[c.family]), 0)
    best_i = choose([c.scored.score for c in candidates], [c.scored.correct for c in candidates],
                    [defaults[c.family] is not None for c in candidates], base_i, p, folds)
    search = [c.entry() for c in candidates]
    best, base = candidates[best_i], candidates[base_i]
    val_score, tau = float(best.scored.score), float(best.scored.prior_adjustment)
    named = {} if best.feature_set is None else {"feature_set": best.feature_set}
    selection = {"metric": p.selection_metric, "source": val_source,
                 "default": base.params | {"family": base.family} | (
                     {} if base.feature_set is None else {"feature_set": base.feature_set}),
                 "chosen": {"family": best.family, **named, "params": best.params},
                 "why": _why(best, base, folds, p, len(candidates) - 1), "candidates": search}
    if len(X_all) > 1:
        selection["feature_sets"] = [str(k) for k in X_all]
    if boosted:
        selection["new_class_weights"] = boosted

    # -- the final model: the chosen family's, refitted on all the data or its search fit ----------
    refit = p.refit and validated
    n_fit, prior = (len(y_all), log_prior(y_all, C)) if refit else (len(y_fit), log_prior_fit)
    final_clock = Clock()
    final = registry.get(best.family).final(best, FinalData(p, seed, C, labels, X_all[best.feature_set], y_all,
                                                            refit, fit_class_w, tau * prior, progress))
    chosen = {"family": best.family, **named, **best.params, **final.meta, "prior_adjustment": tau}
    selection["final"] = {"refit": refit, "time_s": round(final_clock.wall_s(), 3), "cpu_s": round(final_clock.cpu_s(), 3)}
    elapsed, cpu = clock.wall_s(), clock.cpu_s()
    meta = {"trainer": "heads.training.fit", "seed": seed, "chosen": chosen, "epochs": final.meta.get("epochs", 0),
            "prior_adjustment": tau, "val_score": val_score, "val_metric": p.selection_metric,
            "val_source": val_source, "n_fit": n_fit, "train_time_s": round(elapsed, 3),
            "train_cpu_s": round(cpu, 3),
            "selection": selection, "params": final.params.model_dump(exclude={"search_grid"})}
    if best.feature_set is not None:
        meta["feature_set"] = best.feature_set
    model = final.build(meta)
    return TrainResult(model=model, params=final.params, chosen=chosen, val_score=val_score,
                       val_metric=p.selection_metric, train_time_s=clock.wall_s(), search=search,
                       n_train=len(yi), n_val=len(y_sel) if validated else 0, val_source=val_source,
                       selection=selection, val_proba=_adjusted(best.val_proba, tau * log_prior_fit),
                       val_truth=y_sel if validated and best.val_proba is not None else None,
                       feature_set=best.feature_set, train_cpu_s=clock.cpu_s())


def _holds(outer: np.ndarray, outer_name: str | None, inner: np.ndarray, inner_name: str | None) -> bool:
    """Whether set `outer_name`'s vectors hold set `inner_name`'s as a block of columns (default in all6)."""
    block = block_of(outer_name, inner_name) if outer_name and inner_name else None
    return block is not None and block.stop <= outer.shape[1] and block.stop - block.start == inner.shape[1]


def _why(best: Candidate, base: Candidate, folds: np.ndarray | None, p: TrainParams, alternatives: int) -> str:
    """One line for metrics.json: what the evidence was for keeping the default or moving off it."""
    if base.scored.correct is None:
        return "nothing to validate on: the default candidate"
    where = (f"out-of-fold predictions of {len(base.scored.correct)} rows ({len(np.unique(folds))} folds)"
             if folds is not None else f"{len(base.scored.correct)} validation rows")
    if best is base:
        return (f"no candidate beat the default clearly on the {where} (McNemar one-sided at {p.selection_alpha}, "
                f"Bonferroni over {alternatives}, min gain {p.selection_min_gain}"
                + (", not losing on a majority of folds)" if folds is not None else ")"))
    ok, base_ok = best.scored.correct, base.scored.correct
    fixed, broken = int((ok & ~base_ok).sum()), int((~ok & base_ok).sum())
    text = (f"{best.family}{'' if best.feature_set is None else ' on ' + best.feature_set} "
            f"{best.scored.score:.4f} vs default {base.scored.score:.4f} on the {where}: fixes {fixed}, "
            f"breaks {broken} (z = {(fixed - broken) / max(1.0, np.sqrt(fixed + broken)):.2f})")
    if folds is not None:
        text += f", loses on {fold_losses(ok, base_ok, folds)} of {len(np.unique(folds))} folds"
    return text


def _adjusted(proba: np.ndarray | None, shift: np.ndarray) -> np.ndarray | None:
    """Probabilities with `shift` added to their logits (the prior adjustment the final model gets)."""
    if proba is None or not np.any(shift):
        return proba
    logits = np.log(np.maximum(proba, 1e-30)) + shift
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
