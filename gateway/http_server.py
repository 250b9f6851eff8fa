"""HTTP front end of the gateway (FastAPI): what users touch first."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway import metrics
from gateway.auth import Authenticator, BodySizeLimit
from gateway.core import GatewayService
from gateway.insights import FeedbackRequest, FeedbackResponse, Insights, Report
from gateway.settings import GatewaySettings
from heads.api import ClassifyRequest, ClassifyResponse, PredictRequest, PredictResponse
from polyhead import __version__
from polyhead.errors import ForbiddenError, PolyheadError
from polyhead.http import REQUEST_ID_HEADER, install_error_handlers, request_id_of

log = logging.getLogger("polyhead.gateway.http")


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _errors(*codes: int) -> dict:
    text = {401: "Missing or invalid API key", 403: "This key may not call this model", 404: "Unknown model; the message lists the known ones",
            413: "Request body over max_body_bytes", 422: "Invalid input; names the field and the limit",
            429: "Rate limit hit or server overloaded; see Retry-After",
            503: "Model (head) or embedder unavailable; see Retry-After"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


class DriftSummary(BaseModel):
    flagged: bool
    scores: dict[str, float | None] = {}
    available: bool = True


class ModelInfo(BaseModel):
    name: str
    description: str = ""
    version: str | None = None
    labels: list[str] = []
    metrics: dict[str, float | None] = {}
    ready: bool
    checks: dict = {}
    embedder_fingerprint: str | None = None
    error: str | None = None
    drift: DriftSummary | None = Field(None, description="The head's drift flag and scores (GET <head>/drift has the "
                                                         "details); null when the head does not report drift")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request (strings only: token arrays are specific to OpenAI's tokenizer)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(..., description="A text or a list of texts")
    model: str = Field(..., description="The embedder's model name (see GET /v1/embeddings/models) or 'default'")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value):
        if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            raise ValueError("token arrays are not supported; send a string or a list of strings")
        if isinstance(value, list) and not value:
            raise ValueError("must contain at least 1 text")
        return value


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


def _rename_texts_field(err: PolyheadError) -> None:
    """The embedder calls the field `texts`; an OpenAI caller sent `input`."""
    err.message = re.sub(r"\btexts\b", "input", err.message)
    if err.field:
        err.field = re.sub(r"^texts\b", "input", err.field)


def create_app(settings: GatewaySettings) -> FastAPI:
    service = GatewayService(settings)
    insights = Insights(service)
    auth = Authenticator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        watcher = asyncio.create_task(service.watch_routes())
        log.info("gateway started", extra={"models": sorted(service.routing.routes), "auth": auth.required})
        yield
        watcher.cancel()
        await service.close()
        insights.close()

    app = FastAPI(title="polyhead gateway", version=__version__, lifespan=lifespan,
                  description="Route predictions to classifier heads by model name; OpenAI-style embeddings.")
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    def observe(route: str, model: str, status: int, started: float) -> None:
        metrics.REQUESTS.labels(route, model, str(status)).inc()
        metrics.LATENCY.labels(route, model).observe(time.perf_counter() - started)

    # The body is read as bytes and forwarded as is: the head validates it (one source of truth for
    # the limits; its 422 names the field) and the gateway spends no parse/re-encode on the hot path.
    predict_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema()}}}}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, openapi_extra=predict_body,
              responses=_errors(401, 403, 404, 413, 422, 429, 503))
    async def predict(request: Request, name: str = Path(..., description="Model (head) name")):
        """Classify one text (`text`) or several (`texts`) with the named model."""
        started, rid = time.perf_counter(), request_id_of(request)
        try:
            auth.admit(request, name)
            reply = await service.predict(name, await request.body(), rid)
        except PolyheadError as err:
            observe("predict", name if name in service.routing.routes else "unknown", int(err.http_status), started)
            raise
        observe("predict", name, reply.status, started)
        return Response(reply.content, status_code=reply.status, media_type="application/json",
                        headers={**reply.headers, REQUEST_ID_HEADER: rid})

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=_errors(401, 413, 422, 429))
    async def classify(body: ClassifyRequest, request: Request):
        """Several models (or `"*"`: every routable model this key may call) on the same texts, embedded once.

        Each model's entry is its predict answer, or `{"error", "status"}` with the status its own
        endpoint would have answered (404 unknown, 403 not allowed for this key, 503 unavailable,
        422 over its limits): one model failing does not fail the request."""
        started, rid = time.perf_counter(), request_id_of(request)
        key = auth.admit(request)  # 401 and the rate limit apply to the request as a whole
        if body.models == "*":
            names = [n for n in sorted(service.routing.routes) if _allowed(key, n)]
        else:
            names = list(dict.fromkeys(body.models))
        refused = {}
        for name in names:
            try:
                auth.check_model(key, name)
            except PolyheadError as err:
                refused[name] = err
        results = await service.classify(body.all_texts(), names, rid, refused)
        for name, entry in results.items():
            status = entry.get("status", 200) if "error" in entry else 200
            metrics.REQUESTS.labels("classify", name if name in service.routing.routes else "unknown",
                                    str(status)).inc()
        metrics.LATENCY.labels("classify", "-").observe(time.perf_counter() - started)
        return JSONResponse({"request_id": rid, "results": results}, headers={REQUEST_ID_HEADER: rid})

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401, 429))
    async def list_models(request: Request):
        """Every routable model with its version, labels, test metrics and readiness."""
        auth.admit(request)
        return {"object": "list", "data": await service.list_models(request_id_of(request))}

    @app.get("/v1/models/{name}", response_model=ModelInfo, responses=_errors(401, 403, 404, 429))
    async def get_model(name: str, request: Request):
        auth.admit(request, name)
        return await service.model_info(name, request_id_of(request))

    @app.get("/v1/models/{name}/report", response_model=Report, responses=_errors(401, 403, 404, 422, 429, 503))
    async def report(request: Request, name: str = Path(..., description="Model (head) name"),
                     since: datetime | None = Query(None, description="ISO 8601; default: until - 24 h"),
                     until: datetime | None = Query(None, description="ISO 8601; default: now"),
                     bucket: Literal["hour", "day"] = Query("hour", description="Timeline bucket (UTC)")):
        """Volume, labels, confidence, abstentions, latency and feedback accuracy, per version and over time."""
        auth.admit(request, name)
        return await insights.report(name, since, until, bucket, request_id_of(request))

    @app.post("/v1/models/{name}/feedback", response_model=FeedbackResponse,
              responses=_errors(401, 403, 404, 413, 422, 429, 503))
    async def feedback(body: FeedbackRequest, request: Request, name: str = Path(..., description="Model (head) name")):
        """The true label of earlier predictions (by request_id, and index for a request with several texts)."""
        auth.admit(request, name)
        return await insights.feedback(name, body.all_items(), batch=body.batch, request_id=request_id_of(request))

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=_errors(401, 404, 413, 422, 429, 503))
    async def embeddings(body: EmbeddingsRequest, request: Request):
        """OpenAI-compatible embeddings, served by the embedder (and its cache)."""
        started, rid = time.perf_counter(), request_id_of(request)
        auth.admit(request)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        try:
            result = await service.embeddings(inputs, body.model, body.encoding_format, body.dimensions, rid)
        except PolyheadError as err:
            _rename_texts_field(err)
            observe("embeddings", "-", int(err.http_status), started)
            raise
        observe("embeddings", "-", 200, started)
        return JSONResponse(result, headers={REQUEST_ID_HEADER: rid})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        embedder = await service.embedder.health(timeout_s=1.0)
        ready = embedder == "SERVING"
        return JSONResponse({"ready": ready, "embedder": embedder, "models": sorted(service.routing.routes),
                             "config_errors": service.routing.errors}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", responses=_errors(401, 403))
    async def reload(request: Request):
        """Re-read configs/heads and the routes file now (they are also polled)."""
        key = auth.authenticate(request)
        if key is not None and "*" not in key.models:
            raise ForbiddenError("admin needs a key allowed on every model ('*')")
        service.routing.refresh(force=True)
        return {"models": sorted(service.routing.routes), "config_errors": service.routing.errors}

    return app


def _allowed(key, name: str) -> bool:
    return key is None or "*" in key.models or name in key.models


SETTINGS_ENV = "POLYHEAD_GATEWAY_SETTINGS_JSON"


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the parent hands its resolved settings over as JSON."""
    import os

    return create_app(GatewaySettings.model_validate_json(os.environ[SETTINGS_ENV]))


def serve(settings: GatewaySettings) -> None:
    import os

    import uvicorn

    common = dict(host=settings.host, port=settings.port, log_config=None, access_log=False,
                  timeout_graceful_shutdown=10, timeout_keep_alive=int(settings.keepalive_s))
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        uvicorn.run("gateway.http_server:create_app_from_env", factory=True, workers=settings.workers, **common)
