"""Hourly rollups of the inference log: what reports read instead of the raw rows.

Per (head, version, UTC hour): request and text counts, abstentions, the confidence histogram and
sum, the latency histogram of requests (``rollup_hour.latency_bins``: the dense run of buckets from
its first non-empty one, little-endian int64s, so a month of hours is 720 rows a reader adds as arrays
with no per-bucket Python work, not ~100,000 rows) and label counts (``rollup_label``). All are sums, so hours merge into days, versions and summaries exactly; the
writer adds each batch's sums in the same transaction as its raw rows (upsert increments; the
histogram is merged under the row lock the upsert took), counting only rows that were really
inserted, so a replayed spool never counts twice.

Latency buckets are log-spaced: bucket ``k`` holds [R**k, R**(k+1)) ms with R = 1.02, and reads
back as its geometric middle, so a percentile read off the histogram is within 1 % of the exact
one (sqrt(1.02) - 1 = 0.995 %). No SQLAlchemy here: the serving head's writer uses it (sink.py).
"""

from __future__ import annotations

import bisect
import json
import math
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

LATENCY_RATIO = 1.02
_LOG_RATIO = math.log(LATENCY_RATIO)
MIN_LATENCY_MS = 0.001  # anything below (0, clock quirks) shares bucket of 1 µs
CONFIDENCE_BINS = 10  # [0.0, 0.1), ..., [0.9, 1.0]; the ends take anything beyond


def latency_bucket(latency_ms: float) -> int:
    return math.floor(math.log(max(float(latency_ms), MIN_LATENCY_MS)) / _LOG_RATIO)


def bucket_value(bucket: int) -> float:
    """The geometric middle of a latency bucket: at most 0.995 % from any latency in it."""
    return LATENCY_RATIO ** (bucket + 0.5)


_INNER_EDGES = [round(i / CONFIDENCE_BINS, 1) for i in range(1, CONFIDENCE_BINS)]  # 0.1 ... 0.9, as reports.py


def confidence_bin(probability: float) -> int:
    """The bin of reports.HISTOGRAM_EDGES holding `probability` (compared with the edges, not p * 10)."""
    return bisect.bisect_right(_INNER_EDGES, probability)


def hour_of(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


@dataclass
class HourSums:
    requests: int = 0
    texts: int = 0
    abstained: int = 0
    abstain_known: int = 0
    confidence_sum: float = 0.0
    first_ts: datetime | None = None
    histogram: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    labels: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)


Key = tuple[str, str, datetime]  # (head, head_version, hour)


def aggregate(rows: Iterable[tuple]) -> dict[Key, HourSums]:
    """Sums per (head, version, hour) of rows (head, head_version, ts, text_index, label, probability,
    latency_ms, abstained); ``ts`` aware UTC. A request is its first text (text_index 0 or NULL)."""
    out: dict[Key, HourSums] = {}
    for head, version, ts, text_index, label, probability, latency_ms, abstained in rows:
        key = (head, version, hour_of(ts))
        s = out.get(key)
        if s is None:
            s = out[key] = HourSums()
        s.texts += 1
        s.confidence_sum += probability
        s.histogram[confidence_bin(probability)] += 1
        s.labels[label] = s.labels.get(label, 0) + 1
        if abstained is not None:
            s.abstain_known += 1
            s.abstained += bool(abstained)
        if not text_index:
            s.requests += 1
            b = latency_bucket(latency_ms)
            s.latency[b] = s.latency.get(b, 0) + 1
        if s.first_ts is None or ts < s.first_ts:
            s.first_ts = ts
    return out


# `latency` (JSON {"<bucket>": n}) is how writers of schema 7 and before stored the histogram: new
# writers leave it '{}' and fill `latency_bins`; readers add both, so a rolling upgrade loses nothing.
HOUR_COLUMNS = ("head", "head_version", "hour", "requests", "texts", "abstained", "abstain_known", "confidence_sum",
                "first_ts", *(f"h{i}" for i in range(CONFIDENCE_BINS)), "latency", "latency_bins")
INCREMENTED = tuple(c for c in HOUR_COLUMNS[3:] if c not in ("first_ts", "latency", "latency_bins"))
EMPTY_JSON = "{}"


def encode_latency(histogram: dict[int, int]) -> str:
    """The schema-7 JSON form (old rows; migration 8 moves them into latency_bins)."""
    return json.dumps({str(b): histogram[b] for b in sorted(histogram)}, separators=(",", ":"))


def decode_latency(text: str | None) -> dict[int, int]:
    return {int(b): int(n) for b, n in json.loads(text).items()} if text else {}


def encode_bins(histogram: dict[int, int]) -> bytes:
    """latency_bins: int64s [first bucket, its count, the next bucket's count, ...] (little-endian),
    from the first to the last non-empty bucket; b"" when empty. ~1.5 kB for an hour of real traffic."""
    if not histogram:
        return b""
    first, last = min(histogram), max(histogram)
    out = array("q", [first, *(histogram.get(b, 0) for b in range(first, last + 1))])
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def decode_bins(blob: bytes | None) -> dict[int, int]:
    if not blob:
        return {}
    values = array("q", bytes(blob))
    if sys.byteorder == "big":
        values.byteswap()
    return {values[0] + i: n for i, n in enumerate(values[1:]) if n}


def merge_bins(stored: bytes | None, more: dict[int, int]) -> bytes:
    histogram = decode_bins(stored)
    for b, n in more.items():
        histogram[b] = histogram.get(b, 0) + n
    return encode_bins(histogram)


def upsert_statements(placeholder: str, least: str) -> tuple[str, str, str, str]:
    """For a DBAPI driver (``?`` or ``%s``; ``least``: the dialect's two-argument min / LEAST): the
    ``INSERT ... ON CONFLICT DO UPDATE`` increments of rollup_hour and rollup_label, then the read
    and the write of an hour's latency_bins (merged in Python, under the upsert's row lock)."""
    def values(n: int) -> str:
        return ", ".join([placeholder] * n)

    sets = ", ".join(f"{c} = rollup_hour.{c} + excluded.{c}" for c in INCREMENTED)
    hour = (f"INSERT INTO rollup_hour ({', '.join(HOUR_COLUMNS)}) VALUES ({values(len(HOUR_COLUMNS))}) "
            f"ON CONFLICT (head, head_version, hour) DO UPDATE SET {sets}, "
            f"first_ts = {least}(rollup_hour.first_ts, excluded.first_ts)")
    label = (f"INSERT INTO rollup_label (head, head_version, hour, label, n) VALUES ({values(5)}) "
             "ON CONFLICT (head, head_version, hour, label) DO UPDATE SET n = rollup_label.n + excluded.n")
    key = f"head = {placeholder} AND head_version = {placeholder} AND hour = {placeholder}"
    return (hour, label, f"SELECT latency_bins FROM rollup_hour WHERE {key}",
            f"UPDATE rollup_hour SET latency_bins = {placeholder} WHERE {key}")


def upsert_rows(sums: dict[Key, HourSums], ts_param, *, with_latency: bool = False
                ) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Parameters of upsert_statements for `sums`: hour rows, label rows, (head, version, hour,
    histogram) to merge; ``ts_param`` binds a datetime for the driver. The hour rows carry an empty
    histogram (the merge adds it), or with ``with_latency`` their own (bulk loads into empty tables).
    Sorted by key so concurrent writers take row locks in one order (no deadlocks on PostgreSQL)."""
    hours, labels, latencies = [], [], []
    for (head, version, hour), s in sorted(sums.items(), key=lambda kv: kv[0]):
        h = ts_param(hour)
        hours.append((head, version, h, s.requests, s.texts, s.abstained, s.abstain_known, s.confidence_sum,
                      ts_param(s.first_ts), *s.histogram, EMPTY_JSON, encode_bins(s.latency if with_latency else {})))
        labels += [(head, version, h, label, n) for label, n in sorted(s.labels.items())]
        if s.latency:
            latencies.append((head, version, h, s.latency))
    return hours, labels, latencies
