"""One `polyhead train` run's parts: feedback merged into the training split; embedding a training set through a
real gRPC embedder that ends its connections."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from embedder.fake import FakeEmbeddingServable
from embedder.feature_sets import DEFAULT
from heads.training.run import Split, merge_feedback
from polyhead.inference_log.feedback import FeedbackExample


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


class _SlowFake(FakeEmbeddingServable):
    """The fake model at 30 ms a batch: a stream of 40 batches outlives a 0.3 s connection age several times."""

    def embed(self, texts, feature_set=DEFAULT):
        time.sleep(0.03)
        return super().embed(texts, feature_set)


async def test_embed_all_goes_on_when_the_embedder_ends_the_connection_at_its_max_age(tmp_path):
    from embedder.client import EmbedderClient
    from heads.training.run import EMBED_CHUNK, embed_all
    from tests.unit.conftest import running_embedder

    texts = [f"text number {i} about {i % 7}" for i in range(40 * EMBED_CHUNK)]
    async with running_embedder(_SlowFake(), max_connection_age_s=0.3, shutdown_grace_s=0.05,
                                max_batch_size=EMBED_CHUNK) as emb:
        def run():
            with EmbedderClient(emb.target, timeout_s=30) as client:
                whole, fingerprint = embed_all(client, texts)
                one = client.embed(texts[-5:]).vectors
            return whole, fingerprint, one
        whole, fingerprint, one = await asyncio.to_thread(run)
    assert whole.shape == (len(texts), 384) and fingerprint
    np.testing.assert_allclose(whole[-5:], one, rtol=1e-6)  # every row its own text's vector, in order
