"""A head's core, independent of HTTP: validate -> embed (gRPC) -> classify -> log."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from embedder.client import AsyncEmbedderClient, RetryPolicy
from embedder.fallback import EmbeddingFallback
from heads import explain, metrics
from heads.api import Explanation, PredictResult
from heads.config import HeadConfig
from heads.drift import SCORE_NAMES, DriftMonitor, DriftThresholds
from heads.inference_log.records import PredictionRecord
from heads.inference_log.writer import InferenceLog
from heads.pipeline import FingerprintMismatch, HeadPipeline
from heads.servable import ServableManager
from heads.settings import HeadSettings
from polyhead.errors import PolyheadError
from polyhead.validation import check_texts

log = logging.getLogger("polyhead.head.core")


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
        self.pipeline: HeadPipeline | None = None
        self.fallback: EmbeddingFallback | None = None
        self._readiness = Readiness(False)
        d = config.drift
        self.drift = DriftMonitor(self.name, DriftThresholds(d.label_shift_js, d.confidence_shift, d.ood_rate, d.window,
                                                             d.min_window, d.ood_percentile), self._drift_changed)
        self._drift_gauges = {n: metrics.DRIFT_SCORE.labels(self.name, n) for n in SCORE_NAMES}
        metrics.DRIFT_FLAGGED.labels(self.name).set(0)

    async def start(self) -> None:
        # Created inside the serving event loop (grpc.aio channels belong to one loop). Few, fast
        # retries: a head answers 503 quickly rather than hanging on a dead embedder.
        self.client = AsyncEmbedderClient(self.settings.embedder_target, timeout_s=self.settings.embedder_timeout_s,
                                          retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1))
        self.fallback = EmbeddingFallback(self.settings.embed_fallback_entries, self._l2_reader())
        self.pipeline = HeadPipeline(self.name, lambda: self.manager.current, self.client,
                                     lambda: self.manager.last_error, self.fallback)

    def _l2_reader(self):
        s = self.settings
        if not s.l2_cache_url:
            return None
        from embedder.l2cache import RedisL2Cache

        return RedisL2Cache(s.l2_cache_url, None, timeout_s=s.l2_cache_timeout_ms / 1000,
                            key_prefix=s.l2_cache_key_prefix, role="head")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.fallback is not None:
            await self.fallback.close()

    def validate(self, texts: list[str], batch: bool) -> None:
        """The HTTP schema already checks this; callers without it (tests, embedding apps) get the same rules."""
        s = self.config.serving
        check_texts(texts, field="texts" if batch else "text", indexed=batch, max_texts=s.max_texts_per_request,
                    max_chars=s.max_text_chars)

    async def predict(self, texts: list[str], *, batch: bool, request_id: str | None = None) -> PredictResult:
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        self.validate(texts, batch)
        try:
            done = await self.pipeline.run(texts, request_id)
        except FingerprintMismatch:
            self._readiness = Readiness(False, {"fingerprint": "mismatch"})
            raise
        metrics.EMBED_LATENCY.labels(self.name).observe(done.embed_s)
        latency_ms = (time.perf_counter() - started) * 1000
        version = done.servable.version
        if self.config.drift.enabled:
            self._observe_drift(done)
        for index, (text, p) in enumerate(zip(texts, done.predictions)):
            metrics.PREDICTIONS.labels(self.name, p.label).inc()
            if p.abstained:
                metrics.ABSTAINED.labels(self.name).inc()
            if self.inference_log is not None:
                self.inference_log.record(PredictionRecord.create(
                    request_id=request_id, head=self.name, head_version=version,
                    embedder_fingerprint=done.fingerprint, text=text, label=p.label,
                    probability=p.probability, top_k=p.top_k, latency_ms=latency_ms,
                    abstained=p.abstained, text_index=index,
                    redact=self.config.serving.redact_text))
        return PredictResult(self.name, version, done.fingerprint, request_id, latency_ms, done.predictions)

    async def explain(self, text: str, request_id: str | None = None) -> Explanation:
        """Word-occlusion importances for one text (heads/explain.py); not logged as a prediction."""
        self.validate([text], batch=False)
        try:
            return await explain.explain(self.pipeline, text, self.config.serving.max_explain_words,
                                         request_id or uuid.uuid4().hex)
        except FingerprintMismatch:
            self._readiness = Readiness(False, {"fingerprint": "mismatch"})
            raise

    # -- drift (heads.drift): the window sees every answered text, from the vectors already at hand --
    def _observe_drift(self, done) -> None:
        artifact = done.servable.artifact
        # the top label, not the abstain label: the prior it is compared with has no abstentions
        if not self.drift.observe(done.servable.version, artifact.drift, done.vectors,
                                  [p.top_k[0]["label"] for p in done.predictions],
                                  [p.probability for p in done.predictions]):
            return  # scores unchanged (rescored once per 1 % of the window)
        metrics.DRIFT_WINDOW.labels(self.name).set(self.drift.window_count)
        for name, gauge in self._drift_gauges.items():
            value = self.drift.scores[name]
            gauge.set(float("nan") if value is None else value)

    def _drift_changed(self, flagged: bool, reasons: list[str], scores: dict) -> None:
        metrics.DRIFT_FLAGGED.labels(self.name).set(1 if flagged else 0)
        if flagged:
            log.warning("drift: head flagged", extra={"head": self.name, "reasons": reasons, "scores": scores})
        else:
            log.info("drift: flag cleared", extra={"head": self.name, "scores": scores})

    def _served_drift(self):
        servable = self.manager.current
        if servable is None:
            return None, None
        return servable.version, servable.artifact.drift if self.config.drift.enabled else None

    def drift_summary(self) -> dict:
        """{"flagged", "scores", "available"} for /info (and so the gateway's /v1/models)."""
        return self.drift.summary(*self._served_drift())

    def drift_report(self) -> dict:
        """The body of GET /drift."""
        return self.drift.report(*self._served_drift())

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
