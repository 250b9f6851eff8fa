"""OpenTelemetry spans across gateway -> head -> embedder, off by default and free when off.

Off (no `otlp_endpoint` configured): nothing of OpenTelemetry is imported; `span()` returns one
shared null context and `inject()` adds nothing. On: each service makes spans of its own work, the
W3C `traceparent` header carries the trace over HTTP (gateway -> head) and as gRPC metadata (head or
gateway -> embedder), and spans go to the OTLP/HTTP endpoint in batches. The SDK and exporter are
the optional extra `tracing` (pyproject.toml). Tests pass an in-memory exporter to `configure`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

_NULL = contextlib.nullcontext()
_tracer: Any = None
_propagator: Any = None
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, endpoint: str | None = None, *, exporter: Any = None) -> bool:
    """Start tracing for this process (`service` names it in the resource); False, importing nothing,
    when there is neither an endpoint nor an exporter. A second call replaces the first."""
    global _tracer, _propagator, _provider
    if endpoint is None and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": f"polyhead-{service}"}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    shutdown()
    _provider, _tracer, _propagator = provider, provider.get_tracer("polyhead"), TraceContextTextMapPropagator()
    return True


def shutdown() -> None:
    """Flush and stop (tests; a process exiting flushes by itself)."""
    global _tracer, _propagator, _provider
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = _propagator = None


def span(name: str, *, service: str, parent: Mapping[str, str] | None = None, **attributes: Any):
    """A context manager: the span (or None when tracing is off). `parent`: headers or gRPC metadata
    that may carry a `traceparent` (the caller's span); without one the span joins the current trace."""
    if _tracer is None:
        return _NULL
    context = _propagator.extract(parent) if parent is not None else None
    return _tracer.start_as_current_span(name, context=context,
                                         attributes={"polyhead.service": service, **_clean(attributes)})


def set_attributes(current: Any, **attributes: Any) -> None:
    if current is not None:
        current.set_attributes(_clean(attributes))


def inject(carrier: dict[str, str]) -> dict[str, str]:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers or metadata."""
    if _propagator is not None:
        _propagator.inject(carrier)
    return carrier


def grpc_metadata(metadata: Any) -> dict[str, str]:
    """A gRPC invocation metadata sequence as the mapping the propagator reads."""
    return {k: v for k, v in (metadata or ()) if isinstance(v, str)}


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
