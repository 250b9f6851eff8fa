"""OpenTelemetry: one trace from the gateway through the head (traceparent over HTTP) to the embedder
(traceparent as gRPC metadata), embed spans with batch size and cache hits; off by default at no cost.

The unit stack runs in one process (gateway app, head over uvicorn, embedder over grpc.aio), so one
in-memory exporter sees every service's spans; each span names its service (`polyhead.service`).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from polyhead import tracing
from tests.conftest import ROOT
from tests.unit.conftest import HEAD


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert tracing.configure("tests", exporter=exporter)
    yield exporter
    tracing.shutdown()


async def test_one_trace_from_the_gateway_through_the_head_to_the_embedder(gateway, spans):
    text = "trace me through every hop, please"
    for _ in range(2):  # the second call is a cache hit at the embedder
        reply = await gateway.post(f"/v1/models/{HEAD}/predict", json={"texts": [text, "and a second text"]})
        assert reply.status_code == 200, reply.text
    finished = spans.get_finished_spans()
    by_service = {}
    for span in finished:
        by_service.setdefault(span.attributes["polyhead.service"], []).append(span)
    gateway_spans = [s for s in by_service["gateway"] if s.name == "gateway predict"]
    head_spans = [s for s in by_service["head"] if s.name == "head predict"]
    embed_spans = [s for s in by_service["embedder"] if s.name == "embedder Embed"]
    assert len(gateway_spans) == len(head_spans) == 2 and len(embed_spans) >= 2

    for g in gateway_spans:
        (h,) = [s for s in head_spans if s.context.trace_id == g.context.trace_id]
        assert h.parent.span_id == g.context.span_id  # W3C traceparent over HTTP
        assert h.attributes["head"] == HEAD and h.attributes["predict.texts"] == 2
        embeds = [s for s in embed_spans if s.context.trace_id == g.context.trace_id]
        assert embeds and all(e.parent.span_id == h.context.span_id for e in embeds)  # over gRPC metadata
        assert g.attributes["model"] == HEAD and g.attributes["http.status_code"] == 200
    first, second = (next(e for e in embed_spans if e.context.trace_id == g.context.trace_id)
                     for g in gateway_spans)
    assert first.attributes["embed.batch_size"] == second.attributes["embed.batch_size"] == 2
    assert second.attributes["embed.cache_hits"] == 2  # both texts answered from the embedder's cache


async def test_embeddings_and_classify_are_traced_too(gateway, spans):
    await gateway.post("/v1/embeddings", json={"model": "default", "input": ["a", "b", "c"]})
    await gateway.post("/v1/classify", json={"text": "refund me", "models": [HEAD]})
    names = {s.name for s in spans.get_finished_spans()}
    assert {"gateway embeddings", "gateway classify", "embedder Embed"} <= names


def test_off_by_default_imports_no_sdk_and_changes_nothing():
    code = ("import sys; import gateway.http_server, heads.http_server, embedder.grpc_server, embedder.client\n"
            "from polyhead import tracing\n"
            "from gateway.settings import GatewaySettings\n"
            "from gateway.http_server import create_app\n"
            "create_app(GatewaySettings())\n"
            "assert not tracing.enabled()\n"
            "assert tracing.span('x', service='y') is tracing.span('z', service='w')  # one shared null context\n"
            "assert tracing.inject({}) == {}\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
