"""gRPC front end of the embedder: the Embedder API, standard health and reflection.

Only this module knows gRPC; the core raises PolyheadError and this maps it to a status once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder import metrics, wire
from embedder.core import EmbeddingService, EmbedOutcome
from embedder.servable import TextEmbeddingServable, make_servable
from embedder.settings import EmbedderSettings
from embedder.v1 import embedder_pb2, embedder_pb2_grpc
from polyhead import tracing
from polyhead import __version__
from polyhead.errors import PolyheadError, UnavailableError, ValidationError, grpc_status_code

log = logging.getLogger("polyhead.embedder.grpc")
SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
STREAM_WINDOW = 4  # stream messages embedded concurrently; answers still leave in order


def request_id(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata() or ()).get("x-request-id", "")


def to_response(outcome: EmbedOutcome, service: EmbeddingService,
                accept_encoding: int = embedder_pb2.FLOAT32) -> embedder_pb2.EmbedResponse:
    embeddings, encoding = wire.encode(outcome.vectors, accept_encoding)
    return embedder_pb2.EmbedResponse(
        embeddings=embeddings,
        encoding=encoding,
        dim=outcome.feature_set.dim,
        cached=outcome.cached,
        truncated=outcome.truncated,
        token_counts=outcome.token_counts,
        fingerprint=outcome.feature_set.fingerprint,
        model=service.servable.name,
    )


class UndecodableRequest:
    """An EmbedRequest whose bytes do not parse: the servicer answers INVALID_ARGUMENT with `error`
    instead of gRPC's generic deserialization failure."""

    def __init__(self, error: ValidationError):
        self.error = error


def decode_embed_request(raw: bytes):
    try:
        return embedder_pb2.EmbedRequest.FromString(raw)
    except DecodeError:
        return UndecodableRequest(_why_undecodable(raw))


def _why_undecodable(raw: bytes) -> ValidationError:
    """Walk the wire format for the usual culprit: a `texts` entry (field 1) that is not UTF-8
    (protobuf strings must be; a lone surrogate from a non-Python client arrives this way)."""
    index = pos = 0
    try:
        while pos < len(raw):
            key, pos = _varint(raw, pos)
            field, wire = key >> 3, key & 7
            if wire == 2:
                size, pos = _varint(raw, pos)
                value, pos = raw[pos:pos + size], pos + size
                if field == 1:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        return ValidationError(f"texts[{index}]: not valid UTF-8 (byte {exc.start}); protobuf "
                                               f"strings must be UTF-8, without unpaired surrogates",
                                               field=f"texts[{index}]")
                    index += 1
            elif wire == 0:
                _, pos = _varint(raw, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                break
    except IndexError:
        pass
    return ValidationError("request: not a valid EmbedRequest message", field="request")


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def add_embedder_servicer(servicer: "EmbedderServicer", server) -> None:
    """The generated registration, with decode_embed_request as the EmbedRequest deserializer."""
    handlers = {
        "Embed": grpc.unary_unary_rpc_method_handler(
            servicer.Embed, request_deserializer=decode_embed_request,
            response_serializer=embedder_pb2.EmbedResponse.SerializeToString),
        "EmbedStream": grpc.stream_stream_rpc_method_handler(
            servicer.EmbedStream, request_deserializer=decode_embed_request,
            response_serializer=embedder_pb2.EmbedResponse.SerializeToString),
        "Info": grpc.unary_unary_rpc_method_handler(
            servicer.Info, request_deserializer=embedder_pb2.InfoRequest.FromString,
            response_serializer=embedder_pb2.InfoResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, service: EmbeddingService):
        self.service = service
        self.ready = False

    async def _fail(self, context, method: str, err: PolyheadError, started: float):
        code = grpc_status_code(err)
        metrics.REQUESTS.labels(method, code.name).inc()
        metrics.REQUEST_LATENCY.labels(method).observe(time.perf_counter() - started)
        log.info("request failed", extra={"method": method, "code": code.name, "error": err.message,
                                          "request_id": request_id(context)})
        # The field and the retry hint travel as trailing metadata: clients rebuild the same error.
        metadata = ((("retry-after", str(err.retry_after_s)),) if err.retry_after_s else ()) + \
            ((("field", err.field),) if err.field else ())
        if metadata:
            context.set_trailing_metadata(metadata)
        await context.abort(code, err.message)

    def _check_ready(self) -> None:
        if not self.ready:
            raise UnavailableError("model not loaded yet", retry_after_s=1)

    async def _embed(self, request, context) -> EmbedOutcome:
        if isinstance(request, UndecodableRequest):
            raise request.error
        wire.check_accept(request.accept_encoding)  # before any work: a bad request costs nothing
        return await self.service.embed(list(request.texts), request.bypass_cache, context.time_remaining(),
                                        request.feature_set)

    async def Embed(self, request, context):
        started = time.perf_counter()
        with tracing.span("embedder Embed", service="embedder",
                          parent=tracing.grpc_metadata(context.invocation_metadata())) as span:
            try:
                self._check_ready()
                outcome = await self._embed(request, context)
            except PolyheadError as err:
                tracing.set_attributes(span, error=err.message)
                await self._fail(context, "Embed", err, started)
            tracing.set_attributes(span, **{"embed.batch_size": len(outcome.cached),
                                            "embed.cache_hits": sum(outcome.cached),
                                            "embed.feature_set": outcome.feature_set.name})
        metrics.REQUESTS.labels("Embed", "OK").inc()
        metrics.REQUEST_LATENCY.labels("Embed").observe(time.perf_counter() - started)
        return to_response(outcome, self.service, request.accept_encoding)

    async def EmbedStream(self, request_iterator, context):
        started = time.perf_counter()
        window: asyncio.Queue = asyncio.Queue(maxsize=STREAM_WINDOW)

        async def read_requests():
            index = 0
            async for req in request_iterator:
                task = asyncio.ensure_future(self._embed(req, context))
                await window.put((index, task, req))
                index += 1
            await window.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            self._check_ready()
            while (entry := await window.get()) is not None:
                index, task, req = entry
                try:
                    outcome = await task
                except PolyheadError as err:
                    err.message = f"request[{index}].{err.message}"
                    raise
                yield to_response(outcome, self.service, req.accept_encoding)
        except PolyheadError as err:
            await self._fail(context, "EmbedStream", err, started)
        finally:
            reader.cancel()
            while not window.empty():
                entry = window.get_nowait()
                if entry is not None:
                    entry[1].cancel()
        metrics.REQUESTS.labels("EmbedStream", "OK").inc()
        metrics.REQUEST_LATENCY.labels("EmbedStream").observe(time.perf_counter() - started)

    async def Info(self, request, context):
        started = time.perf_counter()
        try:
            self._check_ready()
        except PolyheadError as err:
            await self._fail(context, "Info", err, started)
        info = self.service.info()
        metrics.REQUESTS.labels("Info", "OK").inc()
        return embedder_pb2.InfoResponse(
            model=info["model"], fingerprint=info["fingerprint"], dim=info["dim"],
            max_seq_length=info["max_seq_length"], limits=embedder_pb2.Limits(**info["limits"]),
            cache_max_entries=info["cache_max_entries"], server_version=__version__,
            feature_sets=[embedder_pb2.FeatureSet(name=f.name, dim=f.dim, fingerprint=f.fingerprint,
                                                  storage=wire.ENCODING_OF_PRECISION[f.precision])
                          for f in info["feature_sets"]],
        )


class HealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 whose Watch streams end once shutdown begins (after saying NOT_SERVING).

    Clients watch health (client-side health checking keeps round-robin calls off a replica that is
    not SERVING), and a draining server waits for every open call: without this, each open Watch
    would hold the shutdown for the whole grace period.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stopping = asyncio.Event()

    async def Watch(self, request, context):  # noqa: N802 - the gRPC method name
        watch = asyncio.ensure_future(super().Watch(request, context))
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([watch, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not watch.done():
            await asyncio.sleep(0.05)  # the NOT_SERVING update goes out first
            watch.cancel()
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._stopping.set()


class EmbedderServer:
    """Owns the gRPC server's lifecycle: listen -> load + warm up -> SERVING -> drain -> stop."""

    def __init__(self, settings: EmbedderSettings, servable: TextEmbeddingServable | None = None):
        self.settings = settings
        tracing.configure("embedder", settings.otlp_endpoint)  # a no-op without an endpoint
        # A servable may be passed in already loaded (tests share one model across servers).
        self.servable = servable or make_servable(settings)
        self.service = EmbeddingService(settings, self.servable)
        self.servicer = EmbedderServicer(self.service)
        self.health = HealthServicer()
        mb = settings.grpc_max_message_mb * 1024 * 1024
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", mb), ("grpc.max_send_message_length", mb),
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_s * 1000)),
        ])
        add_embedder_servicer(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = 0

    async def start(self) -> None:
        s = self.settings
        self.port = self.server.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {s.host}:{s.port}")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("listening; loading model", extra={"address": f"{s.host}:{self.port}"})
        # Load off the event loop so health checks are answered (NOT_SERVING) meanwhile.
        await asyncio.to_thread(self._load_and_warm_up)
        await self.service.start()
        self.servicer.ready = True
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"address": f"{s.host}:{self.port}", "fingerprint": self.servable.fingerprint})

    def _load_and_warm_up(self) -> None:
        if not self.servable.loaded:
            self.servable.load()
            self.servable.warmup()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: health says NOT_SERVING, new calls are refused, in-flight calls finish."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.service.close()
        log.info("stopped")


async def serve(settings: EmbedderSettings) -> None:
    if settings.metrics_port:
        metrics.start_metrics_server(settings.metrics_port, settings.host)
    server = EmbedderServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.ensure_future(server.start())
    await asyncio.wait([start, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if start.done():
        start.result()  # surface a failed start
        await stop.wait()
    else:
        start.cancel()
    await server.stop()
