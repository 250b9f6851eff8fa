"""Client library for the embedder (used by heads, the gateway and external gRPC users).

No TensorFlow here: only grpc, protobuf and numpy. One channel per client, reused for every
call; per-call deadlines; retries with exponential backoff and jitter on UNAVAILABLE (a server
restarting or a replica going away); `dns:///host:port` targets are balanced round-robin across
every address the name resolves to (a Kubernetes headless Service), and `ipv4:h:p1,h:p2` lists
likewise (`polyhead up --embedder-replicas`); a replica whose health is not SERVING gets no calls.
Server errors come back as polyhead's own error types, so callers map them to HTTP the same way as
their own errors. `feature_set` picks the encoder output (embedder/feature_sets.py); the answer's
fingerprint is that set's, and `info()` lists every set served (`feature_sets(info)` as a dict).
Requests accept float16 (embedder/wire.py): a set stored in float16 (all6) arrives in half the bytes;
vectors always reach callers as float32.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence

import grpc
import numpy as np

from embedder import wire
from embedder.feature_sets import DEFAULT, FeatureSet, answers, precision_of
from embedder.v1 import embedder_pb2, embedder_pb2_grpc
from polyhead import tracing
from polyhead.errors import (
    DeadlineExceededError,
    NotFoundError,
    OverloadedError,
    PolyheadError,
    UnavailableError,
    ValidationError,
)
from polyhead.settings import DEFAULT_EMBEDDER_TARGET
from polyhead.validation import first_unencodable

# Round-robin over every address of the target; client-side health checking (grpc.health.v1 Watch)
# keeps calls off a replica that listens but is not SERVING yet (loading its model) or any more (draining).
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}})
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
}


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # [N, dim] float32 (a float16 set's values, upcast exactly)
    cached: list[bool]
    truncated: list[bool]
    fingerprint: str
    model: str
    token_counts: list[int]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** attempt)
        return random.uniform(cap / 2, cap)  # jitter so replicas' clients do not retry in lockstep


def decode_set(response: embedder_pb2.EmbedResponse, feature_set: str) -> Embeddings:
    """decode(), refusing default vectors answered for another set (by an embedder older than feature sets)."""
    if not answers(response.fingerprint, feature_set):
        raise ValidationError(f"feature_set: the embedder answered {response.fingerprint}, not feature set "
                              f"{feature_set!r}; it predates feature sets and serves only 'default'",
                              field="feature_set")
    return decode(response)


def decode(response: embedder_pb2.EmbedResponse) -> Embeddings:
    vectors = wire.decode(response.embeddings, len(response.cached), response.dim, response.encoding)
    return Embeddings(vectors, list(response.cached), list(response.truncated), response.fingerprint, response.model,
                      list(response.token_counts))


def to_polyhead_error(exc: grpc.RpcError) -> PolyheadError:
    code = exc.code()
    error_type = _ERRORS.get(code, PolyheadError)
    trailers = dict(exc.trailing_metadata() or ())
    retry_after = float(trailers["retry-after"]) if "retry-after" in trailers else None
    err = error_type(f"embedder: {exc.details()}", field=trailers.get("field"),
                     retry_after_s=retry_after or (1.0 if code in _RETRYABLE else None))
    return err


def _channel_options(max_message_mb: int) -> list[tuple[str, object]]:
    mb = max_message_mb * 1024 * 1024
    return [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.max_receive_message_length", mb),
        ("grpc.max_send_message_length", mb),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 0),  # retries are ours: app-level, with a visible policy
    ]


def feature_sets(info: embedder_pb2.InfoResponse) -> dict[str, FeatureSet]:
    """The sets an Info answer lists, default first; an embedder older than feature sets serves "default" only."""
    # The precision from the fingerprint (as the caches read it), not `storage`: one source of truth.
    sets = {f.name: FeatureSet(f.name, f.dim, f.fingerprint, precision_of(f.fingerprint).name) for f in info.feature_sets}
    return sets or {DEFAULT: FeatureSet(DEFAULT, info.dim, info.fingerprint)}


def embed_request(texts: Sequence[str], bypass_cache: bool = False, feature_set: str = DEFAULT,
                  accept_encoding: int = embedder_pb2.FLOAT16) -> embedder_pb2.EmbedRequest:
    """protobuf strings must be UTF-8: a text with an unpaired surrogate cannot even be sent. Say which.
    FLOAT16 accepted by default: the server sends it for float16 sets only, and decode() upcasts."""
    # "default" travels as the empty string: the request an embedder older than feature sets expects.
    feature_set = "" if feature_set == DEFAULT else feature_set
    try:
        return embedder_pb2.EmbedRequest(texts=list(texts), bypass_cache=bypass_cache, feature_set=feature_set,
                                         accept_encoding=accept_encoding)
    except UnicodeEncodeError:
        i, problem = first_unencodable(texts)
        raise ValidationError(f"texts[{i}]: {problem}", field=f"texts[{i}]") from None


def _metadata(request_id: str | None):
    """x-request-id, and the caller's trace context (traceparent) when tracing is on."""
    pairs = (("x-request-id", request_id),) if request_id else ()
    if tracing.enabled():
        pairs += tuple(tracing.inject({}).items())
    return pairs or None


class EmbedderClient:
    """Blocking client. Thread-safe: share one per process."""

    def __init__(self, target: str = DEFAULT_EMBEDDER_TARGET, timeout_s: float = 10.0,
                 retry: RetryPolicy = RetryPolicy(), max_message_mb: int = 64):
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry
        self._channel = grpc.insecure_channel(target, options=_channel_options(max_message_mb))
        self._stub = embedder_pb2_grpc.EmbedderStub(self._channel)

    def _call(self, method, request, timeout_s: float | None, request_id: str | None):
        for attempt in range(self.retry.max_attempts):
            try:
                return method(request, timeout=timeout_s or self.timeout_s, metadata=_metadata(request_id))
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE or attempt == self.retry.max_attempts - 1:
                    raise to_polyhead_error(exc) from None
                time.sleep(self.retry.backoff(attempt))
        raise AssertionError("unreachable")

    def embed(self, texts: Sequence[str], *, bypass_cache: bool = False, timeout_s: float | None = None,
              request_id: str | None = None, feature_set: str = DEFAULT) -> Embeddings:
        request = embed_request(texts, bypass_cache, feature_set)
        return decode_set(self._call(self._stub.Embed, request, timeout_s, request_id), feature_set)

    def embed_stream(self, batches: Iterable[Sequence[str]], *, bypass_cache: bool = False,
                     timeout_s: float | None = None, request_id: str | None = None,
                     feature_set: str = DEFAULT) -> Iterator[Embeddings]:
        """Bulk jobs: one response per batch, in order, over one HTTP/2 stream (not retried)."""
        requests = (embed_request(b, bypass_cache, feature_set) for b in batches)
        try:
            for response in self._stub.EmbedStream(requests, timeout=timeout_s, metadata=_metadata(request_id)):
                yield decode_set(response, feature_set)
        except grpc.RpcError as exc:
            raise to_polyhead_error(exc) from None

    def info(self, timeout_s: float | None = None) -> embedder_pb2.InfoResponse:
        return self._call(self._stub.Info, embedder_pb2.InfoRequest(), timeout_s, None)

    def health(self, timeout_s: float = 2.0, service: str = "") -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncEmbedderClient:
    """asyncio client; create it inside the event loop that uses it."""

    def __init__(self, target: str = DEFAULT_EMBEDDER_TARGET, timeout_s: float = 10.0,
                 retry: RetryPolicy = RetryPolicy(), max_message_mb: int = 64):
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry
        self._channel = grpc.aio.insecure_channel(target, options=_channel_options(max_message_mb))
        self._stub = embedder_pb2_grpc.EmbedderStub(self._channel)

    async def _call(self, method, request, timeout_s: float | None, request_id: str | None):
        for attempt in range(self.retry.max_attempts):
            try:
                return await method(request, timeout=timeout_s or self.timeout_s, metadata=_metadata(request_id))
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE or attempt == self.retry.max_attempts - 1:
                    raise to_polyhead_error(exc) from None
                await asyncio.sleep(self.retry.backoff(attempt))
        raise AssertionError("unreachable")

    async def embed(self, texts: Sequence[str], *, bypass_cache: bool = False, timeout_s: float | None = None,
                    request_id: str | None = None, feature_set: str = DEFAULT) -> Embeddings:
        request = embed_request(texts, bypass_cache, feature_set)
        return decode_set(await self._call(self._stub.Embed, request, timeout_s, request_id), feature_set)

    async def embed_stream(self, batches: AsyncIterable[Sequence[str]] | Iterable[Sequence[str]], *,
                           bypass_cache: bool = False, timeout_s: float | None = None,
                           request_id: str | None = None, feature_set: str = DEFAULT) -> AsyncIterator[Embeddings]:
        async def requests():
            if hasattr(batches, "__aiter__"):
                async for b in batches:
                    yield embed_request(b, bypass_cache, feature_set)
            else:
                for b in batches:
                    yield embed_request(b, bypass_cache, feature_set)

        try:
            async for response in self._stub.EmbedStream(requests(), timeout=timeout_s, metadata=_metadata(request_id)):
                yield decode_set(response, feature_set)
        except grpc.RpcError as exc:
            raise to_polyhead_error(exc) from None

    async def info(self, timeout_s: float | None = None) -> embedder_pb2.InfoResponse:
        return await self._call(self._stub.Info, embedder_pb2.InfoRequest(), timeout_s, None)

    async def health(self, timeout_s: float = 2.0, service: str = "") -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        await self._channel.close()
