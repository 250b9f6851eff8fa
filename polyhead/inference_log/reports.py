"""Reports over the inference log, aggregated in the database (SQLAlchemy Core; SQLite or PostgreSQL).

One head over [since, until): request and text volume, label distribution, confidence histogram
and mean, abstain rate, latency percentiles and live accuracy / weighted F1 from feedback; for the
whole range, per head version and per (time bucket, version). Every figure is computed by SQL
(GROUP BY, SUM(CASE ...)); Python only reshapes the few aggregated rows.

The whole hours of the range are read from the hourly rollups (rollups.py, kept by the writer), so
a month costs O(hours x buckets), not O(rows); only the partial hours at either end (a range that
does not start or end on the hour) are aggregated from the raw rows, the same way. Feedback is
read the same way: rollup_feedback (kept by feedback.store_feedback) for whole hours, the feedback
table for the partial ones.

- Requests: a request is its first text's row (``text_index`` 0). Rows logged before migration 2
  (``text_index`` NULL) count one request per text.
- Latency percentiles are over the requests (one latency per request, not per text): SQLite has no
  percentile function, so SQL returns a fine latency histogram (log-spaced buckets, ratio 1.02:
  within 1 % of the exact value, rollups.py) per (time bucket, version) and Python reads nearest-rank
  percentiles off it. Unlike exact percentiles, histograms merge: versions and the summary need no
  further query.
- Abstain rate: over the rows that record it (``abstained`` is NULL before migration 2).
- Time buckets are UTC: strftime on SQLite, date_trunc on PostgreSQL.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import numpy as np
import sqlalchemy as sa

from polyhead.inference_log.report_models import Bucket
from polyhead.inference_log.rollups import LATENCY_RATIO, MIN_LATENCY_MS, bucket_value, latency_bucket
from polyhead.inference_log.schema import feedback, predictions, rollup_feedback, rollup_hour, rollup_label, served_only

BUCKETS: tuple[str, ...] = get_args(Bucket)
HISTOGRAM_EDGES = [round(i / 10, 1) for i in range(11)]
PERCENTILES = (50, 95, 99)
DEFAULT_RANGE = timedelta(hours=24)

_p = predictions


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def time_bucket(dialect: str, bucket: Bucket, column: sa.ColumnElement | None = None) -> sa.ColumnElement:
    """The UTC start of each row's hour/day, one expression per dialect (`column`: predictions.ts by default)."""
    column = _p.c.ts if column is None else column
    if dialect == "sqlite":  # ts is stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        fmt = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
        return sa.func.strftime(fmt, column)
    if dialect == "postgresql":  # timestamptz -> UTC wall time, whatever the session's TimeZone
        return sa.func.date_trunc(bucket, sa.func.timezone("UTC", column))
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


def _latency_bucket(dialect: str) -> sa.ColumnElement:
    """rollups.latency_bucket in SQL: floor(ln(latency) / ln(1.02)). SQLite's ln() is optional at
    build time, so there it is the Python function itself, registered by schema.make_engine."""
    if dialect == "sqlite":
        return sa.func.polyhead_latency_bucket(_p.c.latency_ms)
    lat = sa.func.greatest(_p.c.latency_ms, MIN_LATENCY_MS)
    return sa.cast(sa.func.floor(sa.func.ln(lat) / math.log(LATENCY_RATIO)), sa.Integer)


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


# Latency histograms as dense arrays over every bucket from 1 µs to 1,000 s (~1,050 buckets): merging a
# month of hours is 720 vector additions, not 100,000 dict updates.
_LAT_LOW, _LAT_HIGH = latency_bucket(MIN_LATENCY_MS), latency_bucket(1e6)


def latency_array(histogram: dict) -> np.ndarray:
    """A {rollups.latency_bucket: requests} histogram (keys int, or str as stored) as a dense array
    (buckets beyond the ends clipped)."""
    out = np.zeros(_LAT_HIGH - _LAT_LOW + 1, np.int64)
    if histogram:
        keys = np.fromiter(map(int, histogram.keys()), np.int64, len(histogram))
        np.add.at(out, np.clip(keys, _LAT_LOW, _LAT_HIGH) - _LAT_LOW,
                  np.fromiter(histogram.values(), np.int64, len(histogram)))
    return out


def latency_percentiles(histogram: np.ndarray) -> dict:
    """percentiles() of a latency_array, each read as its bucket's geometric middle (within 1 %)."""
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    if not n:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": round(bucket_value(int(np.searchsorted(cumulative, -(-n * p // 100))) + _LAT_LOW), 3)
            for p in PERCENTILES}


_ZERO_LATENCY = latency_array({})


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
        # float / int: PostgreSQL sums BIGINT rollups as NUMERIC (Decimal), which does not add to float
        self.sums = {f: (float if f == "confidence_sum" else int)(row[f] or 0) if row is not None else 0
                     for f in self.FIELDS}
        self.histogram = [int(row[f"h{i}"] or 0) if row is not None else 0 for i in range(10)]
        self.latency = _ZERO_LATENCY  # latency_array; replaced, never changed in place (shared zeros)

    def add(self, other: _Group) -> None:
        for f in self.FIELDS:
            self.sums[f] += other.sums[f]
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram)]
        self.latency = self.latency + other.latency

    def volume(self) -> dict:
        texts, known = int(self.sums["texts"]), int(self.sums["abstain_known"])
        return {"requests": int(self.sums["requests"]), "texts": texts,
                "abstain_rate": round(int(self.sums["abstained"]) / known, 6) if known else None,
                "confidence_mean": round(float(self.sums["confidence_sum"]) / texts, 6) if texts else None,
                "latency_ms": latency_percentiles(self.latency)}


def _stats(group: _Group, labels: dict[str, int], confusion: dict) -> dict:
    return {**group.volume(),
            "label_distribution": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
            "confidence_histogram": {"edges": list(HISTOGRAM_EDGES), "counts": group.histogram},
            "feedback": feedback_metrics(confusion)}


def _hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _hour_ceil(value: datetime) -> datetime:
    floor = _hour_floor(value)
    return floor if floor == value else floor + timedelta(hours=1)


class _Totals:
    """The (time bucket, version) groups, labels per version and first rows seen, from any source."""

    def __init__(self):
        self.groups: dict[tuple[datetime, str], _Group] = {}
        self.labels: dict[str, dict[str, int]] = defaultdict(dict)
        self.first_seen: dict[str, datetime] = {}

    def group(self, start: Any, version: str, row: Any = None) -> _Group:
        key = (_bucket_start(start), version)
        if key not in self.groups:
            self.groups[key] = _Group(row)
        elif row is not None:
            self.groups[key].add(_Group(row))
        return self.groups[key]

    def add_latency(self, start: Any, version: str, histogram: dict[int, int]) -> None:
        group = self.group(start, version)
        group.latency = group.latency + latency_array(histogram)

    def add_latency_rows(self, rows: Any) -> None:
        """(start, version, bucket, n) rows: summed per group first."""
        per_group: dict[tuple, dict[int, int]] = {}
        for start, version, b, n in rows:
            histogram = per_group.setdefault((start, version), {})
            histogram[int(b)] = histogram.get(int(b), 0) + int(n)
        for (start, version), histogram in per_group.items():
            self.add_latency(start, version, histogram)

    def seen(self, version: str, first_ts: Any) -> None:
        ts = _bucket_start(first_ts)
        self.first_seen[version] = min(self.first_seen.get(version, ts), ts)


def _from_raw_rows(conn: sa.Connection, totals: _Totals, head: str, since: datetime, until: datetime,
                   bucket: Bucket) -> None:
    """Aggregate the raw rows of [since, until) (the partial hours at the ends of a range)."""
    dialect = conn.dialect.name
    window = sa.and_(_p.c.head == head, _p.c.ts >= since, _p.c.ts < until, served_only())  # not shadow rows
    tb = time_bucket(dialect, bucket).label("start")
    lat = _latency_bucket(dialect).label("lat")
    for row in conn.execute(sa.select(tb, _p.c.head_version, sa.func.min(_p.c.ts).label("first_ts"), *_volume_columns())
                            .where(window).group_by(tb, _p.c.head_version)).mappings():
        totals.group(row["start"], row["head_version"], row)
        totals.seen(row["head_version"], row["first_ts"])
    for version, label, n in conn.execute(sa.select(_p.c.head_version, _p.c.label, sa.func.count())
                                          .where(window).group_by(_p.c.head_version, _p.c.label)):
        _merge(totals.labels[version], {label: int(n)})
    totals.add_latency_rows(conn.execute(sa.select(tb, _p.c.head_version, lat, sa.func.count())
                                    .where(window, _is_first_text()).group_by(tb, _p.c.head_version, lat)))


def _from_rollups(conn: sa.Connection, totals: _Totals, head: str, since: datetime, until: datetime,
                  bucket: Bucket) -> None:
    """The hourly rollups of the whole hours [since, until): one row per (hour, version), summed into
    time buckets here (a month is 720 rows per version); labels summed per version in SQL."""
    r, lab = rollup_hour, rollup_label
    cols = [r.c[f] for f in (*_Group.FIELDS, *(f"h{i}" for i in range(10)))]
    for row in conn.execute(sa.select(r.c.hour, r.c.head_version, r.c.first_ts, r.c.latency, *cols)
                            .where(r.c.head == head, r.c.hour >= since, r.c.hour < until)).mappings():
        start = _bucket_start(row["hour"])
        if bucket == "day":
            start = start.replace(hour=0)
        totals.group(start, row["head_version"], row)
        totals.seen(row["head_version"], row["first_ts"])
        totals.add_latency(start, row["head_version"], json.loads(row["latency"]))  # {"<bucket>": n}
    for version, label, n in conn.execute(
            sa.select(lab.c.head_version, lab.c.label, sa.func.sum(lab.c.n))
            .where(lab.c.head == head, lab.c.hour >= since, lab.c.hour < until).group_by(lab.c.head_version, lab.c.label)):
        _merge(totals.labels[version], {label: int(n)})


def build_report(engine: sa.Engine, head: str, *, since: datetime | None = None, until: datetime | None = None,
                 bucket: Bucket = "hour") -> dict:
    """The report of one head: a `report_models.InferenceReport` as plain JSON types (the gateway's
    GET /v1/models/{name}/report adds the head's drift and its range adjustments).

    The whole hours of [since, until) come from the rollups, the partial hours at its ends from the
    raw rows (both: volumes and confidence histogram per (time bucket, version), labels per version,
    the latency histogram of requests per (time bucket, version)); feedback (true x predicted label)
    per version from rollup_feedback and the feedback table alike. Versions and the summary are sums of the groups."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, not {bucket!r}")
    until = utc(until) if until is not None else datetime.now(timezone.utc)
    since = utc(since) if since is not None else until - DEFAULT_RANGE
    whole_from, whole_to = _hour_ceil(since), _hour_floor(until)
    f, rf = feedback, rollup_feedback
    totals = _Totals()
    feedback_rows: list = []
    with engine.connect() as conn:
        if whole_from < whole_to:
            _from_rollups(conn, totals, head, whole_from, whole_to, bucket)
            n = sa.func.sum(rf.c.n)
            feedback_rows += conn.execute(
                sa.select(rf.c.head_version, rf.c.label, rf.c.predicted_label, n)
                .where(rf.c.head == head, rf.c.hour >= whole_from, rf.c.hour < whole_to)
                .group_by(rf.c.head_version, rf.c.label, rf.c.predicted_label).having(n > 0)).all()
            raw = [(since, whole_from), (whole_to, until)]
        else:
            raw = [(since, until)]
        for lo, hi in raw:
            if lo < hi:
                _from_raw_rows(conn, totals, head, lo, hi, bucket)
                feedback_rows += conn.execute(
                    sa.select(f.c.head_version, f.c.label, f.c.predicted_label, sa.func.count())
                    .where(f.c.head == head, f.c.prediction_ts >= lo, f.c.prediction_ts < hi)
                    .group_by(f.c.head_version, f.c.label, f.c.predicted_label)).all()

    groups, labels, first_seen = totals.groups, totals.labels, totals.first_seen
    confusion: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for version, true, predicted, count in feedback_rows:
        _merge(confusion[version], {(true, predicted): int(count)})

    per_version: dict[str, _Group] = defaultdict(_Group)
    total = _Group()
    for (_, version), group in groups.items():
        per_version[version].add(group)
    for group in per_version.values():  # the few versions, not the many groups: merging histograms costs
        total.add(group)
    all_labels: dict[str, int] = {}
    all_confusion: dict[tuple[str, str], int] = {}
    for version in per_version:
        _merge(all_labels, labels[version])
    for per in confusion.values():
        _merge(all_confusion, per)

    versions = [{"version": v, **_stats(per_version[v], labels[v], confusion.get(v, {}))}
                for v in sorted(per_version, key=lambda v: (first_seen[v], v))]
    timeline = sorted(({"start": start.isoformat(), "version": version, **group.volume()}
                       for (start, version), group in groups.items()), key=lambda t: (t["start"], t["version"]))
    return {"model": head, "since": since.isoformat(), "until": until.isoformat(), "bucket": bucket,
            "summary": _stats(total, all_labels, all_confusion), "versions": versions, "timeline": timeline}
