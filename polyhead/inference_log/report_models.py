"""The inference-log report, typed once: what `reports.build_report` produces. The gateway's
GET /v1/models/{name}/report answers it with the head's drift added (gateway.insights.Report), which
`polyhead report` and the console read.

No SQLAlchemy here: the gateway's schema and the CLI reading a gateway's report need only these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

Bucket = Literal["hour", "day"]


class Latency(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class FeedbackStats(BaseModel):
    count: int
    accuracy: float | None
    f1_weighted: float | None


class Volume(BaseModel):
    """What every group of rows reports: a time bucket of one version, a version, the whole range."""

    requests: int
    texts: int
    abstain_rate: float | None
    confidence_mean: float | None
    latency_ms: Latency


class Stats(Volume):
    label_distribution: dict[str, int]
    confidence_histogram: Histogram
    feedback: FeedbackStats


class VersionStats(Stats):
    version: str


class TimelineEntry(Volume):
    start: datetime
    version: str


class InferenceReport(BaseModel):
    model: str
    since: datetime
    until: datetime
    bucket: Bucket
    summary: Stats
    versions: list[VersionStats]
    timeline: list[TimelineEntry]
