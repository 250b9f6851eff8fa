"""New labels from feedback: the head config's `labels` policy and how training data takes them in."""

from __future__ import annotations

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
