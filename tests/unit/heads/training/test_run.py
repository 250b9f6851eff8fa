"""One `polyhead train` run's parts that need no embedder: feedback merged into the training split."""

from __future__ import annotations

from polyhead.inference_log.feedback import FeedbackExample
from heads.training.run import Split, merge_feedback


def test_merge_feedback_skips_and_counts_duplicates_redacted_and_unknown_labels():
    train = Split(["card declined", "app crashes"], ["billing", "technical"])
    examples = [FeedbackExample("late parcel", "billing"),  # oldest: overridden by the later label below
                FeedbackExample(None, "billing"),  # redacted in the log
                FeedbackExample(" card declined ", "billing"),  # already in the data (whitespace aside)
                FeedbackExample("in the test split", "technical"),
                FeedbackExample("weather today", "smalltalk"),  # a label the data does not have
                FeedbackExample("late parcel", "technical"),
                FeedbackExample("reset password", "technical")]
    merged, counts = merge_feedback(train, examples, exclude={"card declined", "app crashes", "in the test split"})
    assert merged.texts == ["card declined", "app crashes", "late parcel", "reset password"]
    assert merged.labels == ["billing", "technical", "technical", "technical"]
    assert {k: v for k, v in counts.items() if k != "sha256"} == {
        "feedback_rows": 7, "added": 2, "duplicates_skipped": 3, "redacted_skipped": 1, "unknown_label_skipped": 1}
    assert counts["sha256"].startswith("sha256:")
    assert train.texts == ["card declined", "app crashes"]  # the input split is not changed
