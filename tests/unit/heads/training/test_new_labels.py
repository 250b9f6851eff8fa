"""New labels from feedback: the head config's `labels` policy and how training data takes them in."""

from __future__ import annotations

import numpy as np
import pytest

from heads.config import HeadConfig
from heads.training.run import Split, merge_feedback
from polyhead.inference_log.feedback import FeedbackExample


def config(**extra) -> HeadConfig:
    return HeadConfig.model_validate({"name": "h", "dataset": {"train": "t.jsonl"}, **extra})


def test_label_policy_in_the_config():
    assert config().labels == "closed" and not config().allows_new_label("sarcasm")
    assert config(labels="open").allows_new_label("anything")
    listed = config(labels=["sarcasm", "refund"], min_new_label_examples=3)
    assert listed.allows_new_label("sarcasm") and not listed.allows_new_label("weather")
    assert listed.min_new_label_examples == 3
    for bad in ({"labels": "sometimes"}, {"labels": [""]}, {"labels": ["  "]}, {"min_new_label_examples": 0}):
        with pytest.raises(ValueError):
            config(**bad)


def test_a_new_label_becomes_a_class_at_the_threshold_and_stays_pending_below_it():
    train = Split(["card declined", "app crashes"], ["billing", "technical"])
    examples = ([FeedbackExample(f"oh great, another outage {i}", "sarcasm") for i in range(3)]
                + [FeedbackExample(f"refund number {i}", "refund") for i in range(2)]
                + [FeedbackExample("weather today", "smalltalk"),  # not allowed by the config
                   FeedbackExample("late parcel", "billing")])
    allowed = config(labels=["sarcasm", "refund"]).allows_new_label
    merged, counts = merge_feedback(train, examples, exclude=set(train.texts), allows_new_label=allowed,
                                    min_new_label_examples=3)
    assert merged.labels.count("sarcasm") == 3 and "refund" not in merged.labels and "smalltalk" not in merged.labels
    assert merged.texts[-1] == "late parcel" and merged.texts[2] == "oh great, another outage 0"  # oldest first
    assert counts["new_classes"] == ["sarcasm"] and counts["pending_labels"] == {"refund": 2}
    assert (counts["added"], counts["pending_skipped"], counts["unknown_label_skipped"]) == (4, 2, 1)
    closed, closed_counts = merge_feedback(train, examples, exclude=set(train.texts))
    assert closed.labels == ["billing", "technical", "billing"] and closed_counts["unknown_label_skipped"] == 6
    assert "new_classes" not in closed_counts


def test_new_class_weights_count_a_new_class_like_an_average_one_within_the_cap():
    from heads.training.fit import new_class_weights

    y = np.array([0] * 100 + [1] * 50 + [2] * 10)
    labels = ["a", "b", "sarcasm"]
    assert new_class_weights(y, labels, ["sarcasm"], 5.0) == {"sarcasm": 5.0}  # mean 75 / 10, capped
    assert new_class_weights(y, labels, ["sarcasm"], 20.0) == {"sarcasm": 7.5}
    assert new_class_weights(np.array([0] * 10 + [1] * 10 + [2] * 30), labels, ["sarcasm"], 5.0) == {"sarcasm": 1.0}
    assert new_class_weights(y, labels, [], 5.0) == {} and new_class_weights(y, labels, ["sarcasm"], 1.0) == {}


def test_a_new_class_with_few_examples_is_predicted_more_once_weighted():
    """Two well-separated old classes and a rare new one overlapping them: weighting the new class up
    raises its recall, and the weights are recorded with the selection."""
    from heads.training.fit import train_head
    from heads.training.params import TrainParams

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    centres[2] = 0.55 * centres[0] + 0.45 * centres[2]  # the new class sits close to "a"
    counts = {"a": 300, "b": 300, "new": 8}
    X = np.concatenate([centres[i] + rng.normal(scale=1.0, size=(n, 16)) for i, n in enumerate(counts.values())])
    y = [label for label, n in counts.items() for _ in range(n)]
    X_test = np.concatenate([centres[i] + rng.normal(scale=1.0, size=(200, 16)) for i in range(3)])
    y_test = np.array([label for label in counts for _ in range(200)])
    params = TrainParams(families=["logreg"])
    plain = train_head(X, y, params=params)
    weighted = train_head(X, y, params=params, new_classes=["new"])
    recall = {name: float(np.mean(np.array(r.model.predict(X_test))[y_test == "new"] == "new"))
              for name, r in (("plain", plain), ("weighted", weighted))}
    assert recall["weighted"] > recall["plain"] + 0.05, recall
    assert weighted.selection["new_class_weights"] == {"new": 5.0} and "new_class_weights" not in plain.selection
    off = train_head(X, y, params=params.model_copy(update={"new_class_max_weight": 1.0}), new_classes=["new"])
    assert np.allclose(off.model.predict_proba(X_test), plain.model.predict_proba(X_test))
