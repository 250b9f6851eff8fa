"""The choice among candidates: the default stays unless another one is clearly better."""

from __future__ import annotations

import numpy as np

from heads.training.fit import train_head
from heads.training.selection import clear_gain
from tests.unit.heads.training.synthetic import FAST, linear_problem


def test_a_candidate_replaces_the_default_only_for_a_clear_gain():

    base = np.array([True] * 280 + [False] * 20)  # 300 validation examples, 0.933
    one_more = base.copy()
    one_more[280] = True  # +1 example: noise
    assert not clear_gain(one_more, one_more.mean(), base, base.mean())
    swapped = base.copy()
    swapped[280:290] = True
    swapped[:8] = False  # +10 fixed, -8 broken: +0.7 % but not clearly better example-wise
    assert not clear_gain(swapped, swapped.mean(), base, base.mean())
    better = base.copy()
    better[280:290] = True  # +10 fixed, none broken
    assert clear_gain(better, better.mean(), base, base.mean())
    # in training: the record names the default, and a different choice is a clear gain over it
    X, y = linear_problem(300)
    Xv, yv = linear_problem(300, sample_seed=1)
    sel = train_head(X, y, Xv, yv, params=FAST).selection
    assert sel["default"] == {"family": "logreg", "C": 10.0}
    default = next(c for c in sel["candidates"] if c["family"] == "logreg" and c["params"]["C"] == 10.0)
    chosen = next(c for c in sel["candidates"] if c["family"] == sel["chosen"]["family"]
                  and c["params"] == sel["chosen"]["params"])
    assert chosen is default or chosen["val_score"] >= default["val_score"] + 0.0025


def test_under_cross_validation_a_clear_pooled_gain_must_not_lose_on_most_folds():
    from heads.training.params import TrainParams
    from heads.training.selection import choose, fold_losses

    folds = np.repeat(np.arange(5), 200)  # 1,000 out-of-fold predictions, 5 folds
    base = np.ones(1000, bool)
    base[::10] = False  # the default: 0.9 on every fold
    lucky = base.copy()
    lucky[:200] = True  # all of its gain on fold 0 (+20 examples), 8 examples worse on each other fold
    for k in range(1, 5):
        lucky[np.flatnonzero(folds == k)[1:9]] = False
    steady = base.copy()
    steady[::20] = True  # +10 examples on every fold
    assert fold_losses(lucky, base, folds) == 4 and fold_losses(steady, base, folds) == 0
    p = TrainParams(selection_alpha=0.05)
    scores = [c.mean() for c in (base, lucky, steady)]
    assert choose(scores[:2], [base, lucky], [True, False], 0, p) == 0  # pooled, lucky is no clear gain either
    big_lucky = base.copy()
    big_lucky[np.flatnonzero(folds == 0)] = True
    for k in (2, 3, 4):  # +20 on fold 0, one example worse on each of three folds: a gain made on one fold
        big_lucky[np.flatnonzero(base & (folds == k))[0]] = False
    gain = [base.mean(), big_lucky.mean()]
    assert choose(gain, [base, big_lucky], [True, False], 0, p) == 1  # one split's view: a clear gain
    assert choose(gain, [base, big_lucky], [True, False], 0, p, folds) == 0  # loses on 3 of 5 folds
    assert choose(scores, [base, lucky, steady], [True, False, False], 0, p, folds) == 2
