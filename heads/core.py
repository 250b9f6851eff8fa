"""A head's core, independent of HTTP: validate -> embed (gRPC) -> classify -> log."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from embedder.client import AsyncEmbedderClient, RetryPolicy
from heads import metrics
from heads.config import HeadConfig
from heads.inference_db import InferenceLog, PredictionRecord
from heads.servable import ServableManager
from heads.settings import HeadSettings
from polyhead.errors import PolyheadError, UnavailableError, ValidationError


@dataclass
class Readiness:
    ready: bool
    checks: dict = field(default_factory=dict)
    checked_at: float = 0.0


class HeadService:
    def __init__(self, settings: HeadSettings, config: HeadConfig, inference_log: InferenceLog | None):
        self.settings = settings
        self.config = config
        self.name = config.name
        self.manager = ServableManager(settings.models_dir, config.name, config.serving)
        self.inference_log = inference_log
        self.client: AsyncEmbedderClient | None = None
        self._readiness = Readiness(False)

    async def start(self) -> None:
        # Created inside the serving event loop (grpc.aio channels belong to one loop). Few, fast
        # retries: a head answers 503 quickly rather than hanging on a dead embedder.
        self.client = AsyncEmbedderClient(self.settings.embedder_target, timeout_s=self.settings.embedder_timeout_s,
                                          retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def validate(self, texts: list[str], batch: bool) -> None:
        s = self.config.serving
        if len(texts) > s.max_texts_per_request:
            raise ValidationError(f"texts: {len(texts)} texts exceed the limit of max_texts_per_request="
                                  f"{s.max_texts_per_request}", field="texts")
        for i, text in enumerate(texts):
            where = f"texts[{i}]" if batch else "text"
            if not text.strip():
                raise ValidationError(f"{where}: empty or whitespace-only text", field=where)
            if len(text) > s.max_text_chars:
                raise ValidationError(f"{where}: {len(text)} characters exceed the limit of max_text_chars="
                                      f"{s.max_text_chars}", field=where)

    async def predict(self, texts: list[str], *, batch: bool, request_id: str | None = None) -> dict:
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        self.validate(texts, batch)
        servable = self.manager.current  # pinned: a version switch mid-request does not affect it
        if servable is None:
            raise UnavailableError(f"head {self.name!r} has no loaded artifact: {self.manager.last_error}", retry_after_s=5)
        t0 = time.perf_counter()
        embeddings = await self.client.embed(texts, request_id=request_id)
        metrics.EMBED_LATENCY.labels(self.name).observe(time.perf_counter() - t0)
        if embeddings.fingerprint != servable.fingerprint:
            self._readiness = Readiness(False, {"fingerprint": "mismatch"})
            raise UnavailableError(
                f"embedder fingerprint {embeddings.fingerprint} differs from the one version {servable.version} "
                f"was trained on ({servable.fingerprint}); retrain the head or serve the matching encoder",
                retry_after_s=30)
        predictions = servable.predict(embeddings.vectors)
        latency_ms = (time.perf_counter() - started) * 1000
        for text, p in zip(texts, predictions):
            metrics.PREDICTIONS.labels(self.name, p.label).inc()
            if p.abstained:
                metrics.ABSTAINED.labels(self.name).inc()
            if self.inference_log is not None:
                self.inference_log.record(PredictionRecord.create(
                    request_id=request_id, head=self.name, head_version=servable.version,
                    embedder_fingerprint=embeddings.fingerprint, text=text, label=p.label,
                    probability=p.probability, top_k=p.top_k, latency_ms=latency_ms,
                    redact=self.config.serving.redact_text))
        return {
            "head": self.name,
            "version": servable.version,
            "embedder_fingerprint": embeddings.fingerprint,
            "request_id": request_id,
            "latency_ms": round(latency_ms, 3),
            "predictions": [
                {"label": p.label, "probability": round(p.probability, 6), "top_k": p.top_k, "abstained": p.abstained}
                for p in predictions
            ],
        }

    async def readiness(self) -> Readiness:
        """Artifact loaded, embedder reachable, fingerprints match; cached for readiness_ttl_s."""
        now = time.monotonic()
        if self._readiness.checked_at and now - self._readiness.checked_at < self.settings.readiness_ttl_s:
            return self._readiness
        servable = self.manager.current
        checks = {"artifact": f"version {servable.version}" if servable else f"missing: {self.manager.last_error}"}
        ready = servable is not None
        try:
            info = await self.client.info(timeout_s=1.0)
            checks["embedder"] = "reachable"
            if servable is not None and info.fingerprint != servable.fingerprint:
                ready = False
                checks["fingerprint"] = (f"mismatch: artifact {servable.version} was trained on embedder "
                                         f"{servable.fingerprint}, the embedder serves {info.fingerprint}")
            elif servable is not None:
                checks["fingerprint"] = "match"
        except PolyheadError as err:
            ready = False
            checks["embedder"] = f"unreachable: {err.message}"
        self._readiness = Readiness(ready, checks, now)
        metrics.READY.labels(self.name).set(1 if ready else 0)
        return self._readiness

    async def poll_versions(self) -> None:
        """Follow `latest` (or a changed pin) without a restart."""
        while self.settings.version_poll_s > 0:
            await asyncio.sleep(self.settings.version_poll_s)
            if await asyncio.to_thread(self.manager.sync):
                self._readiness = Readiness(False)  # re-check fingerprints for the new version
