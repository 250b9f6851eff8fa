"""The report's wire contract, typed once: what `reports.build_report` produces, the gateway's
GET /v1/models/{name}/report answers (its OpenAPI document), `polyhead report` and the console read.

No SQLAlchemy here: the CLI reading a gateway's report, and the gateway's schema, need only these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

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


class Report(BaseModel):
    model: str
    since: datetime
    until: datetime
    bucket: Bucket
    summary: Stats
    versions: list[VersionStats]
    timeline: list[TimelineEntry]
    drift: dict[str, Any] | None = Field(None, description="The head's GET /drift; null when it has none or is down")
    adjusted: list[str] = Field([], description="How the asked range or bucket was changed to fit the limits "
                                                "(empty when it was not): since/until/bucket above are what was used")
