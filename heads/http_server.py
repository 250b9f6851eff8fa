"""HTTP front end of a head (FastAPI): per-head /predict, /explain, /readyz, /info, /drift, /admin/reload; /healthz, /metrics."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from heads import metrics
from heads.config import load_head_config
from heads.core import HeadService
from heads.api import (ExplainRequest, ExplainResponse, PredictRequestBase, PredictResponse, encode_explain_response,
                       encode_predict_response, predict_request_model)
from heads.inference_log.writer import InferenceLog
from heads.settings import HeadSettings
from polyhead import __version__
from polyhead.errors import PolyheadError, ValidationError
from polyhead.http import PROMETHEUS_TEXT, REQUEST_ID_HEADER, error_responses, install_error_handlers, request_id_of

log = logging.getLogger("polyhead.head.http")


class ReloadRequest(BaseModel):
    version: str = Field("latest", description="A version id to pin, or 'latest' to follow new trainings")


def head_router(service: HeadService) -> APIRouter:
    """One head's endpoints (/predict, /explain, /readyz, /info, /drift, /admin/reload): an app mounts one router
    per head it serves, so every per-head endpoint is declared here once."""
    config = service.config
    router = APIRouter()
    # This head's limits, enforced by the schema and stated in its OpenAPI document.
    predict_request = predict_request_model(config.serving.max_texts_per_request, config.serving.max_text_chars)

    async def predict(body: PredictRequestBase, request: Request):
        rid = request_id_of(request)
        with metrics.LATENCY.labels(config.name).time():
            try:
                result = await service.predict(body.all_texts(), batch=body.batch, request_id=rid)
            except PolyheadError as err:
                metrics.REQUESTS.labels(config.name, str(int(err.http_status))).inc()
                raise
        metrics.REQUESTS.labels(config.name, "200").inc()
        # JSONResponse directly: the model above documents the shape; re-validating our own dict
        # on every request costs more than the classifier itself.
        return JSONResponse(encode_predict_response(result), headers={REQUEST_ID_HEADER: rid})

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
        return JSONResponse(encode_explain_response(result), headers={REQUEST_ID_HEADER: rid})

    @router.get("/readyz", responses={503: {"description": "Not ready; the body says why"}})
    async def readyz():
        state = await service.readiness()
        return JSONResponse({"ready": state.ready, "checks": state.checks}, status_code=200 if state.ready else 503)

    @router.get("/info")
    async def info():
        servable = service.manager.current
        state = await service.readiness()
        art = servable.artifact if servable else None
        return {
            "name": config.name, "description": config.description,
            "version": art.version if art else None, "version_spec": service.manager.version_spec,
            "labels": list(art.model.labels) if art else [],
            "metrics": art.metrics.get("test", {}) if art else {},
            "embedder_fingerprint": art.embedder_fingerprint if art else None,
            "ready": state.ready, "checks": state.checks,
            "serving": config.serving.model_dump(), "server_version": __version__,
            "drift": service.drift_summary(),
        }

    @router.get("/drift")
    async def drift():
        """Drift scores of the rolling window against the served version's training data."""
        return service.drift_report()

    @router.post("/admin/reload", responses=error_responses(404, 415, 422, _404="Unknown version"))
    async def reload(body: ReloadRequest):
        """Switch the served version without a restart (rollback, upgrade, or back to `latest`)."""
        try:
            servable = await asyncio.to_thread(service.manager.switch, body.version)
        except RuntimeError as exc:
            raise ValidationError(f"version: {exc}", field="version") from None
        return {"head": config.name, "version": servable.version, "version_spec": service.manager.version_spec}

    return router


def create_app(settings: HeadSettings) -> FastAPI:
    config = load_head_config(settings.config)
    inference_log = InferenceLog(settings.db_url, settings.spool_dir / config.name,
                                 redact_text=config.serving.redact_text)
    service = HeadService(settings, config, inference_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        await asyncio.to_thread(inference_log.start)
        await asyncio.to_thread(service.manager.sync)
        poller = asyncio.create_task(service.poll_versions())
        log.info("head started", extra={"head": config.name, "version": getattr(service.manager.current, "version", None)})
        yield
        poller.cancel()
        await service.close()
        await asyncio.to_thread(inference_log.close, 10)

    app = FastAPI(title=f"polyhead head: {config.name}", version=__version__, description=config.description,
                  lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app)
    app.include_router(head_router(service))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse, responses=PROMETHEUS_TEXT)
    async def prometheus_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: HeadSettings) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10, timeout_keep_alive=int(settings.keepalive_s))
