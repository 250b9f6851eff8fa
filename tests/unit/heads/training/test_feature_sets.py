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


def _nested(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{"default": [n, 384], "all6": [n, 2304]} with the default vector as all6's last block, as the encoder's."""
    X, y = linear_problem(n, dim=16, sample_seed=seed)
    default = np.concatenate([X, _noise(n, 368, seed + 5)], axis=1)
    return {"default": default, "all6": np.concatenate([_noise(n, 1920, seed + 9), default], axis=1)}, y


def test_the_mlp_and_blend_are_fitted_on_the_containing_set_only_unless_asked():
    sets, y = _nested(300)
    p = P.model_copy(update={"epochs_max": 2})
    fitted = [(c["family"], c["feature_set"]) for c in train_head(sets, y, params=p, seed=0).selection["candidates"]]
    assert fitted == [("logreg", "default"), ("mlp", "all6"), ("blend", "all6")]
    both = train_head(sets, y, params=p.model_copy(update={"mlp_on_contained_sets": True}), seed=0)
    assert [(c["family"], c["feature_set"]) for c in both.selection["candidates"]] == [
        ("mlp", "default"), ("logreg", "default"), ("blend", "default"), ("mlp", "all6"), ("blend", "all6")]
    # sets that do not contain one another keep every family on each (the test above: 16-d "all6")


def test_mismatched_feature_sets_fail_clearly():
    X, y = linear_problem(100, dim=8)
    with pytest.raises(ValueError, match="feature sets"):
        train_head({"default": X}, y, {"all6": X[:20]}, y[:20], params=P)
    with pytest.raises(ValueError, match="do not match"):
        train_head({"default": X, "all6": X[:50]}, y, params=P)


def test_unknown_feature_sets_fail_config_validation():
    with pytest.raises(ValueError, match="unknown feature sets"):
        TrainParams(feature_sets=["default", "all7"])
