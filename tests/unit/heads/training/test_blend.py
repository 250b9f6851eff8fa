"""The blend family: MLP members and logistic regression averaged in probability, served as an mlp head."""

from __future__ import annotations

import numpy as np

from heads.model import HeadModel
from heads.training.blend import combine
from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.params import TrainParams
from tests.unit.heads.training.synthetic import linear_problem, xor_problem


def test_the_combined_head_averages_its_parts_probabilities(tmp_path):
    X, y = linear_problem(300, dim=12)
    mlp = train_head(X, y, params=TrainParams(families=["mlp"], epochs_max=5, cv_folds=0), seed=0).model
    lr = train_head(X, y, params=TrainParams(families=["logreg"], cv_folds=0), seed=0).model
    assert mlp.head_type == "mlp" and lr.head_type == "logreg" and mlp.n_members == 2
    both = combine(mlp, lr, {"note": "x"})
    expected = (2 * mlp.predict_proba(X) + lr.predict_proba(X)) / 3
    assert both.head_type == "mlp" and both.n_members == 3
    assert np.allclose(both.predict_proba(X), expected, atol=1e-5)
    loaded = HeadModel.load(both.save(tmp_path / "w.npz"))  # the serving format, unchanged
    assert np.array_equal(loaded.predict_proba(X), both.predict_proba(X))


def test_blend_is_searched_from_its_parts_chosen_on_evidence_and_served():
    X, y = xor_problem(1500, dim=16)
    Xt, yt = xor_problem(500, dim=16, seed=7)
    p = TrainParams(families=["logreg", "blend"], logreg_c_grid=[10.0], epochs_max=25, selection_alpha=0.05)
    result = train_head(X, y, params=p, seed=0)
    sel = result.selection
    assert [c["family"] for c in sel["candidates"]] == ["logreg", "blend"]
    blend = sel["candidates"][1]
    assert blend["params"] == {"mlp": {"hidden_units": 128}, "logreg": {"C": 10.0}}
    assert blend["logreg_weight"] == round(1 / 3, 4) and len(blend["fold_epochs"]) == 5
    assert blend["refit_epochs"] == int(round(float(np.median(blend["fold_epochs"]))))
    assert sel["chosen"]["family"] == "blend"  # XOR: logistic regression is at chance, the MLP part is not
    model = result.model
    assert model.head_type == "mlp" and model.n_members == 3 and "Ws" in model.weights
    assert evaluate(model, Xt, yt)["accuracy"] > 0.75


def test_on_all6_the_blend_reads_the_default_logreg_from_its_block_without_refitting_logreg_on_all6():
    rng = np.random.default_rng(0)
    n = 900
    default = 0.05 * rng.normal(size=(n, 384)).astype(np.float32)
    signal = rng.normal(size=(n, 2)).astype(np.float32)
    y = ["same" if v > 0 else "diff" for v in signal[:, 0] * signal[:, 1]]  # XOR: only all6's block 0 has it
    all6 = np.zeros((n, 2304), np.float32)
    all6[:, :2] = 3 * signal
    all6[:, 1920:] = default  # all6's last block is the default vector
    p = TrainParams(families=["logreg", "blend"], logreg_c_grid=[10.0], epochs_max=20, selection_alpha=0.05)
    result = train_head({"default": default, "all6": all6}, y, params=p, seed=0)
    sel = result.selection
    # no logreg fitted on all6, no blend on default (all6 holds it: mlp_on_contained_sets)
    assert [(c["family"], c["feature_set"]) for c in sel["candidates"]] == [("logreg", "default"), ("blend", "all6")]
    blend6 = sel["candidates"][1]
    assert blend6["logreg_on"] == "default" and blend6["logreg_columns"] == [1920, 2304]
    assert (sel["chosen"]["family"], result.feature_set) == ("blend", "all6")
    model = result.model
    assert model.input_dim == 2304 and model.n_members == 3
    assert not model.weights["Ws"][2, :1920].any()  # the logreg member reads the default block only
    lr = train_head(default, y, params=TrainParams(families=["logreg"], cv_folds=0), seed=0).model
    assert np.allclose(model.weights["Ws"][2, 1920:], lr.weights["W"][0], atol=1e-4)  # the same refit
