"""`polyhead report NAME`: fetch a head's report (from the gateway, or straight from the inference DB)
and print it as rich tables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.markup import escape

from gateway.insights import Report
from cli.gateway_client import call_gateway
from polyhead.errors import NotFoundError, PolyheadError, UnavailableError, ValidationError


def parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{option}: {value!r} is not an ISO 8601 date-time (e.g. 2026-03-01T10:00:00Z)",
                              field=option) from None


def from_gateway(gateway: str, name: str, *, since: str | None, until: str | None, bucket: str,
                 api_key: str | None = None) -> Report:
    """GET /v1/models/{name}/report; the gateway's error message on a 4xx/5xx."""
    params = {"bucket": bucket, **({"since": since} if since else {}), **({"until": until} if until else {})}
    r = call_gateway("GET", f"{gateway.rstrip('/')}/v1/models/{name}/report", api_key=api_key, timeout_s=60,
                     hint=" (or read the DB directly with --db-url)", params=params)
    try:
        return Report.model_validate_json(r.content)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UnavailableError(f"gateway at {gateway} answered a report this client cannot read: {exc}") from None


def from_db(db_url: str, name: str, *, since: str | None, until: str | None, bucket: str,
            heads_dir: Path | None = None) -> Report:
    """The same report built here from the inference DB (no gateway needed; no drift: that lives in the head)."""
    from heads.config import HeadConfigError, load_head_configs
    from polyhead.inference_log.reports import build_report
    from polyhead.inference_log.review import review_summary
    from polyhead.inference_log.schema import make_engine, migrate

    if heads_dir is not None and Path(heads_dir).is_dir():
        try:
            known = sorted(load_head_configs(Path(heads_dir)))
        except HeadConfigError:  # a broken config elsewhere must not hide this head's report
            known = [name]
        if name not in known:
            raise NotFoundError(f"unknown model {name!r}; known models: {', '.join(known) or '(none)'}")
    engine = make_engine(db_url)
    try:
        migrate(engine)
        body = build_report(engine, name, since=parse_time(since, "--since"), until=parse_time(until, "--until"),
                            bucket=bucket)
        # No head to ask for its labels here: the labels it has predicted stand in for them.
        body["review"] = review_summary(engine, name, since=datetime.fromisoformat(body["since"]),
                                        until=datetime.fromisoformat(body["until"]))
    except PolyheadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any DB failure: say which DB
        raise UnavailableError(f"cannot read the inference DB {db_url}: {type(exc).__name__}: {exc}") from None
    finally:
        engine.dispose()
    return Report.model_validate({**body, "drift": None})


def _num(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(report: Report) -> Group:
    """Rich renderables: versions (+ all), labels, confidence histogram, timeline, drift."""
    s = report.summary
    title = (f"[bold]{report.model}[/bold]  {report.since.isoformat()} .. {report.until.isoformat()}  "
             f"({s.requests} requests, {s.texts} texts)")
    versions = Table("version", "requests", "texts", "abstain", "conf.", "latency ms p50/p95/p99", "feedback",
                     "acc.", "F1 w.", title=title, title_justify="left")
    versions.columns[0].overflow = "fold"  # a version id is long: wrap it, never cut it
    for name, v in [*((v.version, v) for v in report.versions), ("[bold]all[/bold]", s)]:
        fb, lat = v.feedback, v.latency_ms
        versions.add_row(name, str(v.requests), str(v.texts), _pct(v.abstain_rate),
                         _num(v.confidence_mean, "{:.2f}"), "/".join(_num(x, "{:.1f}") for x in (lat.p50, lat.p95, lat.p99)),
                         str(fb.count), _num(fb.accuracy), _num(fb.f1_weighted))
    parts = [versions]
    # what the gateway changed to fit its limits (a backwards range, too many buckets)
    parts += [f"[yellow]adjusted:[/yellow] {escape(note)}" for note in report.adjusted]
    if s.texts:
        labels = Table("label", "texts", "share", title="labels", title_justify="left")
        for label, n in s.label_distribution.items():
            labels.add_row(label, str(n), _pct(n / s.texts))
        hist = Table("confidence", "texts", "", title="confidence histogram", title_justify="left")
        edges, counts = s.confidence_histogram.edges, s.confidence_histogram.counts
        peak = max(counts) or 1
        for i, n in enumerate(counts):
            hist.add_row(f"{edges[i]:.1f}-{edges[i + 1]:.1f}", str(n), "#" * round(30 * n / peak))
        timeline = Table("start (UTC)", "version", "requests", "texts", "abstain", "conf.", "p95 ms",
                         title=f"per {report.bucket}", title_justify="left")
        timeline.columns[1].overflow = "fold"
        for t in report.timeline:
            timeline.add_row(t.start.strftime("%Y-%m-%d %H:%M"), t.version, str(t.requests), str(t.texts),
                             _pct(t.abstain_rate), _num(t.confidence_mean), _num(t.latency_ms.p95, "{:.1f}"))
        parts += [labels, hist, timeline]
    review = report.review
    if review is not None and (review.by_strategy or review.pending_labels):
        by = Table("feedback from", "count", "acc.", "F1 w.", title="feedback by review strategy (live accuracy: "
                   "the random slice only)", title_justify="left")
        for name, fb in review.by_strategy.items():
            by.add_row(name, str(fb.count), _num(fb.accuracy), _num(fb.f1_weighted))
        parts.append(by)
        live = review.live_accuracy
        ci = f" (95 % CI {live.ci95[0]:.3f}-{live.ci95[1]:.3f})" if live.ci95 else ""
        parts.append(f"live accuracy: {_num(live.accuracy)} from {live.count} randomly picked texts{ci}"
                     if live.count else "live accuracy: - (no feedback on randomly picked texts: "
                                        "`polyhead review NAME --strategy random`)")
        if review.pending_labels:
            need = f" (a class once it has {review.min_new_label_examples})" if review.min_new_label_examples else ""
            parts.append("pending new labels" + need + ": " +
                         ", ".join(f"{escape(k)} {v}" for k, v in review.pending_labels.items()))
    drift = report.drift
    if drift:
        flag = "[red]FLAGGED[/red]" if drift.flagged else "[green]ok[/green]"
        scores = ", ".join(f"{k} {_num(v)}" for k, v in drift.scores.items())
        reasons = "; ".join(drift.reasons)
        parts.append(f"drift: {flag}  {scores}" + (f"  ({reasons})" if reasons else ""))
    else:
        parts.append("drift: - (not available: read through the gateway, from a head that reports drift)")
    return Group(*parts)


def print_report(report: Report, console: Console | None = None) -> None:
    (console or Console()).print(render(report))
