"""Stratified splits and folds."""

from __future__ import annotations

import numpy as np

from heads.training.data import stratified_folds


def test_stratified_folds_deal_every_class_evenly():
    folds = stratified_folds(np.array([0] * 30 + [1] * 10), 5, seed=0)
    assert [int((folds == k).sum()) for k in range(5)] == [8] * 5
    assert all(int(((folds == k) & (np.arange(40) >= 30)).sum()) == 2 for k in range(5))
