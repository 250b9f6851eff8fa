"""Reports over the inference log, aggregated in the database (SQLAlchemy Core; SQLite or PostgreSQL).

One head over [since, until): request and text volume, label distribution, confidence histogram
and mean, abstain rate, latency percentiles and live accuracy / weighted F1 from feedback; for the
whole range, per head version and per (time bucket, version). Every figure is computed by SQL
(GROUP BY, SUM(CASE ...)); Python only reshapes the few aggregated rows.

- Requests: a request is its first text's row (``text_index`` 0). Rows logged before migration 2
  (``text_index`` NULL) count one request per text.
- Latency percentiles are over the requests (one latency per request, not per text): SQLite has no
  percentile function, so SQL returns a fine latency histogram (0.1 ms steps below 100 ms, 1 ms
  below 1 s, 10 ms above) per (time bucket, version) and Python reads nearest-rank percentiles off
  it. Unlike exact percentiles, histograms merge: versions and the summary need no further query.
- Abstain rate: over the rows that record it (``abstained`` is NULL before migration 2).
- Time buckets are UTC: strftime on SQLite, date_trunc on PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import sqlalchemy as sa

from polyhead.inference_log.report_models import Bucket
from polyhead.inference_log.schema import feedback, predictions

BUCKETS: tuple[str, ...] = get_args(Bucket)
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
        sa.func.sum(_p.c.probability).label("confidence_sum"),
        sa.func.sum(sa.case((_p.c.abstained, 1), else_=0)).label("abstained"),
        sa.func.count(_p.c.abstained).label("abstain_known"),
        *_histogram_columns(),
    ]


def _latency_bucket() -> sa.ColumnElement:
    """Latency rounded to 0.1 ms below 100 ms, to 1 ms below 1 s, to 10 ms above: a histogram fine
    enough for percentiles (at most 0.5 ms off below 100 ms, 0.5% above), small enough to merge."""
    lat = _p.c.latency_ms
    return sa.case((lat < 100, sa.func.round(lat * 10) / 10.0), (lat < 1000, sa.func.round(lat)),
                   else_=sa.func.round(lat / 10.0) * 10)


def percentiles(histogram: dict[float, int]) -> dict:
    """Nearest-rank percentiles (the value at rank ceil(p/100 * n)) of a {value: count} histogram."""
    n = sum(histogram.values())
    out = {f"p{p}": None for p in PERCENTILES}
    if not n:
        return out
    ranks = {p: -(-n * p // 100) for p in PERCENTILES}
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        for p, rank in ranks.items():
            if out[f"p{p}"] is None and seen >= rank:
                out[f"p{p}"] = round(float(value), 3)
    return out


def _merge(into: dict, other: dict) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0) + n


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
    return _stats(_Group(), {}, {})


class _Group:
    """Sums of one (time bucket, version) group, or of several merged: everything merges exactly."""

    FIELDS = ("texts", "requests", "confidence_sum", "abstained", "abstain_known")

    def __init__(self, row: Any = None):
        self.sums = {f: (row[f] or 0) if row is not None else 0 for f in self.FIELDS}
        self.histogram = [int(row[f"h{i}"] or 0) if row is not None else 0 for i in range(10)]
        self.latency: dict[float, int] = {}

    def add(self, other: _Group) -> None:
        for f in self.FIELDS:
            self.sums[f] += other.sums[f]
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram)]
        _merge(self.latency, other.latency)

    def volume(self) -> dict:
        texts, known = int(self.sums["texts"]), int(self.sums["abstain_known"])
        return {"requests": int(self.sums["requests"]), "texts": texts,
                "abstain_rate": round(int(self.sums["abstained"]) / known, 6) if known else None,
                "confidence_mean": round(float(self.sums["confidence_sum"]) / texts, 6) if texts else None,
                "latency_ms": percentiles(self.latency)}


def _stats(group: _Group, labels: dict[str, int], confusion: dict) -> dict:
    return {**group.volume(),
            "label_distribution": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
            "confidence_histogram": {"edges": list(HISTOGRAM_EDGES), "counts": group.histogram},
            "feedback": feedback_metrics(confusion)}


def build_report(engine: sa.Engine, head: str, *, since: datetime | None = None, until: datetime | None = None,
                 bucket: Bucket = "hour") -> dict:
    """The report of one head: a `report_models.InferenceReport` as plain JSON types (the gateway's
    GET /v1/models/{name}/report adds the head's drift and its range adjustments).

    Four aggregate queries over the head's rows in [since, until): volumes and confidence histogram
    per (time bucket, version); labels per version; the latency histogram of requests per (time
    bucket, version); feedback (true x predicted label) per version. Versions and the summary are
    sums of the (time bucket, version) groups."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, not {bucket!r}")
    until = utc(until) if until is not None else datetime.now(timezone.utc)
    since = utc(since) if since is not None else until - DEFAULT_RANGE
    window = sa.and_(_p.c.head == head, _p.c.ts >= since, _p.c.ts < until)
    tb = time_bucket(engine.dialect.name, bucket).label("start")
    lat = _latency_bucket().label("lat")
    f = feedback

    with engine.connect() as conn:
        volume_rows = conn.execute(sa.select(tb, _p.c.head_version, sa.func.min(_p.c.ts).label("first_ts"),
                                             *_volume_columns())
                                   .where(window).group_by(tb, _p.c.head_version)).mappings().all()
        label_rows = conn.execute(sa.select(_p.c.head_version, _p.c.label, sa.func.count())
                                  .where(window).group_by(_p.c.head_version, _p.c.label)).all()
        latency_rows = conn.execute(sa.select(tb, _p.c.head_version, lat, sa.func.count())
                                    .where(window, _is_first_text()).group_by(tb, _p.c.head_version, lat)).all()
        feedback_rows = conn.execute(
            sa.select(f.c.head_version, f.c.label, f.c.predicted_label, sa.func.count())
            .where(f.c.head == head, f.c.prediction_ts >= since, f.c.prediction_ts < until)
            .group_by(f.c.head_version, f.c.label, f.c.predicted_label)).all()

    groups: dict[tuple, _Group] = {}
    first_seen: dict[str, str] = {}
    for row in volume_rows:
        groups[(row["start"], row["head_version"])] = _Group(row)
        version, ts = row["head_version"], str(row["first_ts"])
        first_seen[version] = min(first_seen.get(version, ts), ts)
    for start, version, value, n in latency_rows:
        _merge(groups[(start, version)].latency, {float(value): int(n)})
    labels: dict[str, dict[str, int]] = defaultdict(dict)
    for version, label, n in label_rows:
        labels[version][label] = int(n)
    confusion: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for version, true, predicted, n in feedback_rows:
        confusion[version][(true, predicted)] = int(n)

    per_version: dict[str, _Group] = defaultdict(_Group)
    total = _Group()
    for (_, version), group in groups.items():
        per_version[version].add(group)
        total.add(group)
    all_labels: dict[str, int] = {}
    all_confusion: dict[tuple[str, str], int] = {}
    for version in per_version:
        _merge(all_labels, labels[version])
    for per in confusion.values():
        _merge(all_confusion, per)

    versions = [{"version": v, **_stats(per_version[v], labels[v], confusion.get(v, {}))}
                for v in sorted(per_version, key=lambda v: (first_seen[v], v))]
    timeline = sorted(({"start": _bucket_start(start).isoformat(), "version": version, **group.volume()}
                       for (start, version), group in groups.items()), key=lambda t: (t["start"], t["version"]))
    return {"model": head, "since": since.isoformat(), "until": until.isoformat(), "bucket": bucket,
            "summary": _stats(total, all_labels, all_confusion), "versions": versions, "timeline": timeline}
