"""train_head over several feature sets: every family on each set, the choice names its set."""

from __future__ import annotations

import numpy as np
import pytest

from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.params import TrainParams
from tests.unit.heads.training.synthetic import linear_problem

P = TrainParams(epochs_max=8, logreg_c_grid=[10.0], selection_alpha=0.05)


def _noise(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_the_set_that_carries_the_signal_is_chosen_and_recorded():
    X, y = linear_problem(900, dim=16)
    Xt, yt = linear_problem(300, dim=16, sample_seed=1)
    # "default" is noise with a weak trace of the truth; "all6" carries it whole
    weak = _noise(900, 16, 1) + 0.1 * X
    result = train_head({"default": weak, "all6": X}, y, params=P, seed=0)
    sel = result.selection
    assert result.feature_set == "all6" == sel["chosen"]["feature_set"] == result.chosen["feature_set"]
    assert sel["default"] == {"family": "logreg", "C": 10.0, "feature_set": "default"}
    assert sel["feature_sets"] == ["default", "all6"] and sel["source"] == "cv"
    assert {c["feature_set"] for c in sel["candidates"]} == {"default", "all6"}
    assert "all6" in sel["why"] and "5 folds" in sel["why"]
    assert result.model.meta["feature_set"] == "all6" and result.model.input_dim == 16
    assert evaluate(result.model, Xt, yt)["accuracy"] > 0.85


def test_without_a_clear_gain_the_default_set_and_baseline_stay():
    X, y = linear_problem(600, dim=16)
    same = {"default": X, "all6": X + 1e-6 * _noise(600, 16, 2)}  # the same evidence on both sets
    result = train_head(same, y, params=P.model_copy(update={"families": ["logreg"]}), seed=0)
    assert result.feature_set == "default" and result.chosen["family"] == "logreg"
    assert result.selection["why"].startswith("no candidate beat the default clearly")


def test_a_given_val_split_joins_the_folds_unless_told_otherwise():
    X, y = linear_problem(400, dim=16)
    Xv, yv = linear_problem(200, dim=16, sample_seed=1)
    pooled = train_head(X, y, Xv, yv, params=P, seed=0)
    assert pooled.val_source == "cv" and pooled.n_val == 600 and pooled.val_proba.shape == (600, 3)
    given = train_head(X, y, Xv, yv, params=P.model_copy(update={"cv_pool_val": False}), seed=0)
    assert given.val_source == "given" and given.n_val == 200


def test_mismatched_feature_sets_fail_clearly():
    X, y = linear_problem(100, dim=8)
    with pytest.raises(ValueError, match="feature sets"):
        train_head({"default": X}, y, {"all6": X[:20]}, y[:20], params=P)
    with pytest.raises(ValueError, match="do not match"):
        train_head({"default": X, "all6": X[:50]}, y, params=P)


def test_unknown_feature_sets_fail_config_validation():
    with pytest.raises(ValueError, match="unknown feature sets"):
        TrainParams(feature_sets=["default", "all7"])
