"""Feedback: the true label of a logged prediction, sent later (POST /v1/models/{name}/feedback).

A feedback names a request (``request_id``, as the predict answer and its x-request-id header gave
it) and, for a request with several texts, the text's position ``index`` (default 0). It is stored
against the logged prediction row it matched when it arrived; a second feedback for the same
(head, request, index) replaces the first. ``feedback_examples`` reads them back for retraining.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

from polyhead.inference_log.schema import dialect_insert, feedback, predictions

Key = tuple[str, int]  # (request_id, index)


@dataclass(frozen=True)
class LoggedPrediction:
    id: str
    request_id: str
    index: int
    version: str
    label: str
    ts: datetime


@dataclass(frozen=True)
class FeedbackExample:
    text: str | None  # None when the log redacted it
    label: str


def find_predictions(engine: sa.Engine, head: str, keys: list[Key]) -> dict[Key, LoggedPrediction]:
    """The logged prediction of each (request_id, index) found; a request id reused by a client
    matches its latest request. Rows from before migration 2 (no text_index) answer index 0."""
    if not keys:
        return {}
    p = predictions
    index = sa.func.coalesce(p.c.text_index, 0)
    found: dict[Key, LoggedPrediction] = {}
    ids = sorted({rid for rid, _ in keys})
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):  # bounded IN lists
            rows = conn.execute(sa.select(p.c.id, p.c.request_id, index.label("idx"), p.c.head_version, p.c.label,
                                          p.c.ts)
                                .where(p.c.head == head, p.c.request_id.in_(ids[start:start + 500])))
            for row in rows:
                key = (row.request_id, int(row.idx))
                if key not in found or row.ts > found[key].ts:
                    found[key] = LoggedPrediction(row.id, row.request_id, int(row.idx), row.head_version, row.label,
                                                  row.ts)
    wanted = set(keys)
    return {k: v for k, v in found.items() if k in wanted}


def store_feedback(engine: sa.Engine, head: str, matched: list[tuple[LoggedPrediction, str]],
                   strategies: list[str | None] | None = None) -> list[bool]:
    """Upsert (prediction, true label) pairs in one transaction; True where an earlier feedback was replaced.

    ``matched`` must not repeat a (request_id, index): the caller keeps the last of duplicates.
    ``strategies``: per pair, the review strategy that picked the text (None: direct feedback)."""
    if not matched:
        return []
    now = datetime.now(timezone.utc)
    f = feedback
    rows = [{"id": uuid.uuid4().hex, "head": head, "request_id": pred.request_id, "text_index": pred.index,
             "label": label, "ts": now, "prediction_id": pred.id, "prediction_ts": pred.ts,
             "head_version": pred.version, "predicted_label": pred.label,
             "review_strategy": strategy}
            for (pred, label), strategy in zip(matched, strategies or [None] * len(matched))]
    insert = dialect_insert(engine, f)
    upsert = insert.on_conflict_do_update(
        index_elements=[f.c.head, f.c.request_id, f.c.text_index],
        set_={c: insert.excluded[c] for c in ("label", "ts", "prediction_id", "prediction_ts", "head_version",
                                              "predicted_label", "review_strategy")})
    existing: set[Key] = set()
    ids = sorted({r["request_id"] for r in rows})
    with engine.connect() as conn:
        # SQLite: take the write lock first (BEGIN IMMEDIATE, which waits out the busy timeout). A read
        # upgraded to a write fails at once with "database is locked" when a head's writer committed
        # in between; the read here decides what the upsert replaces, so it must see the same state.
        conn.execution_options(polyhead_immediate=True)
        with conn.begin():
            for start in range(0, len(ids), 500):
                existing |= {(rid, int(i)) for rid, i in conn.execute(
                    sa.select(f.c.request_id, f.c.text_index).where(f.c.head == head,
                                                                     f.c.request_id.in_(ids[start:start + 500])))}
            conn.execute(upsert, rows)
    return [(pred.request_id, pred.index) in existing for pred, _ in matched]


def existing_feedback(engine: sa.Engine, head: str, keys: list[Key]) -> list[bool]:
    """For each (request_id, index): does a feedback for it exist already (a store would replace it)?"""
    f = feedback
    ids = sorted({rid for rid, _ in keys})
    found: set[Key] = set()
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            found |= {(rid, int(i)) for rid, i in conn.execute(
                sa.select(f.c.request_id, f.c.text_index).where(f.c.head == head,
                                                                 f.c.request_id.in_(ids[start:start + 500])))}
    return [key in found for key in keys]


def feedback_examples(engine: sa.Engine, head: str) -> list[FeedbackExample]:
    """Every stored feedback of ``head`` with its logged text (None where redacted), oldest first."""
    query = (sa.select(predictions.c.text, feedback.c.label)
             .select_from(feedback.join(predictions, feedback.c.prediction_id == predictions.c.id))
             .where(feedback.c.head == head).order_by(feedback.c.ts, feedback.c.id))
    with engine.connect() as conn:
        return [FeedbackExample(text, label) for text, label in conn.execute(query)]
