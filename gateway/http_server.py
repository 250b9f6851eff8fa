"""HTTP front end of the gateway (FastAPI): what users touch first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gateway import metrics
from gateway.auth import Authenticator
from gateway.console import install_console
from gateway.core import GatewayService, ModelInfo
from embedder.settings import EmbedderSettings
from gateway.challengers import AuditLog, Challengers, ChallengersResponse, PromoteRequest, RollbackRequest
from gateway.insights import LABELLER, FeedbackRequest, FeedbackResponse, Insights, Report, ReviewQueue
from gateway.settings import GatewaySettings
from heads.api import (ClassifyRequest, ClassifyResponse, ExplainRequest, ExplainResponse, PredictRequest,
                       PredictResponse)
from polyhead import __version__, tracing
from polyhead.errors import ForbiddenError, PolyheadError, UnauthorizedError, UnavailableError
from polyhead.inference_log.review import DEFAULT_N, DEFAULT_POOL, MAX_N, MAX_POOL, STRATEGIES
from polyhead.http import (PROMETHEUS_TEXT, REQUEST_ID_HEADER, BodyReadTimeout, BodySizeLimit, bearer_token,
                           error_responses, install_error_handlers, request_id_of, require_admin, token_matches)
from polyhead.validation import text_or_texts_type

log = logging.getLogger("polyhead.gateway.http")


def _errors(*codes: int) -> dict:
    return error_responses(*codes, _403="This key may not call this model",
                           _404="Unknown model; the message lists the known ones",
                           _503="Model (head) or embedder unavailable; see Retry-After")


# The embedder's defaults; the embedder enforces its own configured limits (422 naming them).
_EMBEDDER_LIMITS = EmbedderSettings.model_fields
EmbeddingInput = text_or_texts_type(_EMBEDDER_LIMITS["max_texts_per_request"].default,
                                    _EMBEDDER_LIMITS["max_text_chars"].default)


def _iso_8601_only(value):
    """pydantic also reads a bare number as a Unix time; the documented format is ISO 8601 only."""
    if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601_only)]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request (strings only: token arrays are specific to OpenAI's tokenizer)."""

    model_config = ConfigDict(extra="forbid")

    input: EmbeddingInput = Field(..., description="A text or a list of texts")
    model: str = Field(..., min_length=1, description="The embedder's model name or 'default'")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value):
        if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            raise ValueError("token arrays are not supported; send a string or a list of strings")
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
    tracing.configure("gateway", settings.otlp_endpoint)  # a no-op without an endpoint
    service = GatewayService(settings)
    insights = Insights(service)
    challengers = Challengers(service, insights)
    auth = Authenticator(settings)
    admin_token = settings.admin_secret()

    def authenticated(request: Request) -> None:
        """A dependency: runs before FastAPI validates the body, so a caller without a valid key gets
        401 whatever it sent (never a 422 that tells it about the API first)."""
        auth.authenticate(request)

    authenticate_first = [Depends(authenticated)]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        # The embedder's Info, read once at start: the OpenAPI document states its model and dimension.
        app.state.embedder_info_read = prefetch = asyncio.create_task(_read_embedder_info(service))
        watcher = asyncio.create_task(service.watch_routes())
        log.info("gateway started", extra={"models": sorted(service.routing.routes), "auth": auth.required})
        yield
        watcher.cancel()
        prefetch.cancel()
        await service.close()
        insights.close()

    app = FastAPI(title="polyhead gateway", version=__version__, lifespan=lifespan,
                  description="Route predictions to classifier heads by model name; OpenAI-style embeddings.")
    app.state.service = service
    app.openapi = lambda: _with_embedder_facts(FastAPI.openapi(app), service)
    install_error_handlers(app)
    # Added last = outermost: the size and time limits apply before anything reads the body.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyReadTimeout, timeout_s=settings.body_read_timeout_s)

    def observe(route: str, model: str, status: int, started: float) -> None:
        metrics.REQUESTS.labels(route, model, str(status)).inc()
        metrics.LATENCY.labels(route, model).observe(time.perf_counter() - started)

    async def forwarded(route: str, call, request: Request, name: str) -> Response:
        """Admit, forward the body to the model's head, pass its answer back; count it either way."""
        started, rid = time.perf_counter(), request_id_of(request)
        try:
            key = auth.admit(request, name)
            with tracing.span(f"gateway {route}", service="gateway", model=name, request_id=rid) as span:
                reply = await call(name, await request.body(), rid, key.name if key else None)
                tracing.set_attributes(span, **{"http.status_code": reply.status})
        except PolyheadError as err:
            observe(route, name if name in service.routing.routes else "unknown", int(err.http_status), started)
            raise
        observe(route, name, reply.status, started)
        return Response(reply.content, status_code=reply.status, media_type="application/json",
                        headers={**reply.headers, REQUEST_ID_HEADER: rid})

    # The body is read as bytes and forwarded as is: the head validates it (one source of truth for
    # the limits; its 422 names the field) and the gateway spends no parse/re-encode on the hot path.
    predict_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema()}}}}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, openapi_extra=predict_body,
              responses=_errors(401, 403, 404, 413, 415, 422, 429, 503))
    async def predict(request: Request, name: str = Path(..., description="Model (head) name")):
        """Classify one text (`text`) or several (`texts`) with the named model."""
        return await forwarded("predict", service.predict, request, name)

    explain_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": ExplainRequest.model_json_schema()}}}}

    @app.post("/v1/models/{name}/explain", response_model=ExplainResponse, openapi_extra=explain_body,
              responses=_errors(401, 403, 404, 413, 422, 429, 503))
    async def explain(request: Request, name: str = Path(..., description="Model (head) name")):
        """Which words carry the prediction: the drop in the predicted label's probability when each word
        is left out (all variants embedded in one call). At most the head's max_explain_words words."""
        return await forwarded("explain", service.explain, request, name)

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=_errors(401, 413, 422, 429),
              dependencies=authenticate_first)
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
        with tracing.span("gateway classify", service="gateway", request_id=rid, **{"classify.models": len(names)}):
            results = await service.classify(body.all_texts(), names, rid, refused, caller=key.name if key else None)
        for name, entry in results.items():
            status = entry.get("status", 200) if "error" in entry else 200
            metrics.REQUESTS.labels("classify", name if name in service.routing.routes else "unknown",
                                    str(status)).inc()
        metrics.LATENCY.labels("classify", "-").observe(time.perf_counter() - started)
        return JSONResponse({"request_id": rid, "results": results}, headers={REQUEST_ID_HEADER: rid})

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401, 429))
    async def list_models(request: Request):
        """Every routable model this key may call, with its version, labels, test metrics and readiness."""
        key = auth.admit(request)
        names = [n for n in sorted(service.routing.routes) if _allowed(key, n)]
        return {"object": "list", "data": await service.list_models(request_id_of(request), names)}

    @app.get("/v1/models/{name}", response_model=ModelInfo, responses=_errors(401, 403, 404, 429))
    async def get_model(name: str, request: Request):
        auth.admit(request, name)
        return await service.model_info(name, request_id_of(request))

    # since/until: Annotated[IsoDateTime, Query()] = None is the form FastAPI both validates (ISO 8601 only)
    # and documents as a plain date-time string (absent: None; a query string is never null).
    # exclude_unset: the head's drift keeps its own shape (`current` absent while its window is empty)
    @app.get("/v1/models/{name}/report", response_model=Report, response_model_exclude_unset=True,
             responses=_errors(401, 403, 404, 422, 429, 503), dependencies=authenticate_first)
    async def report(request: Request, name: str = Path(..., description="Model (head) name"),
                     since: Annotated[IsoDateTime, Query(description="ISO 8601 date-time (no offset: UTC); "
                                                                     "default: until - 24 h")] = None,
                     until: Annotated[IsoDateTime, Query(description="ISO 8601 date-time (no offset: UTC); "
                                                                     "default: now")] = None,
                     bucket: Literal["hour", "day"] = Query("hour", description="Timeline bucket (UTC)")):
        """Volume, labels, confidence, abstentions, latency and feedback accuracy, per version and over time.

        Every ISO 8601 range is answered; `adjusted` says what was changed to fit: a backwards range
        (since >= until) is the empty range at `until`; more than 2000 hour buckets become day buckets;
        more than 2000 days keep the latest 2000. 422 only for a malformed date-time or bucket."""
        auth.admit(request, name)
        return await insights.report(name, since, until, bucket, request_id_of(request))

    @app.post("/v1/models/{name}/feedback", response_model=FeedbackResponse,
              responses={**_errors(401, 403, 413, 415, 422, 429, 503), **error_responses(
                  404, _404="Unknown model, or a prediction_id this key did not get (unknown and not yours read "
                            "the same)")},
              dependencies=authenticate_first)
    async def feedback(body: FeedbackRequest, request: Request, name: str = Path(..., description="Model (head) name")):
        """The true label of earlier predictions (by prediction_id, and index for a request with several texts).

        With API keys on, a key may label only the predictions it asked for, unless it has the
        `labeller` role; the key's name is stored with each label."""
        key = auth.admit(request, name)
        answer = await insights.feedback(name, body.all_items(), batch=body.batch, request_id=request_id_of(request),
                                         key=key, dry_run=body.dry_run)
        if not body.dry_run:  # the gate and the guard see new evidence
            challengers.after_feedback(name, request_id_of(request))
        return answer

    def admin(request: Request, name: str) -> str:
        """Promotion and rollback change what every caller gets: a key allowed on every model ('*').
        Returns who acts, for the audit log."""
        key = auth.admit(request, name)
        if key is not None and "*" not in key.models:
            raise ForbiddenError(f"API key {key.name!r} may not promote or roll back: admin needs a key allowed "
                                 f"on every model ('*')", field="authorization")
        return f"key:{key.name}" if key is not None else f"anonymous@{request.client.host if request.client else '?'}"

    @app.get("/v1/models/{name}/challengers", response_model=ChallengersResponse,
             responses=_errors(401, 403, 404, 429, 503))
    async def list_challengers(request: Request, name: str = Path(..., description="Model (head) name")):
        """Each challenger against the champion on the same live texts (shadow): agreement, flips with example
        texts (none for a redacting head), confidence shift; on texts with feedback both accuracies, McNemar's
        paired test and per-class recall change; both versions' offline test metrics; the gate's verdict.
        Example texts are given to admin keys ('*') only: they are other callers' inputs."""
        key = auth.admit(request, name)
        # Example texts are other callers' inputs: only for an admin key ('*') or an open gateway.
        return await challengers.report(name, request_id_of(request), with_texts=key is None or "*" in key.models)

    @app.post("/v1/models/{name}/promote", responses=_errors(401, 403, 404, 409, 413, 415, 422, 429, 503))
    async def promote(body: PromoteRequest, request: Request, name: str = Path(..., description="Model (head) name")):
        """Admin: make a challenger the champion (the champion becomes a challenger; no request fails)."""
        actor = admin(request, name)
        status, content = await challengers.act(name, "/admin/promote", {
            "version": body.version, "actor": actor, "reason": body.reason}, request_id_of(request))
        if status == 200:
            metrics.PROMOTIONS.labels(name, "admin").inc()
        return Response(content, status_code=status, media_type="application/json")

    @app.post("/v1/models/{name}/rollback", responses=_errors(401, 403, 404, 409, 413, 415, 422, 429, 503))
    async def rollback(body: RollbackRequest, request: Request, name: str = Path(..., description="Model (head) name")):
        """Admin: back to the champion before the last promotion."""
        actor = admin(request, name)
        status, content = await challengers.act(name, "/admin/rollback", {"actor": actor, "reason": body.reason},
                                                request_id_of(request))
        if status == 200:
            metrics.ROLLBACKS.labels(name, "admin").inc()
        return Response(content, status_code=status, media_type="application/json")

    @app.post("/v1/models/{name}/evaluate", responses=_errors(401, 403, 404, 429, 503))
    async def evaluate(request: Request, name: str = Path(..., description="Model (head) name")):
        """Admin: run the rollback guard and (auto policy) the promotion gate now; they also run after feedback."""
        actor = admin(request, name)
        return await challengers.evaluate(name, request_id_of(request), actor=f"gate({actor})")

    @app.get("/v1/models/{name}/audit", response_model=AuditLog, responses=_errors(401, 403, 404, 429, 503))
    async def audit(request: Request, name: str = Path(..., description="Model (head) name"),
                    limit: int = Query(100, ge=1, le=1000)):
        """Every promotion and rollback of the model, newest first: who, when, why, the figures."""
        auth.admit(request, name)
        body = await service.head_json(service.routing.get(name), f"/audit?limit={limit}", request_id_of(request))
        if body is None:
            raise UnavailableError(f"model {name!r}: its head did not answer GET /audit", retry_after_s=2)
        return {"model": name, "entries": body["entries"]}

    strategies_help = "; ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values())

    @app.get("/v1/models/{name}/review", response_model=ReviewQueue, responses=_errors(401, 403, 404, 422, 429, 503),
             dependencies=authenticate_first)
    async def review(request: Request, name: str = Path(..., description="Model (head) name"),
                     n: int = Query(DEFAULT_N, ge=1, le=MAX_N, description="How many texts to review"),
                     strategy: Literal[tuple(STRATEGIES)] = Query("uncertain",  # type: ignore[valid-type]
                                                                  description=strategies_help),
                     score: Literal["margin", "entropy"] = Query("margin", description="uncertain, balanced: rank by the top-2 "
                                                                 "margin (smallest first) or the entropy (highest)"),
                     pool: int = Query(DEFAULT_POOL, ge=1, le=MAX_POOL, description="Distinct unlabelled texts to "
                                       "pick from (uncertain: the least confident; random: a random sample; "
                                       "others: the newest)"),
                     since: Annotated[IsoDateTime, Query(description="Only texts logged from then (ISO 8601)")] = None,
                     until: Annotated[IsoDateTime, Query(description="Only texts logged before then")] = None,
                     seed: int | None = Query(None, ge=0, le=2**31 - 1, description="random: a reproducible draw")):
        """Logged predictions to label next: texts without feedback (never a text already labelled, a
        redacted one or a duplicate), picked by `strategy`. Answer them with POST /feedback (each item's
        `prediction_id`, `index` and `strategy`): the report then keeps the random slice apart to estimate
        live accuracy. `disagree`: texts where a challenger's shadow prediction differs from the answer.

        The queue shows other callers' texts: with API keys on, a key with the `labeller` role or one
        allowed on every model ('*')."""
        key = auth.admit(request, name)
        if key is not None and LABELLER not in key.roles and "*" not in key.models:
            raise ForbiddenError(f"API key {key.name!r} may not read the review queue: it shows other callers' "
                                 f"texts, so it needs the {LABELLER!r} role or a key allowed on every model ('*')",
                                 field="authorization")
        return await insights.review(name, n=n, strategy=strategy, score=score, pool=pool, since=since, until=until,
                                     seed=seed, request_id=request_id_of(request))

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse,
              responses=_errors(401, 403, 404, 413, 415, 422, 429, 503, 504), dependencies=authenticate_first)
    async def embeddings(body: EmbeddingsRequest, request: Request):
        """OpenAI-compatible embeddings, served by the embedder (and its cache). With API keys on: keys
        allowed on every model, or with `embeddings: true`."""
        started, rid = time.perf_counter(), request_id_of(request)
        auth.check_embeddings(auth.admit(request))
        if not app.state.embedder_info_read.done():  # share the start-up read rather than race it
            await asyncio.wait([app.state.embedder_info_read])
        inputs = [body.input] if isinstance(body.input, str) else body.input
        try:
            with tracing.span("gateway embeddings", service="gateway", request_id=rid,
                              **{"embed.batch_size": len(inputs)}):
                result = await service.embeddings(inputs, body.model, body.encoding_format, body.dimensions, rid)
        except PolyheadError as err:
            _rename_texts_field(err)
            observe("embeddings", "-", int(err.http_status), started)
            raise
        observe("embeddings", "-", 200, started)
        return JSONResponse(result, headers={REQUEST_ID_HEADER: rid})

    install_console(app)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Not ready: the embedder is not serving"}})
    async def readyz(request: Request):
        """Ready or not for anyone (probes); the details (models, config errors) per `ops_access`."""
        embedder = await service.embedder.health(timeout_s=1.0)
        ready = embedder == "SERVING"
        body = {"ready": ready}
        if auth.check_ops(request, settings.ops_access, admin_token):
            body |= {"embedder": embedder, "models": sorted(service.routing.routes),
                     "config_errors": service.routing.errors}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses={**PROMETHEUS_TEXT, **_errors(401)})
    async def prometheus_metrics(request: Request):
        """Per-model counters: who may read them is `ops_access` (open, a '*' key or the admin token)."""
        if not auth.check_ops(request, settings.ops_access, admin_token):
            needs = "the admin token" if settings.ops_access == "admin" else "a key allowed on every model or the admin token"
            raise UnauthorizedError(f"/metrics needs {needs} (ops_access={settings.ops_access})", field="authorization")
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", responses=_errors(401, 403))
    async def reload(request: Request):
        """Re-read configs/heads and the routes file now (they are also polled). Needs the admin token,
        or an API key allowed on every model ('*')."""
        if not token_matches(bearer_token(request), admin_token):
            if not auth.required:
                require_admin(request, admin_token)  # no keys: only the admin token opens it
            key = auth.authenticate(request)
            if not key.all_models:
                raise ForbiddenError("admin needs the admin token or a key allowed on every model ('*')")
        service.routing.refresh(force=True)
        return {"models": sorted(service.routing.routes), "config_errors": service.routing.errors}

    return app


async def _read_embedder_info(service: GatewayService) -> None:
    with contextlib.suppress(PolyheadError):
        await service._refresh_embedder_info()


def _with_embedder_facts(schema: dict, service: GatewayService) -> dict:
    """State what /v1/embeddings accepts for `model` and `dimensions` once the embedder has said it
    (its Info, read on the first embedding), so generated clients and fuzzers send what is served."""
    info = service._embedder_info
    request = schema.get("components", {}).get("schemas", {}).get("EmbeddingsRequest")
    if info is not None and request is not None:
        props = request["properties"]
        props["model"] = {**props["model"], "enum": [info.model, "default"]}
        props["dimensions"] = {"anyOf": [{"type": "integer", "enum": [info.dim]}, {"type": "null"}],
                               "description": f"Must be {info.dim}, the model's dimension, if given"}
    return schema


def _allowed(key, name: str) -> bool:
    return key is None or "*" in key.models or name in key.models


SETTINGS_ENV = "POLYHEAD_GATEWAY_SETTINGS_JSON"


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the parent hands its resolved settings over as JSON."""
    import os

    return create_app(GatewaySettings.model_validate_json(os.environ[SETTINGS_ENV]))


def serve(settings: GatewaySettings) -> None:
    import os

    import json

    import uvicorn

    from polyhead.http_protocol import uvicorn_options

    common = uvicorn_options(settings, settings.keepalive_s)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:
        secret = settings.admin_token.get_secret_value() if settings.admin_token else None
        os.environ[SETTINGS_ENV] = json.dumps({**settings.model_dump(mode="json"), "admin_token": secret})
        uvicorn.run("gateway.http_server:create_app_from_env", factory=True, workers=settings.workers, **common)
