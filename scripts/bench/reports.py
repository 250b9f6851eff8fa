"""How long a 24 h report takes over a big inference log, on SQLite and PostgreSQL.

Bulk-loads N synthetic prediction rows (default 1,000,000) of one head, spread over the last 24 h
(two versions, requests of 1-4 texts, 5% of texts with feedback), plus 10% rows of another head,
builds their rollups (as migration 4 does for an old log: reports read rollups only since schema 8),
then times `build_report` (the code behind GET /v1/models/{name}/report) with the schema's indexes,
and again without the covering report index on the raw rows (which reports no longer read), side by side.

    .venv/bin/python -m scripts.bench.reports                 # 1M rows, both databases
    .venv/bin/python -m scripts.bench.reports --rows 100000 --databases sqlite

--scale: a month of a fleet, as the writer would have aggregated it (issue 21). 30 days x 20 heads
x 1M predictions a day each go straight into the hourly rollups (per hour: the texts, requests,
labels, confidence and latency histograms such traffic gives, computed from its distributions, and
feedback on 5 % of the texts),
plus raw rows for the last day of the reported head (their rollups built by the writer's own
code). Times a 30-day report (hour and day buckets) and a 24 h report, and checks the 24 h latency
percentiles against the exact percentiles of the raw rows (<= 1 %).

--writer: one head process's log writer, rollups on: rows recorded as fast as a producer thread can,
timed until all are in the DB (predictions/s), with the CPU seconds the process spent.

    .venv/bin/python -m scripts.bench.reports --scale --writer          # what BENCHMARKS.md records
    .venv/bin/python -m scripts.bench.reports --scale --writer --days 2 --heads 3 --per-day 20000 \
        --raw-rows 20000 --writer-rows 5000 --skip-24h                  # a quick check that it runs
"""

from __future__ import annotations

import argparse
import math
import json
import random
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path


import sqlalchemy as sa

from polyhead.inference_log import rollups
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import (ROLLUP_TABLES, build_rollups, feedback, make_engine, migrate,
                                           predictions, rollup_feedback, rollup_hour, rollup_label)
from scripts.bench.common import table

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
        with engine.begin() as conn:  # reports read rollups only: build them as migration 4 does for an old log
            build_rollups(conn)
        analyse(engine)
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


# -- --scale: a month of 20 heads, as rollups -----------------------------------------------------

LAT_MU, LAT_SIGMA = 1.5, 0.5  # lognormal request latency (ms), as synthetic_rows draws it


def _lognormal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf((math.log(x) - LAT_MU) / (LAT_SIGMA * math.sqrt(2))))


def _split(total: int, weights: list[float]) -> list[int]:
    """`total` split by `weights` into integers that sum to it exactly (largest remainders)."""
    raw = [total * w / sum(weights) for w in weights]
    out = [int(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: out[k] - raw[k])[:total - sum(out)]:
        out[k] += 1
    return out


def _latency_weights() -> dict[int, float]:
    lo, hi = rollups.latency_bucket(0.2), rollups.latency_bucket(200)
    return {b: _lognormal_cdf(rollups.LATENCY_RATIO ** (b + 1)) - _lognormal_cdf(rollups.LATENCY_RATIO ** b)
            for b in range(lo, hi + 1)}


def synthetic_hour(per_hour: int, rng: random.Random, lat_weights: dict[int, float]) -> rollups.HourSums:
    """One (head, version, hour) of traffic like synthetic_rows', summed as the writer sums it."""
    texts = max(1, int(per_hour * rng.uniform(0.8, 1.2)))
    requests = int(texts / 1.8)  # requests of 1, 1, 1, 2, 4 texts: 1.8 texts each on average
    conf = _split(texts, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])  # probability ~ U(0.2, 1.0)
    s = rollups.HourSums(requests=requests, texts=texts, abstained=conf[2] // 2, abstain_known=texts,
                         confidence_sum=texts * 0.6, histogram=conf)
    s.labels = dict(zip(LABELS, _split(texts, [rng.uniform(0.5, 1.5) for _ in LABELS])))
    s.latency = {b: n for b, n in zip(lat_weights, _split(requests, list(lat_weights.values()))) if n}
    return s


def synthetic_feedback(sums: dict, ts_param) -> list[tuple]:
    """rollup_feedback rows: 5 % of each hour's texts labelled later, 80 % of them predicted right."""
    rows = []
    for (head, version, hour), s in sums.items():
        n = s.texts // 20
        pairs = [(t, p) for t in LABELS for p in LABELS]
        weights = [0.8 / len(LABELS) if t == p else 0.2 / (len(pairs) - len(LABELS)) for t, p in pairs]
        rows += [(head, version, ts_param(hour), t, p, k) for (t, p), k in zip(pairs, _split(n, weights)) if k]
    return rows


def load_rollups(engine: sa.Engine, sums: dict, feedback_rows: bool = False) -> None:
    ts_param = (lambda v: v.strftime("%Y-%m-%d %H:%M:%S.%f")) if engine.dialect.name == "sqlite" else (lambda v: v)
    hours, labels, _ = rollups.upsert_rows(sums, ts_param, with_latency=True)
    tables = [(rollup_hour, hours), (rollup_label, labels)]
    if feedback_rows:
        tables.append((rollup_feedback, synthetic_feedback(sums, ts_param)))
    if engine.dialect.name == "postgresql":
        for rollup, params in tables:
            load_postgres(engine, rollup.name, [c.name for c in rollup.columns], params)
        return
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        for rollup, params in tables:
            cols = [c.name for c in rollup.columns]
            cur.executemany(f"INSERT INTO {rollup.name} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                            params)
        cur.execute("COMMIT")
    finally:
        raw.close()


def load_fleet(engine: sa.Engine, days: int, heads: int, per_day: int, raw_rows: int, head: str) -> tuple[float, list]:
    """Rollups of `days` x `heads` (the last day of `head` from its raw rows instead); returns load
    seconds and the reported head's raw request latencies (for the exactness check)."""
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    rng = random.Random(21)
    lat_weights = _latency_weights()
    names = [head] + [f"fleet-{i:02d}" for i in range(1, heads)]
    for name in names:
        sums: dict = {}
        for h in range(days * 24, -1, -1):
            hour = this_hour - timedelta(hours=h)
            if name == head and hour >= now - timedelta(hours=24, minutes=60):
                continue  # the last day of the reported head comes from raw rows
            version = "20260101T000000Z" if h > days * 12 else "20260102T000000Z"
            sums[(name, version, hour)] = synthetic_hour(per_day // 24, rng, lat_weights)
            sums[(name, version, hour)].first_ts = hour + timedelta(seconds=1)
        load_rollups(engine, sums, feedback_rows=True)
    # the reported head's last day: raw rows (bulk-loaded) and their rollups, summed by the writer's code
    rows = [row for row, _ in synthetic_rows(raw_rows, head, now, seed=1)]
    if engine.dialect.name == "sqlite":
        load_sqlite(engine, rows)
    else:
        load_postgres(engine, "predictions", COLUMNS, rows)
    load_rollups(engine, rollups.aggregate((r[3], r[4], r[1], r[13], r[8], r[9], r[11], r[12]) for r in rows))
    analyse(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for rollup in ROLLUP_TABLES:
                conn.exec_driver_sql(f"VACUUM ANALYZE {rollup.name}")
    latencies = [(r[1], r[11]) for r in rows if r[13] == 0]
    return time.perf_counter() - started, latencies


def exact_percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {f"p{p}": ordered[-(-len(ordered) * p // 100) - 1] for p in (50, 95, 99)} if ordered else {}


def run_scale(kind: str, url: str, days: int, heads: int, per_day: int, raw_rows: int, repeats: int) -> list[list]:
    engine = make_engine(url)
    try:
        migrate(engine)
        load_s, latencies = load_fleet(engine, days, heads, per_day, raw_rows, "bench")
        with engine.connect() as conn:
            sizes = {r.name: conn.execute(sa.select(sa.func.count()).select_from(r)).scalar() for r in ROLLUP_TABLES}
        out = []
        until = datetime.now(timezone.utc)
        for label, since, bucket in ((f"{days} days, hour buckets", until - timedelta(days=days), "hour"),
                                     (f"{days} days, day buckets", until - timedelta(days=days), "day"),
                                     ("24 h, hour buckets", until - timedelta(hours=24), "hour")):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                report = build_report(engine, "bench", since=since, until=until, bucket=bucket)
                times.append(time.perf_counter() - t0)
            err = ""
            if label.startswith("24 h"):
                # the exact percentiles of the same requests: the report covers whole hours, as it states
                covered = [datetime.fromisoformat(report[k]) for k in ("since", "until")]
                exact = exact_percentiles([lat for ts, lat in latencies if covered[0] <= ts < covered[1]])
                got = report["summary"]["latency_ms"]
                err = " ".join(f"{k} {abs(got[k] - v) / v * 100:.2f}%" for k, v in exact.items())
                assert all(abs(got[k] - v) / v <= 0.01 for k, v in exact.items()), (got, exact, covered)
            out.append([kind, f"{heads} x {per_day:,}/day", label, len(report["timeline"]),
                        f"{report['summary']['texts']:,}", round(times[0] * 1000, 1), round(min(times) * 1000, 1), err])
        print(f"{kind}: loaded in {load_s:.1f} s; rollup rows {sizes}")
        return out
    finally:
        engine.dispose()


# -- --writer: one head process's log writer ------------------------------------------------------

def run_writer(kind: str, url: str, n: int) -> list:
    import threading

    from polyhead.inference_log.writer import InferenceLog

    rng = random.Random(5)
    recs = [PredictionRecord.create(request_id=uuid.uuid4().hex, head="writer-bench", head_version="v1",
                                    embedder_fingerprint="minilm:bench", text=f"synthetic text number {i} " * 4,
                                    label=rng.choice(LABELS), probability=rng.random(), top_k=[("billing", 0.5)] * 3,
                                    latency_ms=rng.lognormvariate(1.5, 0.5), abstained=False, text_index=0)
            for i in range(n)]
    with tempfile.TemporaryDirectory() as spool, InferenceLog(url, Path(spool)) as log:
        cpu0, t0 = time.process_time(), time.perf_counter()
        recorded: list[float] = []

        def produce():
            t = time.perf_counter()
            for r in recs:
                log.record(r)
            recorded.append(time.perf_counter() - t)

        producer = threading.Thread(target=produce)
        producer.start()
        producer.join()
        assert log.flush(timeout_s=600)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats = log.stats
    assert stats.written == n and stats.dead_letters == 0, stats
    return [kind, f"{n:,}", round(n / wall), round(recorded[0] / n * 1e6, 1), round(cpu, 2),
            round(cpu / wall * 100), stats.batches]


def with_database(kind: str, postgres_url: str, fn):
    """fn(url) on a fresh SQLite file or a fresh PostgreSQL schema."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            return fn(f"sqlite:///{tmp}/inference.db")
    schema = "polyhead_bench_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        return fn(url.render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the reported head (another 10%% of another head)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-24h", action="store_true", help="skip the 24 h report over raw rows (issue 11's table)")
    parser.add_argument("--scale", action="store_true", help="the month-of-a-fleet report over rollups")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--per-day", type=int, default=1_000_000, help="predictions a day per head")
    parser.add_argument("--raw-rows", type=int, default=1_000_000, help="raw rows of the reported head's last day")
    parser.add_argument("--writer", action="store_true", help="the log writer's throughput, rollups on")
    parser.add_argument("--writer-rows", type=int, default=200_000)
    args = parser.parse_args()
    kinds = args.databases.split(",")
    for kind in kinds:
        if kind not in ("sqlite", "postgresql"):
            parser.error(f"unknown database {kind!r}")
    if args.scale:
        scale = []
        for kind in kinds:
            scale += with_database(kind, args.postgres_url, lambda url, kind=kind: run_scale(
                kind, url, args.days, args.heads, args.per_day, args.raw_rows, args.repeats))
        print(f"\n### Reports over rollups: {args.days} days x {args.heads} heads (best of {args.repeats})\n")
        print(table(["database", "fleet", "report", "timeline rows", "texts", "ms (first)", "ms (best)",
                     "24 h latency vs exact"], scale))
    if args.writer:
        rows = [with_database(kind, args.postgres_url, lambda url, kind=kind: run_writer(kind, url, args.writer_rows))
                for kind in kinds]
        print(f"\n### Log writer of one head process, rollups on ({args.writer_rows:,} predictions)\n")
        print(table(["database", "predictions", "predictions/s (recorded -> in DB)", "record() us/row",
                     "process CPU s", "CPU % of one core", "insert transactions"], rows))
    if args.skip_24h:
        return

    results = []
    for kind in kinds:
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
