"""Reports over the inference log, aggregated in the database (SQLAlchemy Core; SQLite or PostgreSQL).

One head over [since, until): request and text volume, label distribution, confidence histogram
and mean, abstain rate, latency percentiles and live accuracy / weighted F1 from feedback; for the
whole range, per head version and per (time bucket, version). Every figure is computed by SQL
(GROUP BY, SUM(CASE ...), window functions); Python only reshapes the few aggregated rows.

- Requests: a request is its first text's row (``text_index`` 0). Rows logged before migration 2
  (``text_index`` NULL) count one request per text.
- Latency percentiles are exact nearest-rank percentiles (the value at rank ceil(p/100 * n)) over
  the requests' latencies (one per request, not per text), found with ROW_NUMBER() / COUNT(*) window
  functions, which SQLite (3.25+) and PostgreSQL share; SQLite has no percentile function.
- Abstain rate: over the rows that record it (``abstained`` is NULL before migration 2).
- Time buckets are UTC: strftime on SQLite, date_trunc on PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import sqlalchemy as sa

from heads.inference_log.schema import feedback, predictions

Bucket = Literal["hour", "day"]
BUCKETS: tuple[str, ...] = ("hour", "day")
HISTOGRAM_EDGES = [round(i / 10, 1) for i in range(11)]
PERCENTILES = (50, 95, 99)
DEFAULT_RANGE = timedelta(hours=24)

_p = predictions


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def time_bucket(dialect: str, bucket: Bucket) -> sa.ColumnElement:
    """The UTC start of each row's hour/day, one expression per dialect."""
    if dialect == "sqlite":  # ts is stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        fmt = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
        return sa.func.strftime(fmt, _p.c.ts)
    if dialect == "postgresql":  # timestamptz -> UTC wall time, whatever the session's TimeZone
        return sa.func.date_trunc(bucket, sa.func.timezone("UTC", _p.c.ts))
    raise ValueError(f"reports need sqlite or postgresql, not {dialect!r}")


def _bucket_start(value: Any) -> datetime:
    return utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def _is_first_text() -> sa.ColumnElement:
    return sa.func.coalesce(_p.c.text_index, 0) == 0


def _histogram_columns() -> list[sa.ColumnElement]:
    """Ten SUM(CASE ...) columns: counts of probability in [0.0, 0.1), ..., [0.9, 1.0]."""
    cols = []
    for i in range(10):
        low, high = _p.c.probability >= HISTOGRAM_EDGES[i], _p.c.probability < HISTOGRAM_EDGES[i + 1]
        cond = high if i == 0 else low if i == 9 else sa.and_(low, high)  # the ends take anything beyond
        cols.append(sa.func.sum(sa.case((cond, 1), else_=0)).label(f"h{i}"))
    return cols


def _volume_columns() -> list[sa.ColumnElement]:
    return [
        sa.func.count().label("texts"),
        sa.func.sum(sa.case((_is_first_text(), 1), else_=0)).label("requests"),
        sa.func.avg(_p.c.probability).label("confidence_mean"),
        sa.func.sum(sa.case((_p.c.abstained, 1), else_=0)).label("abstained"),
        sa.func.count(_p.c.abstained).label("abstain_known"),
    ]


def _percentiles(conn: sa.Connection, window: sa.ColumnElement, groups: list[sa.ColumnElement]) -> dict[tuple, dict]:
    """{group values: {"p50", "p95", "p99"}}: exact nearest-rank percentiles of request latency."""
    ranked = sa.select(
        *[g.label(f"g{i}") for i, g in enumerate(groups)],
        _p.c.latency_ms,
        sa.func.row_number().over(partition_by=groups or None, order_by=_p.c.latency_ms).label("rn"),
        sa.func.count().over(partition_by=groups or None).label("n"),
    ).where(window, _is_first_text()).subquery()
    ranks = {pct: (ranked.c.n * pct + 99) // 100 for pct in PERCENTILES}  # ceil(n * pct / 100), integer SQL
    keys = [ranked.c[f"g{i}"] for i in range(len(groups))]
    rows = conn.execute(sa.select(*keys, ranked.c.rn, ranked.c.latency_ms, *[r.label(f"r{p}") for p, r in ranks.items()])
                        .where(sa.or_(*[ranked.c.rn == r for r in ranks.values()])))
    out: dict[tuple, dict] = defaultdict(lambda: {f"p{p}": None for p in PERCENTILES})
    for row in rows:
        key = tuple(row[:len(groups)])
        for pct in PERCENTILES:
            if row._mapping["rn"] == row._mapping[f"r{pct}"]:
                out[key][f"p{pct}"] = round(float(row._mapping["latency_ms"]), 3)
    return out


def _feedback_counts(conn: sa.Connection, head: str, window: sa.ColumnElement) -> dict[str, dict[tuple[str, str], int]]:
    """{version: {(true label, predicted label): count}} for predictions in the window with feedback."""
    query = (sa.select(_p.c.head_version, feedback.c.label, _p.c.label, sa.func.count())
             .select_from(feedback.join(_p, feedback.c.prediction_id == _p.c.id))
             .where(feedback.c.head == head, window)
             .group_by(_p.c.head_version, feedback.c.label, _p.c.label))
    out: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for version, true, predicted, n in conn.execute(query):
        out[version][(true, predicted)] = int(n)
    return out


def feedback_metrics(confusion: dict[tuple[str, str], int]) -> dict:
    """count, accuracy and support-weighted F1 of {(true, predicted): count}; nulls without feedback."""
    total = sum(confusion.values())
    if not total:
        return {"count": 0, "accuracy": None, "f1_weighted": None}
    support: dict[str, int] = defaultdict(int)
    predicted: dict[str, int] = defaultdict(int)
    for (true, pred), n in confusion.items():
        support[true] += n
        predicted[pred] += n
    f1_sum = 0.0
    for label, n_true in support.items():
        tp = confusion.get((label, label), 0)
        precision = tp / predicted[label] if predicted[label] else 0.0
        recall = tp / n_true
        f1_sum += n_true * (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    correct = sum(n for (true, pred), n in confusion.items() if true == pred)
    return {"count": total, "accuracy": round(correct / total, 6), "f1_weighted": round(f1_sum / total, 6)}


def empty_stats() -> dict:
    return {"requests": 0, "texts": 0, "abstain_rate": None, "confidence_mean": None,
            "latency_ms": {f"p{p}": None for p in PERCENTILES}, "label_distribution": {},
            "confidence_histogram": {"edges": list(HISTOGRAM_EDGES), "counts": [0] * 10},
            "feedback": feedback_metrics({})}


def _stats(volume: dict, labels: dict[str, int], latency: dict, confusion: dict) -> dict:
    texts = int(volume["texts"])
    known = int(volume["abstain_known"])
    return {
        "requests": int(volume["requests"]), "texts": texts,
        "abstain_rate": round(int(volume["abstained"]) / known, 6) if known else None,
        "confidence_mean": round(volume["confidence_sum"] / texts, 6) if texts else None,
        "latency_ms": latency,
        "label_distribution": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
        "confidence_histogram": {"edges": list(HISTOGRAM_EDGES), "counts": [int(c) for c in volume["histogram"]]},
        "feedback": feedback_metrics(confusion),
    }


def build_report(engine: sa.Engine, head: str, *, since: datetime | None = None, until: datetime | None = None,
                 bucket: Bucket = "hour") -> dict:
    """The report of one head (the gateway's GET /v1/models/{name}/report body, without "drift")."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, not {bucket!r}")
    until = utc(until) if until is not None else datetime.now(timezone.utc)
    since = utc(since) if since is not None else until - DEFAULT_RANGE
    window = sa.and_(_p.c.head == head, _p.c.ts >= since, _p.c.ts < until)
    tb = time_bucket(engine.dialect.name, bucket).label("start")

    with engine.connect() as conn:
        per_version = conn.execute(
            sa.select(_p.c.head_version, sa.func.min(_p.c.ts).label("first_ts"), *_volume_columns(),
                      *_histogram_columns())
            .where(window).group_by(_p.c.head_version)).mappings().all()
        label_rows = conn.execute(sa.select(_p.c.head_version, _p.c.label, sa.func.count())
                                  .where(window).group_by(_p.c.head_version, _p.c.label)).all()
        timeline_rows = conn.execute(sa.select(tb, _p.c.head_version, *_volume_columns())
                                     .where(window).group_by(tb, _p.c.head_version)).mappings().all()
        latency_all = _percentiles(conn, window, [])
        latency_version = _percentiles(conn, window, [_p.c.head_version])
        latency_timeline = _percentiles(conn, window, [time_bucket(engine.dialect.name, bucket), _p.c.head_version])
        confusion = _feedback_counts(conn, head, window)

    labels: dict[str, dict[str, int]] = defaultdict(dict)
    for version, label, n in label_rows:
        labels[version][label] = int(n)

    no_latency = {f"p{p}": None for p in PERCENTILES}
    total = {"texts": 0, "requests": 0, "abstained": 0, "abstain_known": 0, "confidence_sum": 0.0,
             "histogram": [0] * 10}
    versions = []
    for row in sorted(per_version, key=lambda r: (str(r["first_ts"]), r["head_version"])):
        version = row["head_version"]
        volume = {**row, "confidence_sum": float(row["confidence_mean"] or 0.0) * int(row["texts"]),
                  "histogram": [row[f"h{i}"] for i in range(10)]}
        for key in ("texts", "requests", "abstained", "abstain_known", "confidence_sum"):
            total[key] += volume[key]
        total["histogram"] = [a + int(b) for a, b in zip(total["histogram"], volume["histogram"])]
        versions.append({"version": version, **_stats(volume, labels[version],
                                                       latency_version.get((version,), no_latency),
                                                       confusion.get(version, {}))})

    all_labels: dict[str, int] = defaultdict(int)
    for per in labels.values():
        for label, n in per.items():
            all_labels[label] += n
    all_confusion: dict[tuple[str, str], int] = defaultdict(int)
    for per in confusion.values():
        for key, n in per.items():
            all_confusion[key] += n
    summary = _stats(total, all_labels, latency_all.get((), no_latency), all_confusion) if total["texts"] \
        else empty_stats()

    timeline = []
    for row in timeline_rows:
        texts, known = int(row["texts"]), int(row["abstain_known"])
        timeline.append({
            "start": _bucket_start(row["start"]).isoformat(), "version": row["head_version"],
            "requests": int(row["requests"]), "texts": texts,
            "confidence_mean": round(float(row["confidence_mean"]), 6) if texts else None,
            "abstain_rate": round(int(row["abstained"]) / known, 6) if known else None,
            "latency_ms": latency_timeline.get((row["start"], row["head_version"]), no_latency),
        })
    timeline.sort(key=lambda t: (t["start"], t["version"]))
    return {"model": head, "since": since.isoformat(), "until": until.isoformat(), "bucket": bucket,
            "summary": summary, "versions": versions, "timeline": timeline}
