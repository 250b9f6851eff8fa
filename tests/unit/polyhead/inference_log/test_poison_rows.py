"""No poison rows: hostile texts are stored losslessly on SQLite and PostgreSQL; a row the database
refuses is dead-lettered with its reason and never blocks the rows behind it, live or on replay."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from polyhead.inference_log.feedback import LoggedPrediction, feedback_examples, store_feedback
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.schema import make_engine, predictions
from polyhead.inference_log.sink import escape_text, unescape_text
from polyhead.inference_log.writer import DEAD_LETTER_FILE, InferenceLog
from tests.unit.polyhead.inference_log.test_inference_log import backend, spool_files  # noqa: F401

pytestmark = pytest.mark.timeout(90)

NUL_TEXTS = ["hello\x00world", "\x00", "ends with NUL\x00", "\\0 is not NUL but \x00 is", "\\\x00\\\\0\x00\\"]
HOSTILE_TEXTS = [
    "x" * 200_000,  # very long
    "ctrl \x01\x02\x07\x1b[31m\x7f bell and escape",
    "\u202eRTL override\u200f mark \u061c",
    "family \U0001F468\u200d\U0001F469\u200d\U0001F467 flag \U0001F3F3\ufe0f\u200d\U0001F308",
    "back\\slash \\n \\u0000 \\x00 \\\\",
    "quotes ' \" ` ’ „",
    "'); DROP TABLE predictions; -- %s %(x)s ? $1",
    '{"id": "x", "text": null, "\\u0000": [1, 2]}',
    "non-characters \uffff\ufffe\U0010ffff and private \ue000",
    "combining e\u0301\u0301\u0301 zero-width \u200b\u2060 BOM \ufeff",
]


def record(head: str, safe_text: str, i: int, **overrides) -> PredictionRecord:
    rec = PredictionRecord.create(request_id=f"hostile-{i}", head=head, head_version="v1", embedder_fingerprint="f",
                                  text=safe_text, label="pos", probability=0.75, top_k=[("pos", 0.75)], latency_ms=2.0,
                                  abstained=False, text_index=0)
    return dataclasses.replace(rec, **overrides)


def refused_metric() -> float:
    return REGISTRY.get_sample_value("polyhead_head_db_dead_letters_total", {"reason": "refused"}) or 0.0


def stored_texts(url: str, head: str) -> dict[str, str | None]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(predictions.c.request_id, predictions.c.text, predictions.c.text_escaped)
                                .where(predictions.c.head == head)).all()
    finally:
        engine.dispose()
    return {rid: unescape_text(text, escaped) for rid, text, escaped in rows}


def test_escaping_round_trips_and_leaves_texts_without_nul_alone():
    for text in NUL_TEXTS:
        stored, escaped = escape_text(text)
        assert "\x00" not in stored and escaped is True
        assert unescape_text(stored, escaped) == text
    for text in HOSTILE_TEXTS:
        assert escape_text(text) == (text, None)  # untouched, flag NULL: readers need not care
        assert unescape_text(text, None) == text


def test_hostile_texts_are_stored_losslessly_and_a_refused_row_blocks_nothing(backend, tmp_path):  # noqa: F811
    head = "hostile-" + uuid.uuid4().hex[:8]
    texts = NUL_TEXTS + HOSTILE_TEXTS
    good = [record(head, t, i) for i, t in enumerate(texts)]
    # Rows no database takes: a lone surrogate (the API refuses it; a bug could still let one through)
    # and, on PostgreSQL, a request id beyond its column's 128 characters (SQLite ignores lengths).
    poison = [record(head, "x", 900, text="lone \ud800 surrogate")]
    if backend.name == "postgresql":
        poison.append(record(head, "fine text", 901, request_id="r" * 500))
    dead0 = refused_metric()
    spool = tmp_path / "spool"
    with InferenceLog(backend.url, spool) as log:
        half = len(good) // 2
        for rec in good[:half] + poison + good[half:]:  # the poison sits mid-batch
            log.record(rec)
        assert log.flush()
        stats = log.stats
    assert stats.dead_letters == len(poison) and stats.spool_rows == 0 and stats.dropped == 0
    assert refused_metric() - dead0 == len(poison)
    assert stored_texts(backend.url, head) == {r.request_id: r.text for r in good}  # every byte back
    letters = [json.loads(line) for line in (spool / DEAD_LETTER_FILE).read_text().splitlines()]
    assert sorted(json.loads(entry["line"])["request_id"] for entry in letters) == sorted(r.request_id for r in poison)
    assert all(entry["reason"] for entry in letters)  # the database's own words, for whoever replays them

    # Feedback on a NUL text reads the text back as it was sent (retraining sees the real input).
    engine = make_engine(backend.url)
    try:
        nul = good[0]
        store_feedback(engine, head, [(LoggedPrediction(nul.id, nul.request_id, 0, "v1", "pos", nul.ts), "neg")])
        assert [(e.text, e.label) for e in feedback_examples(engine, head)] == [(nul.text, "neg")]
    finally:
        engine.dispose()


def test_a_spool_starting_with_a_poison_row_is_replayed_past_it(backend, tmp_path):  # noqa: F811
    head = "replay-" + uuid.uuid4().hex[:8]
    spool = tmp_path / "spool"
    poison = record(head, "x", 0, text="lone \udfff")
    behind = [record(head, t, i + 1) for i, t in enumerate(NUL_TEXTS)]
    with InferenceLog(backend.dead_url, spool, retry_min_s=5) as dead:  # DB down: all stays in the spool
        for rec in [poison, *behind]:
            dead.record(rec)
        assert dead.flush() and not dead.healthy()
    assert len(spool_files(spool)) == 1

    with InferenceLog(backend.url, spool) as log:  # the next process replays it, in order
        assert log.flush()
        assert (log.stats.replayed, log.stats.dead_letters, log.stats.spool_rows) == (len(behind) + 1, 1, 0)
    assert stored_texts(backend.url, head) == {r.request_id: r.text for r in behind}
    assert spool_files(spool) == []
