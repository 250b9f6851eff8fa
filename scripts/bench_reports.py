"""How long a 24 h report takes over a big inference log, on SQLite and PostgreSQL.

Bulk-loads N synthetic prediction rows (default 1,000,000) of one head, spread over the last 24 h
(two versions, requests of 1-4 texts, 5% of texts with feedback), plus 10% rows of another head,
then times `build_report` (the code behind GET /v1/models/{name}/report) with the schema's indexes,
and again without the covering report index (only the (head, ts) index left), side by side.

    .venv/bin/python scripts/bench_reports.py                 # 1M rows, both databases
    .venv/bin/python scripts/bench_reports.py --rows 100000 --databases sqlite
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import feedback, make_engine, migrate, predictions
from scripts.bench_common import table

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LABELS = ["billing", "technical", "account", "shipping", "other"]
COLUMNS = ["id", "ts", "request_id", "head", "head_version", "embedder_fingerprint", "text", "text_sha256",
           "label", "probability", "top_k", "latency_ms", "abstained", "text_index"]
FEEDBACK_COLUMNS = ["id", "head", "request_id", "text_index", "label", "ts", "prediction_id", "prediction_ts",
                    "head_version", "predicted_label"]
BATCH = 50_000


def synthetic_rows(n: int, head: str, now: datetime, seed: int):
    """Tuples in COLUMNS order, plus (request_id, index, label) for 5% of texts (the feedback)."""
    rng = random.Random(seed)
    i = 0
    while i < n:
        rid = uuid.uuid4().hex
        texts = min(rng.choice((1, 1, 1, 2, 4)), n - i)
        ts = now - timedelta(seconds=rng.uniform(0, 86_000))
        version = "20260101T000000Z" if ts < now - timedelta(hours=12) else "20260102T000000Z"
        latency = rng.lognormvariate(1.5, 0.5)
        for index in range(texts):
            label = rng.choice(LABELS)
            p = rng.uniform(0.2, 1.0)
            top_k = json.dumps([{"label": label, "probability": round(p, 4)}])
            yield (uuid.uuid4().hex, ts, rid, head, version, "minilm:bench", f"synthetic text {i}", "0" * 64,
                   label, p, top_k, latency, p < 0.3, index), \
                (rid, index, label if rng.random() < 0.8 else rng.choice(LABELS)) if rng.random() < 0.05 else None
            i += 1


def load_sqlite(engine: sa.Engine, rows) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        sql = f"INSERT INTO predictions ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
        batch = []
        for row in rows:
            batch.append((row[0], row[1].strftime("%Y-%m-%d %H:%M:%S.%f"), *row[2:]))  # SQLAlchemy's format
            if len(batch) >= BATCH:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)
        cur.execute("COMMIT")
    finally:
        raw.close()


def load_sqlite_feedback(engine: sa.Engine, fb_rows) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        cur.executemany(f"INSERT INTO feedback ({','.join(FEEDBACK_COLUMNS)}) "
                        f"VALUES ({','.join('?' * len(FEEDBACK_COLUMNS))})",
                        [tuple(v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v for v in f)
                         for f in fb_rows])
        cur.execute("COMMIT")
    finally:
        raw.close()


def load_postgres(engine: sa.Engine, table_name: str, columns: list[str], rows) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor().copy(f"COPY {table_name} ({','.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def load(engine: sa.Engine, n: int, head: str) -> float:
    """Drop the indexes, bulk-load, rebuild them (as a fresh database would have them), analyse."""
    now = datetime.now(timezone.utc)
    indexes = [ix for ix in predictions.indexes] + [ix for ix in feedback.indexes]
    with engine.begin() as conn:
        for ix in indexes:
            ix.drop(conn, checkfirst=True)
    feedback_rows: list[tuple] = []

    def rows():
        for seed, (count, name) in enumerate(((n, head), (n // 10, "other-head"))):
            for row, fb in synthetic_rows(count, name, now, seed):
                if fb is not None and name == head:
                    rid, index, true = fb
                    feedback_rows.append((uuid.uuid4().hex, name, rid, index, true, now, row[0], row[1], row[4],
                                          row[8]))
                yield row

    started = time.perf_counter()
    if engine.dialect.name == "sqlite":
        load_sqlite(engine, rows())
        load_sqlite_feedback(engine, feedback_rows)  # collected while the predictions streamed in
    else:
        load_postgres(engine, "predictions", COLUMNS, rows())
        load_postgres(engine, "feedback", FEEDBACK_COLUMNS, feedback_rows)
    with engine.begin() as conn:
        for ix in indexes:
            ix.create(conn)
    analyse(engine)
    return time.perf_counter() - started



def analyse(engine: sa.Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE predictions")  # what autovacuum does after a bulk load
            conn.exec_driver_sql("VACUUM ANALYZE feedback")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def time_report(engine: sa.Engine, head: str, repeats: int) -> tuple[float, float, dict]:
    times, report = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        report = build_report(engine, head)
        times.append(time.perf_counter() - started)
    return times[0], min(times), report


def run(kind: str, url: str, n: int, repeats: int) -> list[list]:
    engine = make_engine(url)
    try:
        migrate(engine)
        load_s = load(engine, n, "bench")
        first, best, report = time_report(engine, "bench", repeats)
        s = report["summary"]
        assert s["texts"] > 0.99 * n, s["texts"]  # the 24 h window holds (nearly) every row
        rows = [[kind, f"{n:,}", f"{s['texts']:,}", f"{s['requests']:,}", "schema (covering report index)",
                 round(load_s, 1), round(first, 2), round(best, 2), s["feedback"]["count"]]]
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_predictions_report")
        analyse(engine)
        first2, best2, _ = time_report(engine, "bench", repeats)
        rows.append([kind, f"{n:,}", f"{s['texts']:,}", f"{s['requests']:,}", "(head, ts) index only", "",
                     round(first2, 2), round(best2, 2), s["feedback"]["count"]])
        return rows
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the reported head (another 10%% of another head)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    results = []
    for kind in args.databases.split(","):
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                results += run(kind, f"sqlite:///{tmp}/inference.db", args.rows, args.repeats)
        elif kind == "postgresql":
            schema = "polyhead_bench_" + uuid.uuid4().hex[:8]
            admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            try:
                url = sa.make_url(args.postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
                results += run(kind, url.render_as_string(hide_password=False), args.rows, args.repeats)
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                admin.dispose()
        else:
            parser.error(f"unknown database {kind!r}")
    print(f"\n### 24 h report over {args.rows:,} rows (best of {args.repeats}; first = cold-ish cache)\n")
    print(table(["database", "rows of the head", "texts in report", "requests", "indexes", "bulk load s",
                 "report s (first)", "report s (best)", "feedback rows"], results))


if __name__ == "__main__":
    main()
