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
