"""Head training on real data embedded by the real model (moved from tests/unit: it loads TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from heads.training.evaluation import evaluate
from heads.training.fit import train_head


@pytest.mark.needs_shared_datasets
def test_real_clinc_domain_beats_a_logistic_regression_floor(shared_datasets, servable):
    """CLINC150 banking (15 intents, 1500 train / 300 val / 450 test texts), embedded in the test by
    the real exported model (the session-scoped `servable`), trained with the default params."""
    import json

    def load(split):
        path = shared_datasets / "clinc150" / "domains" / "banking" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
        vectors = np.concatenate([servable.embed(texts[i:i + 64]).vectors for i in range(0, len(texts), 64)])
        return vectors, labels

    X, y = load("train")
    Xv, yv = load("val")
    Xt, yt = load("test")
    assert len(y) == 1500 and len(set(y)) == 15
    result = train_head(X, y, Xv, yv, seed=0)
    accuracy = evaluate(result.model, Xt, yt)["accuracy"]
    # LogisticRegression(C=10) on the same embeddings: 0.960 test accuracy (fitted on train; measured
    # with scripts/bench/heads.py). Ours: 0.951-0.960 over seeds 0-2. The floor leaves room for seeds.
    assert accuracy >= 0.94, accuracy
    assert result.val_source == "given"  # training time is measured in scripts/bench/heads.py, not asserted here
