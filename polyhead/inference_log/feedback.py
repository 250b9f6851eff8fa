"""Feedback: the true label of a logged prediction, sent later (POST /v1/models/{name}/feedback).

A feedback names a request by the id the server issued for it (``prediction_id`` in the predict
answer and its x-prediction-id header: unguessable, unlike a client's x-request-id, which stays a
correlation id only) and, for a request with several texts, the text's position ``index`` (default
0). It is stored against the logged prediction row it matched when it arrived, with the API key
that gave it (``given_by``); a second feedback for the same (head, request, index) replaces the
first. Who may label which prediction is the gateway's rule (gateway/insights.py: the key that
asked, or a labeller key). ``feedback_examples`` reads them back for retraining, optionally only
those given by trusted keys; a training run that read all of a head's feedback records how far
(``record_training_feedback``), and only then may retention prune the raw rows it labels (sink.prune).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

from polyhead.inference_log.rollups import hour_of
from polyhead.inference_log.schema import (dialect_insert, feedback, predictions, rollup_feedback, served_only,
                                           training_feedback)
from polyhead.inference_log.sink import unescape_text

Key = tuple[str, int]  # (prediction_id, index)
# feedback_examples(given_by=...): this name stands for feedback given with no API key (keys off).
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class LoggedPrediction:
    id: str
    request_id: str  # the id the feedback named: the server-issued prediction_id
    index: int
    version: str
    label: str
    ts: datetime
    caller: str | None = None  # the API key (name) that asked for it; None: keys were off


@dataclass(frozen=True)
class FeedbackExample:
    text: str | None  # None when the log redacted it
    label: str
    ts: datetime | None = None  # when the feedback (its latest label) arrived: what training_feedback records


def find_predictions(engine: sa.Engine, head: str, keys: list[Key]) -> dict[Key, LoggedPrediction]:
    """The logged prediction of each (prediction_id, index) found. Rows from before migration 5 have no
    prediction_id and cannot be named (a client's request id could be anybody's)."""
    if not keys:
        return {}
    p = predictions
    index = sa.func.coalesce(p.c.text_index, 0)
    found: dict[Key, LoggedPrediction] = {}
    ids = sorted({rid for rid, _ in keys})
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):  # bounded IN lists
            rows = conn.execute(sa.select(p.c.id, p.c.issued_id, index.label("idx"), p.c.head_version, p.c.label,
                                          p.c.ts, p.c.caller)
                                .where(p.c.head == head, p.c.issued_id.in_(ids[start:start + 500]),
                                       served_only()))  # the caller's answer, not a challenger's
            for row in rows:
                key = (row.issued_id, int(row.idx))
                if key not in found or row.ts > found[key].ts:
                    found[key] = LoggedPrediction(row.id, row.issued_id, int(row.idx), row.head_version, row.label,
                                                  row.ts, row.caller)
    wanted = set(keys)
    return {k: v for k, v in found.items() if k in wanted}


def store_feedback(engine: sa.Engine, head: str, matched: list[tuple[LoggedPrediction, str]],
                   given_by: str | None = None, strategies: list[str | None] | None = None) -> list[bool]:
    """Upsert (prediction, true label) pairs in one transaction; True where an earlier feedback was replaced.
    ``given_by``: the API key (name) that sent them, recorded with each label (None: keys are off).

    ``matched`` must not repeat a (request_id, index): the caller keeps the last of duplicates.
    ``strategies``: per pair, the review strategy that picked the text (None: direct feedback)."""
    if not matched:
        return []
    now = datetime.now(timezone.utc)
    f = feedback
    rows = [{"id": uuid.uuid4().hex, "head": head, "request_id": pred.request_id, "text_index": pred.index,
             "label": label, "ts": now, "prediction_id": pred.id, "prediction_ts": pred.ts,
             "head_version": pred.version, "predicted_label": pred.label, "given_by": given_by,
             "review_strategy": strategy}
            for (pred, label), strategy in zip(matched, strategies or [None] * len(matched))]
    insert = dialect_insert(engine, f)
    upsert = insert.on_conflict_do_update(
        index_elements=[f.c.head, f.c.request_id, f.c.text_index],
        set_={c: insert.excluded[c] for c in ("label", "ts", "prediction_id", "prediction_ts", "head_version",
                                              "predicted_label", "given_by", "review_strategy")})
    existing: dict[Key, tuple] = {}
    ids = sorted({r["request_id"] for r in rows})
    with engine.connect() as conn:
        # SQLite: take the write lock first (BEGIN IMMEDIATE, which waits out the busy timeout). A read
        # upgraded to a write fails at once with "database is locked" when a head's writer committed
        # in between; the read here decides what the upsert replaces, so it must see the same state.
        conn.execution_options(polyhead_immediate=True)
        with conn.begin():
            for start in range(0, len(ids), 500):
                for rid, i, *old in conn.execute(
                        sa.select(f.c.request_id, f.c.text_index, f.c.head_version, f.c.prediction_ts, f.c.label,
                                  f.c.predicted_label)
                        .where(f.c.head == head, f.c.request_id.in_(ids[start:start + 500]))):
                    existing[(rid, int(i))] = tuple(old)
            conn.execute(upsert, rows)
            _move_rollup_counts(conn, engine, head, rows, existing)
    return [(pred.request_id, pred.index) in existing for pred, _ in matched]


def existing_feedback(engine: sa.Engine, head: str, keys: list[Key]) -> list[bool]:
    """For each (prediction_id, index): does a feedback for it exist already (a store would replace it)?"""
    f = feedback
    ids = sorted({rid for rid, _ in keys})
    found: set[Key] = set()
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            found |= {(rid, int(i)) for rid, i in conn.execute(
                sa.select(f.c.request_id, f.c.text_index).where(f.c.head == head,
                                                                 f.c.request_id.in_(ids[start:start + 500])))}
    return [key in found for key in keys]


def _move_rollup_counts(conn: sa.Connection, engine: sa.Engine, head: str, rows: list[dict],
                        existing: dict[Key, tuple]) -> None:
    """rollup_feedback: +1 for each stored feedback, -1 where it replaced one (its old labels)."""
    delta: dict[tuple, int] = {}

    def add(version: str, ts: datetime, label: str, predicted: str, n: int) -> None:
        hour = hour_of(ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc))
        key = (version, hour, label, predicted)
        delta[key] = delta.get(key, 0) + n

    for r in rows:
        old = existing.get((r["request_id"], r["text_index"]))
        if old is not None:
            add(*old, -1)
        add(r["head_version"], r["prediction_ts"], r["label"], r["predicted_label"], 1)
    changes = [{"head": head, "head_version": v, "hour": h, "label": t, "predicted_label": p, "n": n}
               for (v, h, t, p), n in sorted(delta.items(), key=lambda kv: kv[0]) if n]
    if changes:
        insert = dialect_insert(engine, rollup_feedback)
        conn.execute(insert.on_conflict_do_update(
            index_elements=[c.name for c in rollup_feedback.primary_key.columns],
            set_={"n": rollup_feedback.c.n + insert.excluded.n}), changes)
        if any(c["n"] < 0 for c in changes):  # a count moved away entirely: no empty rows left behind
            conn.execute(rollup_feedback.delete().where(rollup_feedback.c.head == head, rollup_feedback.c.n == 0))


def feedback_examples(engine: sa.Engine, head: str, given_by: Collection[str] | None = None) -> list[FeedbackExample]:
    """Every stored feedback of ``head`` with its logged text (None where redacted), oldest first.
    ``given_by``: only feedback from these API keys (names; ANONYMOUS: given with keys off or
    before the migration that recorded who gave it); None: everybody's."""
    query = (sa.select(predictions.c.text, predictions.c.text_escaped, feedback.c.label, feedback.c.ts)
             .select_from(feedback.join(predictions, feedback.c.prediction_id == predictions.c.id))
             .where(feedback.c.head == head).order_by(feedback.c.ts, feedback.c.id))
    if given_by is not None:
        names = [n for n in given_by if n != ANONYMOUS]
        trusted = feedback.c.given_by.in_(names)
        query = query.where(sa.or_(trusted, feedback.c.given_by.is_(None)) if ANONYMOUS in given_by else trusted)
    with engine.connect() as conn:  # texts with NUL are stored escaped (sink.escape_text)
        return [FeedbackExample(unescape_text(text, escaped), label, _aware(ts))
                for text, escaped, label, ts in conn.execute(query)]


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def record_training_feedback(engine: sa.Engine, head: str, through: datetime, version: str) -> None:
    """A training run read all of `head`'s feedback up to `through` (feedback.ts) into `version`:
    retention may now prune the raw rows that feedback labels (sink.prune). The mark only moves forward."""
    w = training_feedback
    insert = dialect_insert(engine, w).values(head=head, feedback_through=through, head_version=version,
                                              recorded_at=datetime.now(timezone.utc))
    newer = insert.excluded.feedback_through > w.c.feedback_through
    with engine.begin() as conn:
        conn.execute(insert.on_conflict_do_update(index_elements=[w.c.head], set_={
            "feedback_through": sa.case((newer, insert.excluded.feedback_through), else_=w.c.feedback_through),
            "head_version": sa.case((newer, insert.excluded.head_version), else_=w.c.head_version),
            "recorded_at": insert.excluded.recorded_at}))


def training_feedback_mark(engine: sa.Engine, head: str) -> datetime | None:
    """The newest feedback a training run of `head` has consumed (record_training_feedback); None: none yet."""
    with engine.connect() as conn:
        ts = conn.execute(sa.select(training_feedback.c.feedback_through)
                          .where(training_feedback.c.head == head)).scalar_one_or_none()
    return None if ts is None else _aware(ts)
