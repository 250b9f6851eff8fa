"""The mlp family: its network as served, and its linear head_type."""

from __future__ import annotations

import numpy as np
import pytest

from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.mlp import fit as fit_mlp
from heads.training.mlp import scaler
from heads.training.params import TrainParams
from tests.unit.heads.training.synthetic import FAST, clusters


def test_logreg_head_type_trains_and_serves():
    X, y = clusters({"a": 50, "b": 50})
    model = train_head(X, y, params=FAST.model_copy(update={"head_type": "logreg"})).model
    assert model.head_type == "logreg" and evaluate(model, X, y)["accuracy"] > 0.9


@pytest.mark.parametrize("overrides", [{}, {"linear_skip": True, "activation": "gelu"}, {"head_type": "logreg"},
                                       {"input_scaling": "standardize"}])
def test_served_model_matches_the_training_network(overrides):
    """Input scaling folded into the first layer, members split out: same probabilities as in training."""
    X, y = clusters({"a": 40, "b": 40, "c": 40})
    yi = np.array(["abc".index(v) for v in y])
    p = TrainParams(**overrides)
    mean, scale = scaler(X, p.input_scaling)
    fit = fit_mlp(p, ((X - mean) * scale).astype(np.float32), yi, 3, K=3, seed=0, epochs=2)
    model = fit.net.to_head(fit.state, ["a", "b", "c"], mean, scale, p, {})
    expected = fit.net.member_proba(((X - mean) * scale).astype(np.float32), fit.state).mean(axis=0)
    assert model.n_members == 3
    np.testing.assert_allclose(model.predict_proba(X), expected, atol=2e-6)


def test_in_place_adamw_is_bit_identical_to_the_plain_update():
    """The scratch-array AdamW (no temporaries) computes exactly the textbook expressions, step after step."""
    from heads.training.mlp import _Net

    p = TrainParams(lr=1e-2, weight_decay=0.05)
    rng = np.random.default_rng(0)
    net = _Net(p, 24, 3, 2, np.random.default_rng(1))
    ref = {k: v.copy() for k, v in net.params.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v2 = {k: np.zeros_like(v) for k, v in ref.items()}
    b1, b2, eps, f32 = 0.9, 0.999, 1e-8, np.float32
    for t in range(1, 4):
        grads = {k: rng.normal(size=w.shape).astype(f32) for k, w in ref.items()}
        lr = net.lr * net.lr_scale
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for k, g in grads.items():
            if k in net.decay:
                ref[k] *= f32(1 - lr * p.weight_decay)
            m[k] = f32(b1) * m[k] + f32(1 - b1) * g
            v2[k] = f32(b2) * v2[k] + f32(1 - b2) * (g * g)
            ref[k] -= f32(lr_t) * m[k] / (np.sqrt(v2[k]) + f32(eps))
        net._adamw({k: g.copy() for k, g in grads.items()}, p)
        for k in ref:
            assert np.array_equal(net.params[k], ref[k]), (t, k)


def test_cross_validation_records_each_folds_best_epoch_and_refits_for_their_median():
    from heads.training.data import stratified_folds

    from tests.unit.heads.training.synthetic import linear_problem

    X, y = linear_problem(600, dim=24)
    yi = np.array([int(v[1:]) for v in y])
    p = TrainParams(epochs_max=12, patience=12)
    folds = stratified_folds(yi, 5, 0)
    result = fit_mlp(p, X, yi, 3, K=5, seed=0, epochs=p.epochs_max, folds=folds)
    assert len(result.fold_epochs) == 5 and all(1 <= e <= len(result.lr_plan) for e in result.fold_epochs)
    assert result.refit_epochs() == max(1, int(round(float(np.median(result.fold_epochs)))))
    assert len(result.lr_plan) >= result.epochs  # the schedule as run, replayed by the refit


@pytest.mark.parametrize("head_type,linear_skip", [("mlp", False), ("mlp", True), ("logreg", False)])
def test_out_of_fold_scores_use_only_each_rows_own_fold_member(head_type, linear_skip):
    from heads.training.mlp import _Net

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 24)).astype(np.float32)
    folds = rng.integers(0, 5, 300)
    net = _Net(TrainParams(head_type=head_type, linear_skip=linear_skip, hidden_units=16), 24, 3, 5,
               np.random.default_rng(1))
    for name, value in net.params.items():  # members that differ (zero-initialised weights would not)
        net.params[name] = (value + 0.1 * rng.normal(size=value.shape)).astype(np.float32)
    every_member = net.member_proba(X)[folds, np.arange(len(X))]
    assert np.allclose(net.out_of_fold_proba(X, folds), every_member, atol=1e-6)
