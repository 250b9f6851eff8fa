"""Self-training's pieces: the threshold chosen on validation data, the confident logged texts, the cap."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np

from heads.training.pseudo_labels import choose_threshold, confident_predictions, pick, reliability
from polyhead.inference_log.feedback import find_predictions, store_feedback
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.schema import make_engine, migrate, predictions
from polyhead.inference_log.sink import escape_text


def test_the_threshold_is_the_lowest_that_reaches_the_precision_on_enough_held_out_texts():
    # 100 held-out texts: the top probability rises with i; the first 40 are wrong half the time, the rest right
    top = np.linspace(0.5, 0.99, 100)
    proba = np.stack([top, 1 - top], axis=1)
    truth = np.array([0 if i >= 40 or i % 2 else 1 for i in range(100)])
    table = reliability(proba, truth)
    assert table["n"] == table["support"][0] == 100 and table["correct"][0] == 80 and len(table["thresholds"]) == len(table["support"])
    t, precision, support = choose_threshold(table, target_precision=0.97, min_support=30)
    assert precision >= 0.97 and support >= 30
    assert t <= top[40] + 0.01 and t > top[30]  # about where the mistakes stop
    assert choose_threshold(table, target_precision=0.97, min_support=70) is None
    assert choose_threshold(reliability(proba, np.ones(100, int)), target_precision=0.5, min_support=1) is None


def test_training_records_the_held_out_table_from_out_of_fold_answers_not_the_refit():
    """The refitted model is right on nearly every text it was fitted on; its out-of-fold answers are the
    honest ones, and they are what metrics.json keeps for self-training's threshold."""
    from heads.training.fit import train_head
    from heads.training.params import TrainParams

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 40))
    y = np.where(X[:, 0] + rng.normal(scale=1.5, size=300) > 0, "a", "b")  # noisy labels: ~70 % learnable
    result = train_head(X, y, params=TrainParams(families=["logreg"]))
    assert result.val_source == "cv" and result.val_truth.shape == (300,)
    held_out = reliability(result.val_proba, result.val_truth)
    refit = reliability(result.model.predict_proba(X), np.array([result.model.labels.index(v) for v in y]))
    assert held_out["correct"][0] / 300 < refit["correct"][0] / 300 - 0.05


def test_confident_predictions_are_of_the_champion_unlabelled_distinct_and_most_sure_first(tmp_path):
    url = f"sqlite:///{tmp_path / 'inference.db'}"
    engine = make_engine(url)
    migrate(engine)

    def row(rid, text, p, version="v2", redact=False, abstained=False, shadow=None):
        rec = PredictionRecord.create(request_id=rid, head="h", head_version=version, embedder_fingerprint="fp",
                                      text=text, label="billing", probability=p, top_k=[("billing", p)],
                                      latency_ms=1.0, text_index=0, redact=redact, abstained=abstained,
                                      issued_id=None if shadow else rid, shadow=shadow)
        stored, escaped = escape_text(rec.text)
        return {**dataclasses.asdict(rec), "text": stored, "text_escaped": escaped,
                "ts": datetime(2026, 3, 1, tzinfo=timezone.utc)}

    with engine.begin() as conn:
        conn.execute(predictions.insert(), [
            row("a", "sure", 0.99), row("b", "sure", 0.97), row("c", "surer", 0.995), row("d", "unsure", 0.6),
            row("e", "old version", 0.99, version="v1"), row("f", "secret", 0.99, redact=True),
            row("g", "labelled", 0.99), row("h", "abstained", 0.99, abstained=True),
            # the same text answered in shadow by v2 (then a challenger): labelled all the same
            row("g2", "labelled", 0.99, shadow=True), row("n", "nul\x00", 0.95)])
    found = find_predictions(engine, "h", [("g", 0)])
    store_feedback(engine, "h", [(found[("g", 0)], "technical")])
    engine.dispose()
    rows = confident_predictions(url, "h", "v2", 0.9)
    assert [(t, round(p, 3)) for t, _, p in rows] == [("surer", 0.995), ("sure", 0.99), ("nul\x00", 0.95)]
    assert pick(rows, exclude={"surer"}, known_labels={"billing"}, cap=5) == rows[1:]
    assert pick(rows, exclude=set(), known_labels={"billing"}, cap=1) == [rows[0]]
    assert pick(rows, exclude=set(), known_labels={"technical"}, cap=5) == []
