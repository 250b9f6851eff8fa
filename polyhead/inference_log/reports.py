"""Reports over the inference log, read from its hourly rollups (SQLAlchemy Core; SQLite or PostgreSQL).

One head over whole UTC hours [since, until): request and text volume, label distribution, confidence
histogram and mean, abstain rate, latency percentiles and live accuracy / weighted F1 from feedback;
for the whole range, per head version and per (time bucket, version).

Everything is read from the rollups the writer keeps (rollups.py; feedback's from rollup_feedback,
kept by feedback.store_feedback): three queries, O(hours) rows, never the raw rows. A range that
does not start or end on the hour is widened to whole hours (`whole_hours`) and the report's
since/until say so: every count is exact over the range the report states, and a report over hours
whose raw rows retention pruned is the same as before. (Reading the partial end hours from raw rows
instead cost ~40,000 rows at 1M predictions a day, most of a 24 h report's time; BENCHMARKS.md.)

- Requests: a request is its first text's row (``text_index`` 0). Rows logged before migration 2
  (``text_index`` NULL) count one request per text.
- Latency percentiles are over the requests (one latency per request, not per text), read
  nearest-rank off the summed fine histogram (log-spaced buckets, ratio 1.02: within 1 % of the
  exact value, rollups.py). Each hour's histogram is a dense int64 run (``latency_bins``) added to a
  numpy array as one slice; unlike exact percentiles, histograms merge, so versions and the summary
  need no further query.
- Abstain rate: over the rows that record it (``abstained`` is NULL before migration 2).
- Time buckets are UTC hours, or days summed from them.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import numpy as np
import sqlalchemy as sa

from polyhead.inference_log.report_models import Bucket
from polyhead.inference_log.rollups import EMPTY_JSON, MIN_LATENCY_MS, bucket_value, decode_latency, latency_bucket
from polyhead.inference_log.schema import rollup_feedback, rollup_hour, rollup_label

BUCKETS: tuple[str, ...] = get_args(Bucket)
HISTOGRAM_EDGES = [round(i / 10, 1) for i in range(11)]
PERCENTILES = (50, 95, 99)
DEFAULT_RANGE = timedelta(hours=24)


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _bucket_start(value: Any) -> datetime:
    return utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


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
    return latency_percentiles_many([histogram])[0]


def latency_percentiles_many(histograms: list[np.ndarray]) -> list[dict]:
    """latency_percentiles of many arrays at once: one cumulative sum over a matrix, not one per group
    (a month's hour buckets are ~720 groups)."""
    if not histograms:
        return []
    matrix = np.vstack(histograms)
    used = np.flatnonzero(matrix.any(axis=0))  # real traffic fills ~200 of the ~1,050 buckets
    lo = int(used[0]) if len(used) else 0
    cumulative = np.cumsum(matrix[:, lo:int(used[-1]) + 1 if len(used) else 1], axis=1)
    n = cumulative[:, -1]
    # the first bucket whose cumulative count reaches the nearest rank ceil(p/100 * n), per row
    at = {p: (cumulative < (-(-n * p // 100))[:, None]).sum(axis=1) + lo for p in PERCENTILES}
    return [{f"p{p}": round(bucket_value(int(at[p][i]) + _LAT_LOW), 3) if n[i] else None for p in PERCENTILES}
            for i in range(len(histograms))]


_ZERO_LATENCY = latency_array({})


def add_bins(histogram: np.ndarray, blob: bytes | None) -> np.ndarray:
    """histogram + one rollups.encode_bins run (clipped to the array's ends as latency_array clips)."""
    if not blob:
        return histogram
    run = np.frombuffer(blob, "<i8")
    first, counts = int(run[0]) - _LAT_LOW, run[1:]
    out = histogram.copy()  # histograms are replaced, never changed in place (shared zeros)
    lo, hi = max(first, 0), min(first + len(counts), len(out))
    if lo < hi:
        out[lo:hi] += counts[lo - first:hi - first]
    if first < 0:
        out[0] += counts[:min(-first, len(counts))].sum()
    if first + len(counts) > len(out):
        out[-1] += counts[max(len(out) - first, 0):].sum()
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

    def volume(self, latency: dict | None = None) -> dict:
        """`latency`: its percentiles when already computed (latency_percentiles_many)."""
        texts, known = int(self.sums["texts"]), int(self.sums["abstain_known"])
        return {"requests": int(self.sums["requests"]), "texts": texts,
                "abstain_rate": round(int(self.sums["abstained"]) / known, 6) if known else None,
                "confidence_mean": round(float(self.sums["confidence_sum"]) / texts, 6) if texts else None,
                "latency_ms": latency if latency is not None else latency_percentiles(self.latency)}


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

    def seen(self, version: str, first_ts: Any) -> None:
        ts = _bucket_start(first_ts)
        self.first_seen[version] = min(self.first_seen.get(version, ts), ts)


def _from_rollups(conn: sa.Connection, totals: _Totals, head: str, since: datetime, until: datetime,
                  bucket: Bucket) -> None:
    """The hourly rollups of [since, until) (whole hours): one row per (hour, version), summed into
    time buckets here (a month is 720 rows per version; each latency histogram one array slice added);
    labels summed per version in SQL."""
    r, lab = rollup_hour, rollup_label
    cols = [r.c[f] for f in (*_Group.FIELDS, *(f"h{i}" for i in range(10)))]
    for row in conn.execute(sa.select(r.c.hour, r.c.head_version, r.c.first_ts, r.c.latency_bins, r.c.latency, *cols)
                            .where(r.c.head == head, r.c.hour >= since, r.c.hour < until)).mappings():
        start = _bucket_start(row["hour"])
        if bucket == "day":
            start = start.replace(hour=0)
        group = totals.group(start, row["head_version"], row)
        totals.seen(row["head_version"], row["first_ts"])
        group.latency = add_bins(group.latency, row["latency_bins"])
        if row["latency"] != EMPTY_JSON:  # written by a schema-7 writer during a rolling upgrade
            group.latency = group.latency + latency_array(decode_latency(row["latency"]))
    for version, label, n in conn.execute(
            sa.select(lab.c.head_version, lab.c.label, sa.func.sum(lab.c.n))
            .where(lab.c.head == head, lab.c.hour >= since, lab.c.hour < until).group_by(lab.c.head_version, lab.c.label)):
        _merge(totals.labels[version], {label: int(n)})


def whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The range a report covers: [since, until) widened to whole UTC hours (since floored, until
    ceiled; the ends of datetime's range stay; an empty range stays empty, at `until`). Every figure
    is exact over it: rollups hold whole hours."""
    since, until = utc(since), utc(until)
    if since >= until:
        return until, until
    try:
        until = _hour_ceil(until)
    except OverflowError:  # within the last hour of year 9999
        pass
    return _hour_floor(since), until


def default_since(until: datetime) -> datetime:
    """The default range's start: the 24 whole hours up to the end of until's hour (from year 1 at most)."""
    try:
        end = _hour_ceil(utc(until))
    except OverflowError:
        end = utc(until)
    earliest = datetime.min.replace(tzinfo=timezone.utc)
    return end - DEFAULT_RANGE if end - earliest > DEFAULT_RANGE else earliest


def build_report(engine: sa.Engine, head: str, *, since: datetime | None = None, until: datetime | None = None,
                 bucket: Bucket = "hour") -> dict:
    """The report of one head: a `report_models.InferenceReport` as plain JSON types (the gateway's
    GET /v1/models/{name}/report adds the head's drift and its range adjustments).

    It covers whole UTC hours: [since, until) widened by `whole_hours` (the default: the 24 hours up to
    the end of the current one), and says so in its since/until. Everything comes from the rollups in
    three queries (hours, labels, feedback), none over raw rows, so it costs the same whether retention
    pruned them or not: volumes, confidence and latency histograms per (hour, version), summed here into
    time buckets; labels and feedback (true x predicted label) per version, summed in SQL. Versions and
    the summary are sums of the groups."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, not {bucket!r}")
    until = utc(until) if until is not None else datetime.now(timezone.utc)
    since, until = whole_hours(since if since is not None else default_since(until), until)
    rf = rollup_feedback
    totals = _Totals()
    feedback_rows: list = []
    with engine.connect() as conn:
        if since < until:
            _from_rollups(conn, totals, head, since, until, bucket)
            n = sa.func.sum(rf.c.n)
            feedback_rows += conn.execute(
                sa.select(rf.c.head_version, rf.c.label, rf.c.predicted_label, n)
                .where(rf.c.head == head, rf.c.hour >= since, rf.c.hour < until)
                .group_by(rf.c.head_version, rf.c.label, rf.c.predicted_label).having(n > 0)).all()

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
    per_group = latency_percentiles_many([group.latency for group in groups.values()])
    timeline = sorted(({"start": start.isoformat(), "version": version, **group.volume(latency)}
                       for ((start, version), group), latency in zip(groups.items(), per_group)),
                      key=lambda t: (t["start"], t["version"]))
    return {"model": head, "since": since.isoformat(), "until": until.isoformat(), "bucket": bucket,
            "summary": _stats(total, all_labels, all_confusion), "versions": versions, "timeline": timeline}
