"""train_head: seeded, learns, weights classes, picks its validation source and selects across families."""

from __future__ import annotations

import numpy as np

from heads.model import HeadModel
from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.params import TrainParams
from tests.unit.heads.training.synthetic import FAST, clusters, linear_problem, xor_problem


def test_training_is_seeded_and_reproducible():
    X, y = clusters({"a": 60, "b": 60, "c": 60})
    first = train_head(X, y, params=FAST, seed=3).model
    second = train_head(X, y, params=FAST, seed=3).model
    assert first.labels == second.labels == ["a", "b", "c"]
    for name in first.weights:
        assert np.array_equal(first.weights[name], second.weights[name]), name
    mlp = FAST.model_copy(update={"families": ["mlp"]})
    a, b = train_head(X, y, params=mlp, seed=3).model, train_head(X, y, params=mlp, seed=4).model
    assert any(not np.array_equal(a.weights[n], b.weights[n]) for n in a.weights)  # the seed reaches the MLP
    if first.head_type == "logreg":  # refitted from a cold start on all the data: the seed only picks the split
        other = train_head(X, y, params=FAST, seed=4).model
        assert other.head_type != "logreg" or all(np.array_equal(first.weights[n], other.weights[n])
                                                   for n in first.weights)


def test_learns_separable_clusters():
    X, y = clusters({"a": 80, "b": 80, "c": 80}, spread=1.2)
    Xt, yt = clusters({"a": 30, "b": 30, "c": 30}, spread=1.2, sample_seed=1)  # same centres, new points
    model = train_head(X, y, params=FAST).model
    assert evaluate(model, Xt, yt)["accuracy"] > 0.95
    proba = model.predict_proba(Xt)
    assert proba.shape == (90, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_class_weighting_helps_the_minority_class():
    # Heavily overlapping classes, 20:1 imbalance: unweighted training mostly ignores "rare".
    X, y = clusters({"common": 600, "rare": 30}, spread=6.0, seed=1)
    Xt, yt = clusters({"common": 300, "rare": 300}, spread=6.0, seed=1, sample_seed=1)
    recall = {}
    for mode in ("balanced", "none"):
        params = FAST.model_copy(update={"class_weighting": mode, "prior_adjustment": 0.0})
        report = evaluate(train_head(X, y, params=params).model, Xt, yt)
        recall[mode] = report["per_class"]["rare"]["recall"]
    assert recall["balanced"] > recall["none"] + 0.05, recall


def test_save_load_round_trip_is_exact(tmp_path):
    X, y = clusters({"x": 40, "y": 40})
    model = train_head(X, y, params=FAST).model
    path = model.save(tmp_path / "weights.npz")
    loaded = HeadModel.load(path)
    assert loaded.labels == model.labels and loaded.head_type == model.head_type
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_validation_source_given_cv_or_split():
    X, y = clusters({"a": 30, "b": 10})
    assert train_head(X, y, params=FAST.model_copy(update={"cv_folds": 5})).val_source == "cv"
    result = train_head(X, y, params=FAST.model_copy(update={"cv_folds": 5, "cv_max_examples": 10}))
    assert result.val_source == "split" and result.n_val == 4  # 10 % of each class


def best_score(result, family: str) -> float:
    return max(c["val_score"] for c in result.selection["candidates"] if c["family"] == family)


def test_selection_picks_logreg_on_a_linear_problem_and_records_every_candidate():
    X, y = linear_problem(400)
    Xv, yv = linear_problem(400, sample_seed=1)
    Xt, yt = linear_problem(600, sample_seed=2)
    p = FAST.model_copy(update={"logreg_c_grid": [0.01, 0.1, 1.0]})
    result = train_head(X, y, Xv, yv, params=p)
    sel = result.selection
    assert sel["source"] == "given" and sel["metric"] == "accuracy"
    assert sel["chosen"]["family"] == "logreg" and result.model.head_type == "logreg"
    assert best_score(result, "logreg") >= best_score(result, "mlp") + 0.03  # measured: 0.86 vs 0.78
    chosen = sel["chosen"]
    assert result.val_score == next(c["val_score"] for c in sel["candidates"]
                                    if c["family"] == chosen["family"] and c["params"] == chosen["params"])
    families = [c["family"] for c in sel["candidates"]]
    assert families.count("mlp") == len(p.candidates()) == 1
    tried = [c["params"]["C"] for c in sel["candidates"] if c["family"] == "logreg"]
    grid = [0.01, 0.1, 1.0]  # walked from the middle, recorded ascending; a contiguous run of the grid
    assert 0.1 in tried and len(tried) >= 2 and tried == grid[grid.index(tried[0]):grid.index(tried[0]) + len(tried)]
    for c in sel["candidates"]:
        assert set(c) >= {"family", "params", "val_score", "prior_adjustment", "time_s"}
        assert 0.0 <= c["val_score"] <= 1.0
    assert result.model.meta["selection"] == sel  # travels with the weights
    # the chosen family generalises: better than the MLP would have done on fresh data
    mlp_only = train_head(X, y, Xv, yv, params=p.model_copy(update={"families": ["mlp"]}))
    assert mlp_only.model.head_type == "mlp"
    assert evaluate(result.model, Xt, yt)["accuracy"] >= evaluate(mlp_only.model, Xt, yt)["accuracy"] + 0.02


def test_selection_picks_the_mlp_when_it_validates_better():
    X, y = xor_problem(1500)
    Xv, yv = xor_problem(500, seed=1)
    result = train_head(X, y, Xv, yv, params=FAST.model_copy(update={"logreg_c_grid": [0.1, 1.0]}))
    assert result.selection["chosen"]["family"] == "mlp" and result.model.head_type == "mlp"
    assert best_score(result, "mlp") > best_score(result, "logreg") + 0.2  # logreg is at chance here


def test_selection_under_cross_validation_and_without_refit():
    X, y = linear_problem(200)
    p = TrainParams(families=["logreg"], cv_folds=4, refit=False, logreg_c_grid=[0.1])
    result = train_head(X, y, params=p)
    assert result.val_source == "cv" and result.n_val == 200
    assert result.model.head_type == "logreg" and result.model.n_members == 4  # the fold fits, as an ensemble
    refit = train_head(X, y, params=p.model_copy(update={"refit": True}))
    assert refit.model.n_members == 1 and refit.val_score == result.val_score  # same out-of-fold selection


def test_selection_is_deterministic_per_seed():
    X, y = linear_problem(150)
    first = train_head(X, y, params=FAST, seed=5)
    second = train_head(X, y, params=FAST, seed=5)
    clocks = ("time_s", "cpu_s")
    strip = [{k: v for k, v in c.items() if k not in clocks} for c in first.selection["candidates"]]
    assert strip == [{k: v for k, v in c.items() if k not in clocks} for c in second.selection["candidates"]]
    assert first.model.head_type == second.model.head_type
    for name in first.model.weights:
        assert np.array_equal(first.model.weights[name], second.model.weights[name]), name


def test_every_candidate_and_the_final_fit_record_their_cpu_seconds():
    X, y = linear_problem(300)
    result = train_head(X, y, params=FAST.model_copy(update={"families": ["mlp", "logreg", "blend"],
                                                          "logreg_c_grid": [10.0]}), seed=0)
    sel = result.selection
    assert [c["family"] for c in sel["candidates"]] == ["mlp", "logreg", "blend"]
    assert all(c["cpu_s"] >= 0 and c["time_s"] >= 0 for c in sel["candidates"])
    assert sel["candidates"][0]["cpu_s"] > 0  # the MLP's fit is real work, not a constant
    assert sel["final"]["refit"] is True and sel["final"]["cpu_s"] > 0
    searched = sum(c["cpu_s"] for c in sel["candidates"]) + sel["final"]["cpu_s"]
    assert searched <= result.train_cpu_s + 1e-3 and result.model.meta["train_cpu_s"] >= round(searched, 3) - 5e-3
