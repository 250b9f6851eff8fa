"""HTTP front end of a head process (FastAPI): per-head /predict, /explain, /readyz, /info, /drift, /admin/reload (one
router per head: at "/" for one head, at /heads/<name> for each head of a packed process); /classify, /healthz,
/metrics."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from heads import metrics
from heads.api import (
    PACKED_PREFIX,
    ClassifyRequest,
    ClassifyResponse,
    DriftReport,
    ExplainRequest,
    ExplainResponse,
    HeadInfo,
    PredictRequestBase,
    PredictResponse,
    encode_explain_json,
    encode_model_error,
    encode_predict_json,
    encode_predict_response,
    packed_path,
    predict_request_model,
)
from heads.core import HeadProcess, HeadService
from heads.settings import HeadSettings
from polyhead import __version__, tracing
from polyhead.errors import NotFoundError, PolyheadError, ValidationError
from polyhead.http import (
    PREDICTION_ID_HEADER,
    PROMETHEUS_TEXT,
    REQUEST_ID_HEADER,
    BodyReadTimeout,
    BodySizeLimit,
    error_responses,
    install_error_handlers,
    internal_caller,
    request_id_of,
    require_admin,
)

log = logging.getLogger("polyhead.head.http")


class ReloadRequest(BaseModel):
    version: str = Field("latest", description="A version id to pin, or 'latest' to follow the head's champion "
                         "(models/<name>/serving.json)")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, max_length=64, description="The challenger to promote; absent: the only one")
    actor: str = Field("admin", min_length=1, max_length=200, description="Who decided (the audit log's `actor`)")
    reason: str = Field("manual promotion", max_length=2000, description="Why (the audit log's `reason`)")
    figures: dict = Field(default_factory=dict, description="The evidence it was decided on (kept in the audit log)")
    expect_champion: str | None = Field(None, max_length=64, description="Refuse (409) unless this is still the "
                                        "champion: the figures were about it")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str = Field("admin", min_length=1, max_length=200)
    reason: str = Field("manual rollback", max_length=2000)
    figures: dict = Field(default_factory=dict)
    expect_champion: str | None = Field(None, max_length=64, description="Refuse (409) unless this is still the champion")


def head_router(service: HeadService, admin_token: str | None = None) -> APIRouter:
    """One head's endpoints (/predict, /explain, /readyz, /info, /drift, /admin/reload): an app mounts one router
    per head it serves, so every per-head endpoint is declared here once. `admin_token`: what /admin/* need."""
    config = service.config
    router = APIRouter()
    # This head's limits, enforced by the schema and stated in its OpenAPI document.
    predict_request = predict_request_model(config.serving.max_texts_per_request, config.serving.max_text_chars)

    async def predict(body: PredictRequestBase, request: Request):
        rid = request_id_of(request)
        with metrics.LATENCY.labels(config.name).time(), \
                tracing.span("head predict", service="head", parent=request.headers, head=config.name,
                             request_id=rid, **{"predict.texts": len(body.all_texts())}):
            try:
                result = await service.predict(body.all_texts(), batch=body.batch, request_id=rid,
                                               caller=internal_caller(request, admin_token))
            except PolyheadError as err:
                metrics.REQUESTS.labels(config.name, str(int(err.http_status))).inc()
                raise
        metrics.REQUESTS.labels(config.name, "200").inc()
        # The bytes directly: the response model documents the shape; FastAPI re-validating our own
        # result on every request would cost more than the classifier itself.
        return Response(encode_predict_json(result), media_type="application/json",
                        headers={REQUEST_ID_HEADER: rid, PREDICTION_ID_HEADER: result.prediction_id})

    predict.__annotations__["body"] = predict_request  # built at run time: not a name FastAPI could resolve
    router.post("/predict", response_model=PredictResponse,
                responses=error_responses(404, 415, 422, 429, 503, 504, _404="No artifact to serve yet"))(predict)

    @router.post("/explain", response_model=ExplainResponse, responses=error_responses(404, 415, 422, 503, 504))
    async def explain(body: ExplainRequest, request: Request):
        """Word-occlusion importance: the drop in the predicted label's probability without each word."""
        rid = request_id_of(request)
        try:
            result = await service.explain(body.text, request_id=rid)
        except PolyheadError as err:
            metrics.EXPLAIN_REQUESTS.labels(config.name, str(int(err.http_status))).inc()
            raise
        metrics.EXPLAIN_REQUESTS.labels(config.name, "200").inc()
        return Response(encode_explain_json(result), media_type="application/json", headers={REQUEST_ID_HEADER: rid})

    @router.get("/readyz", responses={503: {"description": "Not ready; the body says why"}})
    async def readyz():
        state = await service.readiness()
        return JSONResponse({"ready": state.ready, "checks": state.checks}, status_code=200 if state.ready else 503)

    @router.get("/info", response_model=HeadInfo)
    async def info():
        servable = service.manager.current
        state = await service.readiness()
        art = servable.artifact if servable else None
        return HeadInfo(
            name=config.name, description=config.description,
            version=art.version if art else None, version_spec=service.manager.version_spec,
            labels=list(art.model.labels) if art else [],
            metrics=art.metrics.get("test", {}) if art else {},
            embedder_fingerprint=art.embedder_fingerprint if art else None,
            feature_set=art.feature_set if art else None,
            ready=state.ready, checks=state.checks,
            serving=config.serving, server_version=__version__,
            drift=service.drift_summary(),
        )

    # exclude_unset: `current` stays absent (not null) while the window is empty, as the producer writes it
    @router.get("/drift", response_model=DriftReport, response_model_exclude_unset=True)
    async def drift():
        """Drift scores of the rolling window against the served version's training data."""
        return service.drift_report()

    # What only operators and the gateway may read: training vectors, every version's name and
    # figures, the audit log. /info, /drift and predict show the served version only (as every answer does).
    def admin(request: Request) -> None:
        require_admin(request, admin_token)

    admin_only = [Depends(admin)]

    @router.get("/drift/centroids", dependencies=admin_only,
                responses=error_responses(401, 404, _404="No drift reference in the served version"))
    async def drift_centroids():
        """The served version's training centroids (L2-normalised class means, base64 little-endian float32,
        row-major [labels, dim]) and feature set: the gateway's review queue ranks texts against them.
        Needs `Authorization: Bearer <admin token>`."""
        servable = service.manager.current
        reference = servable.artifact.drift if servable else None
        if reference is None:
            raise NotFoundError(f"model {config.name!r}: the served version has no drift reference (train it again)")
        centroids = np.ascontiguousarray(reference.centroids, "<f4")
        return {"version": servable.version, "feature_set": servable.artifact.feature_set,
                "embedder_fingerprint": servable.artifact.embedder_fingerprint, "labels": list(reference.labels),
                "dim": int(centroids.shape[1]), "centroids": base64.b64encode(centroids.tobytes()).decode()}

    @router.get("/roles", dependencies=admin_only, responses=error_responses(401))
    async def roles_view():
        """Champion, challengers (with their offline test metrics and whether they are shadowed), guard, history.
        Needs `Authorization: Bearer <admin token>`."""
        return await asyncio.to_thread(service.roles)

    @router.get("/audit", dependencies=admin_only, responses=error_responses(401, 422))
    async def audit(limit: int = Query(100, ge=1, le=1000)):
        """Promotions and rollbacks, newest first: who, when, why, the figures. Needs `Authorization: Bearer
        <admin token>`."""
        return {"head": config.name, "entries": await asyncio.to_thread(service.audit, limit)}

    @router.post("/admin/promote", responses=error_responses(401, 404, 409, 415, 422, _404="Unknown version"))
    async def promote(body: PromoteRequest, request: Request):
        """Make a challenger the champion (the champion becomes a challenger); no request fails meanwhile.
        Needs `Authorization: Bearer <admin token>`."""
        require_admin(request, admin_token)
        return await asyncio.to_thread(service.promote, body.version, actor=body.actor, reason=body.reason,
                                       figures=body.figures, expect_champion=body.expect_champion)

    @router.post("/admin/rollback", responses=error_responses(401, 404, 409, 415, 422))
    async def rollback(body: RollbackRequest, request: Request):
        """Back to the champion before the last promotion. Needs `Authorization: Bearer <admin token>`."""
        require_admin(request, admin_token)
        return await asyncio.to_thread(service.rollback, actor=body.actor, reason=body.reason, figures=body.figures,
                                       expect_champion=body.expect_champion)

    @router.post("/admin/reload", responses=error_responses(401, 404, 415, 422, _404="Unknown version"))
    async def reload(body: ReloadRequest, request: Request):
        """Switch the served version without a restart (rollback, upgrade, or back to `latest`).
        Needs `Authorization: Bearer <admin token>` (the head's admin_token)."""
        require_admin(request, admin_token)
        try:
            servable = await asyncio.to_thread(service.manager.switch, body.version)
        except RuntimeError as exc:
            raise ValidationError(f"version: {exc}", field="version") from None
        return {"head": config.name, "version": servable.version, "version_spec": service.manager.version_spec}

    return router


def create_app(settings: HeadSettings) -> FastAPI:
    """One head at "/" (one config, no --heads), or a packed process: each head at /heads/<name>,
    plus the process's own /readyz (every head's), /heads and /classify (several heads, one embed)."""
    process = HeadProcess(settings)
    services = process.services
    tracing.configure("head", settings.otlp_endpoint)  # a no-op without an endpoint

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await process.start()
        log.info("head process started", extra={"heads": {n: getattr(s.manager.current, "version", None)
                                                          for n, s in services.items()},
                                                "packed": process.packed})
        yield
        await process.close()

    if process.packed:
        title, description = f"polyhead heads: {len(services)} packed", ", ".join(services)
    else:
        (only,) = services.values()
        title, description = f"polyhead head: {only.name}", only.config.description
    app = FastAPI(title=title, version=__version__, description=description, lifespan=lifespan)
    app.state.process = process
    admin_token = settings.admin_secret()
    install_error_handlers(app)
    # Added last = outermost: the size and time limits apply before anything reads the body.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyReadTimeout, timeout_s=settings.body_read_timeout_s)
    if process.packed:
        for name, service in services.items():
            app.include_router(head_router(service, admin_token), prefix=packed_path(name))
        app.include_router(process_router(process))
    else:
        app.state.service = only
        app.include_router(head_router(only, admin_token))
    app.include_router(classify_router(process, admin_token))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "pid": os.getpid()}  # which worker answered (heads/standby.py, the drills)

    @app.get("/metrics", response_class=PlainTextResponse, responses=PROMETHEUS_TEXT)
    async def prometheus_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def process_router(process: HeadProcess) -> APIRouter:
    """A packed process's own endpoints (its heads' are under /heads/<name>)."""
    router = APIRouter()

    @router.get("/readyz", responses={503: {"description": "no head is ready; body says why, per head"}})
    async def readyz():
        """Ready while at least one head is: one head's bad artifact makes that head unready (its own
        /heads/<name>/readyz answers 503 and the gateway reports it), not the process serving the others."""
        states = await process.readiness()
        ready = any(s.ready for s in states.values())
        return JSONResponse({"ready": ready, "ready_heads": sum(s.ready for s in states.values()),
                             "heads": {n: {"ready": s.ready, "checks": s.checks} for n, s in states.items()}},
                            status_code=200 if ready else 503)

    @router.get(PACKED_PREFIX)
    async def heads():
        """The heads this process serves, with their paths."""
        return {"heads": [{"name": n, "path": packed_path(n),
                           "version": getattr(s.manager.current, "version", None)}
                          for n, s in process.services.items()]}

    return router


def classify_router(process: HeadProcess, admin_token: str | None = None) -> APIRouter:
    router = APIRouter()

    @router.post("/classify", response_model=ClassifyResponse, responses=error_responses(415, 422, 503))
    async def classify(body: ClassifyRequest, request: Request):
        """Several heads of this process on the same texts, embedded once; errors are per head."""
        rid = request_id_of(request)
        names = list(process.services) if body.models == "*" else body.models
        started = time.perf_counter()
        with tracing.span("head classify", service="head", parent=request.headers, request_id=rid,
                          **{"classify.models": len(names), "classify.texts": len(body.all_texts())}):
            outcomes = await process.classify(body.all_texts(), names, rid,
                                              caller=internal_caller(request, admin_token))
        elapsed = time.perf_counter() - started
        results = {}
        for name, outcome in outcomes.items():
            known = name in process.services
            if outcome.error is not None:
                status = int(outcome.error.http_status)
                results[name] = encode_model_error(status, outcome.error.to_dict())
            else:
                status = 200
                results[name] = encode_predict_response(outcome.result)
            if known:
                metrics.REQUESTS.labels(name, str(status)).inc()
                metrics.LATENCY.labels(name).observe(elapsed)
        return JSONResponse({"request_id": rid, "results": results}, headers={REQUEST_ID_HEADER: rid})

    return router


def serve(settings: HeadSettings) -> None:
    if settings.standby:
        from heads.standby import serve_with_standby

        serve_with_standby(settings, create_app)
        return
    import uvicorn

    from polyhead.http_protocol import uvicorn_options

    uvicorn.run(create_app(settings), **uvicorn_options(settings, settings.keepalive_s))
