"""Model selection on validation predictions, the same for every family.

Every candidate (of any family, on any feature set) is scored on the same validation examples: the
prior adjustment tau is picked on its probabilities (`Scorer`), then `choose` keeps the default
candidate unless another one is clearly better on those examples: by `selection_min_gain`, and by
McNemar's one-sided test at `selection_alpha`, Bonferroni-corrected for the number of alternatives
(as for tau). Under cross-validation the examples are every labelled row's out-of-fold prediction
(paired: each row predicted by both candidates' fold models), and the candidate must also not lose
to the default on a majority of the folds, so a gain made on one fold does not carry the choice.
A few examples of a few hundred are noise, and chasing them (a lax test on one split picked the MLP
on validation gains that did not hold on test) lost to plain logistic regression on held-out data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from heads.training.evaluation import confusion_matrix, score_confusion
from heads.training.params import TrainParams


@dataclass(frozen=True)
class Scored:
    """A candidate's validation outcome: its prior adjustment, score, and right-or-wrong per example."""

    prior_adjustment: float
    score: float  # NaN when there is nothing to validate on
    correct: np.ndarray | None


class Scorer:
    """Scores validation probabilities [n_val, C] against `y_sel` with the selection metric, after
    picking tau (`TrainParams.prior_adjustment`) for them."""

    def __init__(self, p: TrainParams, y_sel: np.ndarray, log_prior_fit: np.ndarray, n_classes: int):
        self.p, self.y_sel, self.log_prior_fit, self.C = p, y_sel, log_prior_fit, n_classes
        self.weighted = p.class_weighting != "none"

    def __call__(self, proba: np.ndarray | None) -> Scored:
        p, weighted = self.p, self.weighted
        if proba is None:
            return Scored(float(p.prior_adjustment) if weighted and p.prior_adjustment != "auto" else 0.0,
                          float("nan"), None)
        if weighted and p.prior_adjustment == "auto":
            tau, _ = pick_tau(proba, self.y_sel, self.log_prior_fit, p.prior_adjustment_grid, p.selection_metric,
                              min_score_gain=p.prior_adjustment_min_gain,
                              z=bonferroni_z(p.selection_alpha, len(set(p.prior_adjustment_grid) - {0.0})))
        else:
            tau = float(p.prior_adjustment) if weighted else 0.0
        pred = (np.log(np.maximum(proba, 1e-30)) + tau * self.log_prior_fit).argmax(axis=1)
        score = score_confusion(confusion_matrix(self.y_sel, pred, self.C), p.selection_metric)
        return Scored(tau, score, pred == self.y_sel)


def choose(scores: Sequence[float], correct: Sequence[np.ndarray | None], preferred: Sequence[bool],
           default: int, p: TrainParams, folds: np.ndarray | None = None) -> int:
    """Index of the chosen candidate: `default` unless another one validates clearly better; among
    those with a clear gain, the best score (ties: a `preferred` one, i.e. of a family with a default
    candidate, then the earlier). With `folds` (the fold of each validation example), a clear gain
    must also not lose on a majority of the folds (`fold_losses`)."""
    if correct[default] is None:
        return default
    base_ok, base_score = correct[default], scores[default]
    ranked = sorted(range(len(scores)), key=lambda i: (-_rounded(scores[i]), not preferred[i], i))
    for i in ranked:
        if i == default or scores[i] <= base_score + 1e-9:
            break
        if not clear_gain(correct[i], scores[i], base_ok, base_score, p.selection_min_gain,
                          bonferroni_z(p.selection_alpha, len(scores) - 1)):
            continue
        if folds is None or 2 * fold_losses(correct[i], base_ok, folds) <= len(np.unique(folds)):
            return i
    return default


def fold_losses(ok: np.ndarray, base_ok: np.ndarray, folds: np.ndarray) -> int:
    """Folds on which predictions right where `ok` are right less often than the base ones."""
    return sum(int(ok[folds == k].sum() < base_ok[folds == k].sum()) for k in np.unique(folds))


def _rounded(score: float) -> float:
    return -math.inf if math.isnan(score) else round(score, 9)


def pick_tau(proba: np.ndarray, y: np.ndarray, log_prior: np.ndarray, taus: list[float], metric: str,
              min_score_gain: float = 0.0025, z: float = 1.645, min_gain: int = 2) -> tuple[float, float]:
    """The prior adjustment tau with the best validation score, guarded against validation noise.

    tau = 0 (the balanced decision rule) is the default; another tau must raise the score by at
    least `min_score_gain` *and* be a real improvement example-wise: with b examples it fixes and c
    it breaks (relative to tau = 0), b - c >= min_gain and b - c > z * sqrt(b + c) (McNemar-style),
    so neither a small validation set nor a negligible gain moves the decision rule."""
    logp = np.log(np.maximum(proba, 1e-30))
    C = proba.shape[1]

    def run(tau: float) -> tuple[np.ndarray, float]:
        pred = (logp + tau * log_prior).argmax(axis=1)
        return pred == y, score_confusion(confusion_matrix(y, pred, C), metric)

    base_ok, base = run(0.0)
    best_tau, best = 0.0, base
    for tau in sorted(set(float(t) for t in taus) - {0.0}):
        ok, score = run(tau)
        if score > best + 1e-9 and clear_gain(ok, score, base_ok, base, min_score_gain, z, min_gain):
            best_tau, best = tau, score
    return best_tau, best


def bonferroni_z(alpha: float, alternatives: int) -> float:
    """One-sided normal quantile for `alpha`, Bonferroni-corrected: with m alternatives each tested
    against the default, the chance that noise alone moves off the default stays <= alpha."""
    return NormalDist().inv_cdf(1.0 - alpha / max(1, alternatives))


def clear_gain(ok: np.ndarray, score: float, base_ok: np.ndarray, base: float, min_score_gain: float = 0.0025,
                z: float = 1.645, min_gain: int = 2) -> bool:
    """Whether predictions that are right where `ok` beat the base ones (right where `base_ok`) by
    more than validation noise: the score by `min_score_gain`, and example-wise, with b examples
    fixed and c broken, b - c >= min_gain and b - c > z * sqrt(b + c) (McNemar-style)."""
    fixed, broken = int((ok & ~base_ok).sum()), int((~ok & base_ok).sum())
    gain = fixed - broken
    return score >= base + min_score_gain - 1e-12 and gain >= min_gain and gain > z * math.sqrt(fixed + broken)

