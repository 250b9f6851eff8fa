"""The review queue's pool and strategies against real databases (a SQLite file and the shared PostgreSQL).

Rows are inserted directly; vectors are small hand-made arrays, so each pick can be worked out by hand.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from polyhead.inference_log.feedback import find_predictions, store_feedback
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.review import (STRATEGIES, Context, candidate_pool, entropy, farthest_first, margin,
                                           pending_texts, review_summary, select, wilson_interval)
from polyhead.inference_log.schema import feedback, make_engine, migrate, predictions
from polyhead.inference_log.sink import escape_text
from tests.helpers import PostgresBackend
from tests.unit.polyhead.inference_log.test_reports import SqliteFile

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    backend = SqliteFile(tmp_path) if request.param == "sqlite" else PostgresBackend(request.getfixturevalue("postgres_url"))
    engine = make_engine(backend.url)
    migrate(engine)
    yield engine
    engine.dispose()
    backend.close()


def row(rid, text, top_k, *, minutes=0, index=0, head="h", redact=False, version="v1", shadow=None,
        issued: str | None = "same") -> dict:
    """A logged row; the server-issued id (what feedback and review items name) is `rid` unless given
    (None: a row from before migration 5). Shadow rows keep the served row's request id, as heads log them."""
    rec = PredictionRecord.create(request_id=f"client-{rid}", head=head, head_version=version,
                                  embedder_fingerprint="fp", text=text, label=top_k[0][0], probability=top_k[0][1],
                                  top_k=top_k, latency_ms=1.0, text_index=index, redact=redact, shadow=shadow,
                                  issued_id=(rid if issued == "same" else issued) if not shadow else None)
    stored, escaped = escape_text(rec.text)
    return {**dataclasses.asdict(rec), "text": stored, "text_escaped": escaped,
            "ts": T0 + timedelta(minutes=minutes)}


def insert(engine, rows):
    with engine.begin() as conn:
        conn.execute(predictions.insert(), rows)


def give_feedback(engine, rid, label, index=0, strategy=None, head="h"):
    found = find_predictions(engine, head, [(rid, index)])
    store_feedback(engine, head, [(found[(rid, index)], label)], strategies=[strategy])


def test_scores():
    assert margin([{"label": "a", "probability": 0.5}, {"label": "b", "probability": 0.4}]) == pytest.approx(0.1)
    assert margin([{"label": "a", "probability": 0.9}]) == 1.0
    flat = [{"label": x, "probability": 1 / 3} for x in "abc"]
    sure = [{"label": "a", "probability": 0.98}, {"label": "b", "probability": 0.01}]
    assert entropy(flat) == pytest.approx(np.log(3)) and entropy(sure) < 0.2
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(8, 10)
    assert 0.44 < low < 0.8 < high < 0.97  # the Wilson interval of 8/10, by hand: [0.490, 0.943]


def test_pool_skips_labelled_redacted_and_duplicate_texts(engine):
    insert(engine, [
        row("r1", "refund please", [("billing", 0.6), ("account", 0.4)], minutes=1),
        row("r2", "refund please", [("billing", 0.7), ("account", 0.3)], minutes=2),  # duplicate text: newest kept
        row("r3", "app crashes", [("technical", 0.9), ("billing", 0.1)], minutes=3),
        row("r4", "secret text", [("account", 0.5), ("billing", 0.5)], minutes=4, redact=True),
        row("r5", "login fails", [("account", 0.55), ("technical", 0.45)], minutes=5),
        row("r6", "login fails", [("account", 0.8), ("technical", 0.2)], minutes=6),  # same text as the labelled r5
        row("r7", "other head", [("x", 0.5), ("y", 0.5)], minutes=7, head="other"),
        row("r8", "two texts a", [("billing", 0.5), ("technical", 0.5)], minutes=8, index=0),
        row("r8", "two texts b", [("billing", 0.9), ("technical", 0.1)], minutes=8, index=1),
        row("r9", "before issued ids", [("billing", 0.5), ("account", 0.5)], minutes=9, issued=None),  # unnameable
        row("r2", "a challenger's view", [("account", 0.5), ("billing", 0.5)], minutes=2, version="v2", shadow=True),
    ])
    give_feedback(engine, "r5", "technical")
    give_feedback(engine, "r8", "billing", index=1)
    pool = candidate_pool(engine, "h", order="recent", limit=100)
    assert [(c.prediction_id, c.index) for c in pool] == [("r8", 0), ("r3", 0), ("r2", 0)]
    assert all(c.text for c in pool) and all(c.version == "v1" for c in pool)  # never a shadow row
    least = candidate_pool(engine, "h", order="least_confident", limit=2)
    # a duplicated text is found by its least confident row (r1) and ranked by its newest answer (r2)
    assert [(c.prediction_id, c.probability) for c in least] == [("r8", 0.5), ("r2", 0.7)]
    assert len(candidate_pool(engine, "h", order="random", limit=100)) == 3
    assert candidate_pool(engine, "h", order="recent", limit=100, since=T0 + timedelta(minutes=3),
                          until=T0 + timedelta(minutes=8))[0].prediction_id == "r3"


def test_least_confident_ranks_a_text_by_its_newest_answer(engine):
    # "hard" hesitated under v1 and v2 is sure of it; "open" is what v2 hesitates on now
    insert(engine, [row("o1", "hard", [("billing", 0.5), ("account", 0.5)], minutes=1),
                    row("o2", "open", [("billing", 0.6), ("account", 0.4)], minutes=2, version="v2"),
                    row("o3", "hard", [("billing", 0.95), ("account", 0.05)], minutes=3, version="v2"),
                    row("o4", "hard", [("account", 0.55), ("billing", 0.45)], minutes=4, version="v3",
                        shadow=True)])  # a challenger's view: never the newest answer
    pool = candidate_pool(engine, "h", order="least_confident", limit=10)
    assert [(c.prediction_id, c.version, c.probability) for c in pool] == [("o2", "v2", 0.6), ("o3", "v2", 0.95)]
    picked = select(STRATEGIES["uncertain"], pool, 1, Context())
    assert picked[0][0].text == "open"
    as_found = candidate_pool(engine, "h", order="least_confident", limit=10, rank_by_newest=False)
    assert [c.prediction_id for c in as_found] == ["o1", "o2"]  # the old hesitation, as the benchmark's baseline


def test_a_pool_past_the_old_sqlite_parameter_limit_is_ranked_by_newest_answers(engine):
    # 1,200 texts (over SQLite's old 999-parameter limit), each answered by v1 unsure and later by v2 surer
    insert(engine, [row(f"a{i}", f"text {i}", [("billing", 0.5), ("account", 0.5)], minutes=i) for i in range(1200)]
           + [row(f"b{i}", f"text {i}", [("billing", 0.6 + i / 4000), ("account", 0.4 - i / 4000)], minutes=2000 + i,
                  version="v2") for i in range(1200)])
    pool = candidate_pool(engine, "h", order="least_confident", limit=1100)
    assert len(pool) == 1100 and {c.version for c in pool} == {"v2"}
    assert [c.probability for c in pool] == sorted(c.probability for c in pool)


def test_texts_with_nul_come_back_as_sent(engine):
    insert(engine, [row("n1", "a\x00b \\0 c", [("billing", 0.6), ("account", 0.4)])])
    assert [c.text for c in candidate_pool(engine, "h", order="recent", limit=10)] == ["a\x00b \\0 c"]


def test_disagree_picks_texts_a_challenger_answers_otherwise(engine):
    served = [row(f"d{i}", f"text {i}", [("billing", 0.6), ("account", 0.4)], minutes=i) for i in range(5)]
    shadow = [row("d0", "text 0", [("account", 0.7), ("billing", 0.3)], minutes=0, version="v2", shadow=True),
              row("d1", "text 1", [("billing", 0.8), ("account", 0.2)], minutes=1, version="v2", shadow=True),
              row("d2", "text 2", [("account", 0.95), ("billing", 0.05)], minutes=2, version="v2", shadow=True),
              row("d2", "text 2", [("account", 0.55), ("billing", 0.45)], minutes=2, version="v3", shadow=True),
              row("d3", "text 3", [("account", 0.9), ("billing", 0.1)], minutes=3, version="v2", shadow=True)]
    insert(engine, served + shadow)
    give_feedback(engine, "d3", "billing")  # labelled: out of every queue
    disagree = STRATEGIES["disagree"]
    pool = candidate_pool(engine, "h", order=disagree.pool_order, limit=100, disagreeing=disagree.disagreeing)
    assert sorted(c.prediction_id for c in pool) == ["d0", "d2"]  # d1 agrees, d4 has no challenger
    picked = select(disagree, pool, 5, Context())
    assert [(c.prediction_id, c.label, c.challenger["label"], score) for c, score in picked] == \
        [("d2", "billing", "account", 0.95), ("d0", "billing", "account", 0.7)]
    assert picked[0][0].challenger["version"] == "v2"  # of two disagreeing challengers, the surest
    assert candidate_pool(engine, "other", order="recent", limit=10, disagreeing=True) == []


def test_uncertain_ranks_by_margin_or_entropy():
    def cand(rid, top_k):
        from polyhead.inference_log.review import Candidate
        return Candidate(rid, rid, 0, T0, "v1", rid, rid, top_k[0]["label"], top_k[0]["probability"], top_k)

    pool = [cand("sure", [{"label": "a", "probability": 0.9}, {"label": "b", "probability": 0.05}]),
            # a narrow margin but little mass elsewhere vs a wide spread over three labels
            cand("two-way", [{"label": "a", "probability": 0.5}, {"label": "b", "probability": 0.48}]),
            cand("spread", [{"label": "a", "probability": 0.4}, {"label": "b", "probability": 0.3},
                            {"label": "c", "probability": 0.3}])]
    uncertain = STRATEGIES["uncertain"]
    assert [c.prediction_id for c, _ in select(uncertain, pool, 2, Context())] == ["two-way", "spread"]
    by_entropy = select(uncertain, pool, 3, Context(score="entropy"))
    assert [c.prediction_id for c, _ in by_entropy] == ["spread", "two-way", "sure"]
    assert by_entropy[0][1] == pytest.approx(entropy(pool[2].top_k))


def test_ood_and_diverse_use_vectors_and_centroids():
    from polyhead.inference_log.review import Candidate
    pool = [Candidate(str(i), str(i), 0, T0, "v1", str(i), str(i), "a", 0.9, []) for i in range(6)]
    centroids = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    vectors = np.array([[1, 0.05, 0], [0.9, 0.1, 0], [0.05, 1, 0], [0, 0.1, 1], [0, 0.12, 1], [0.7, 0.7, 0.1]],
                       np.float32)
    ctx = Context(vectors=vectors, centroids=centroids)
    ood = select(STRATEGIES["ood"], pool, 2, ctx)
    assert {c.prediction_id for c, _ in ood} == {"3", "4"} and ood[0][1] < 0.2
    diverse = [c.prediction_id for c, _ in select(STRATEGIES["diverse"], pool, 3, ctx)]
    # 3 (or its twin 4) is farthest from both centroids; then the between-centroids 5, not 3's twin
    assert diverse[0] in {"3", "4"} and diverse[1] == "5" and "3" not in diverse[1:] and "4" not in diverse[1:]
    picks = farthest_first(vectors, 10)
    assert sorted(i for i, _ in picks) == list(range(6))  # never the same point twice


def test_clustered_takes_one_uncertain_text_per_group_where_uncertain_takes_near_copies():
    from polyhead.inference_log.review import Candidate
    rng = np.random.default_rng(0)
    directions = np.eye(3, dtype=np.float32)
    pool, vectors = [], []
    # 3 groups of 10 near-identical texts; group 0 the most uncertain, then 1, then 2; then 30 sure ones
    for g, base_margin in enumerate([0.01, 0.05, 0.09, 0.8]):
        for j in range(10 if g < 3 else 30):
            m = base_margin + j * 0.001
            top_k = [{"label": "a", "probability": (1 + m) / 2}, {"label": "b", "probability": (1 - m) / 2}]
            pool.append(Candidate(f"{g}-{j}", f"{g}-{j}", 0, T0, "v1", f"{g}-{j}", f"{g}-{j}", "a", (1 + m) / 2, top_k))
            vectors.append((directions[g % 3] if g < 3 else rng.normal(size=3)) + rng.normal(scale=0.01, size=3))
    ctx = Context(vectors=np.array(vectors, np.float32))
    uncertain = [c.prediction_id for c, _ in select(STRATEGIES["uncertain"], pool, 3, ctx)]
    assert uncertain == ["0-0", "0-1", "0-2"]  # three copies of one question
    clustered = select(STRATEGIES["clustered"], pool, 3, ctx)
    groups = [c.prediction_id.split("-")[0] for c, _ in clustered]
    assert sorted(groups) == ["0", "1", "2"]  # one per group, none of the sure texts
    assert [score for _, score in clustered] == sorted(score for _, score in clustered)  # most uncertain first
    assert select(STRATEGIES["clustered"], pool, 3, ctx) == clustered  # reproducible
    assert len({c.prediction_id for c, _ in select(STRATEGIES["clustered"], pool, 60, ctx)}) == 60


def test_an_empty_pool_selects_nothing_whatever_the_strategy():
    assert all(select(s, [], 5, Context()) == [] for s in STRATEGIES.values())


def test_random_is_reproducible_with_a_seed():
    from polyhead.inference_log.review import Candidate
    pool = [Candidate(str(i), str(i), 0, T0, "v1", str(i), str(i), "a", 0.9, []) for i in range(50)]
    first = [c.prediction_id for c, _ in select(STRATEGIES["random"], pool, 10, Context(seed=7))]
    assert first == [c.prediction_id for c, _ in select(STRATEGIES["random"], pool, 10, Context(seed=7))]
    assert len(set(first)) == 10


def test_summary_splits_feedback_by_strategy_and_estimates_live_accuracy_from_random_only(engine):
    rows = [row(f"r{i}", f"text {i}", [("billing", 0.6), ("account", 0.4)], minutes=i) for i in range(12)]
    insert(engine, rows)
    # uncertain picks: all wrong; random picks: 3 of 4 right; direct: 1 right
    for i in range(4):
        give_feedback(engine, f"r{i}", "account", strategy="uncertain")
    for i, label in zip(range(4, 8), ["billing", "billing", "billing", "account"]):
        give_feedback(engine, f"r{i}", label, strategy="random")
    give_feedback(engine, "r8", "billing")
    give_feedback(engine, "r9", "sarcasm")  # a label the head does not have yet
    give_feedback(engine, "r10", "sarcasm", strategy="uncertain")
    summary = review_summary(engine, "h", since=T0, until=T0 + timedelta(hours=1), known_labels=["billing", "account"])
    assert summary["by_strategy"]["uncertain"]["count"] == 5 and summary["by_strategy"]["uncertain"]["accuracy"] == 0
    assert summary["by_strategy"]["random"]["accuracy"] == 0.75
    assert summary["by_strategy"]["direct"]["count"] == 2
    live = summary["live_accuracy"]
    assert (live["source"], live["count"], live["accuracy"]) == ("random", 4, 0.75)
    assert live["ci95"][0] < 0.75 < live["ci95"][1]
    assert summary["pending_labels"] == {"sarcasm": 2}
    # known labels read off the log when not given: billing is predicted, account and sarcasm are not
    assert review_summary(engine, "h", since=T0, until=T0 + timedelta(hours=1))["pending_labels"] == \
        {"account": 5, "sarcasm": 2}
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(feedback.c.request_id, feedback.c.review_strategy)).all())
    assert stored["r0"] == "uncertain" and stored["r8"] is None


def test_pending_texts_are_the_feedback_of_labels_the_version_lacks(engine):
    insert(engine, [row("a", "sarcastic one", [("billing", 0.6)]), row("b", "sarcastic two", [("billing", 0.7)], minutes=1),
                    row("c", "plain bill", [("billing", 0.9)], minutes=2),
                    row("d", "hidden", [("billing", 0.5)], minutes=3, redact=True),
                    row("e", "other head", [("billing", 0.5)], head="g")])
    for rid, label in (("a", "sarcasm"), ("b", "sarcasm"), ("c", "billing"), ("d", "sarcasm")):
        give_feedback(engine, rid, label)
    give_feedback(engine, "e", "sarcasm", head="g")
    assert pending_texts(engine, "h", ["billing", "technical"]) == ["sarcastic two", "sarcastic one"]  # newest first
    assert pending_texts(engine, "h", ["billing", "sarcasm"]) == []  # a class now: nothing pending
    assert pending_texts(engine, "h", ["billing"], limit=1) == ["sarcastic two"]


def test_new_label_ranks_by_similarity_to_the_pending_feedback():
    from polyhead.inference_log.review import Candidate
    pool = [Candidate(str(i), str(i), 0, T0, "v1", str(i), str(i), "a", 0.9, []) for i in range(4)]
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0, 1]], np.float32)
    ctx = Context(vectors=vectors, pending=np.array([[0, 1, 0], [0, 0.2, 1]], np.float32))
    picked = select(STRATEGIES["new_label"], pool, 3, ctx)
    assert [c.row_id for c, _ in picked] == ["1", "3", "2"]
    assert [round(s, 3) for _, s in picked] == [1.0, 0.981, 0.8]
    assert STRATEGIES["new_label"].fallback == "uncertain" and STRATEGIES["new_label"].needs_pending


def test_balanced_takes_the_least_confident_of_each_answered_label_in_turn():
    from polyhead.inference_log.review import Candidate

    def cand(rid, label, m):
        top_k = [{"label": label, "probability": (1 + m) / 2}, {"label": "z", "probability": (1 - m) / 2}]
        return Candidate(rid, rid, 0, T0, "v1", rid, rid, label, (1 + m) / 2, top_k)

    # label a: the five least confident texts; b and c less uncertain
    pool = [cand(f"a{i}", "a", 0.01 * i) for i in range(5)] + [cand("b0", "b", 0.2), cand("b1", "b", 0.3),
                                                              cand("c0", "c", 0.25)]
    assert [c.prediction_id for c, _ in select(STRATEGIES["uncertain"], pool, 4, Context())] == ["a0", "a1", "a2", "a3"]
    balanced = select(STRATEGIES["balanced"], pool, 5, Context())
    assert [c.prediction_id for c, _ in balanced] == ["a0", "b0", "c0", "a1", "b1"]
    assert balanced[1][1] == pytest.approx(0.2)  # the item's score is its margin
    assert len(select(STRATEGIES["balanced"], pool, 100, Context())) == len(pool)
    by_entropy = [c.prediction_id for c, _ in select(STRATEGIES["balanced"], pool, 3, Context(score="entropy"))]
    assert by_entropy == ["a0", "b0", "c0"]
