"""Heads' core, independent of HTTP: validate -> embed (gRPC) -> classify -> log.

`HeadService` is one head (its artifact, version manager, readiness, metrics labels, log rows);
`HeadProcess` is what one process serves: one or many HeadServices sharing ONE embedder client
(a coalescing one by default), ONE inference-log writer and the event loop. `classify` answers
several heads of the process for the same texts with one Embed call per feature set among them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from embedder.client import AsyncEmbedderClient, RetryPolicy, feature_sets
from heads import explain, metrics
from heads.api import ExplainResponse, PredictResponse
from heads.coalescing import CoalescingEmbedder
from heads.config import HeadConfig, load_head_config
from heads.drift import SCORE_NAMES, DriftMonitor, DriftThresholds
from heads.fallback import EmbeddingFallback
from heads.pipeline import Embedded, FingerprintMismatch, HeadPipeline, embed_error
from heads.servable import HeadServable, ServableManager
from heads.settings import HeadSettings
from polyhead.errors import NotFoundError, PolyheadError
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.writer import InferenceLog
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
        self.client: AsyncEmbedderClient | CoalescingEmbedder | None = None
        self.pipeline: HeadPipeline | None = None
        self.fallback: EmbeddingFallback | None = None
        self._readiness = Readiness(False)
        d = config.drift
        self.drift = DriftMonitor(self.name, DriftThresholds(d.label_shift_js, d.confidence_shift, d.ood_rate, d.window,
                                                             d.min_window, d.ood_percentile), self._drift_changed)
        self._drift_gauges = {n: metrics.DRIFT_SCORE.labels(self.name, n) for n in SCORE_NAMES}
        metrics.DRIFT_FLAGGED.labels(self.name).set(0)
        self._owns_client = False

    async def start(self, client: AsyncEmbedderClient | CoalescingEmbedder | None = None) -> None:
        """`client`: the process's shared embedder client; without one the head makes its own."""
        self._owns_client = client is None
        self.client = client or embedder_client(self.settings)
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
        if self.client is not None and self._owns_client:
            await self.client.close()
        if self.fallback is not None:
            await self.fallback.close()

    def validate(self, texts: list[str], batch: bool) -> None:
        """The HTTP schema already checks this; callers without it (tests, embedding apps) get the same rules."""
        s = self.config.serving
        check_texts(texts, field="texts" if batch else "text", indexed=batch, max_texts=s.max_texts_per_request,
                    max_chars=s.max_text_chars)

    async def predict(self, texts: list[str], *, batch: bool, request_id: str | None = None,
                      embedded: Embedded | None = None) -> PredictResponse:
        """`embedded`: these texts already embedded (HeadProcess.classify)."""
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        self.validate(texts, batch)
        try:
            done = await self.pipeline.run(texts, request_id, embedded=embedded)
        except FingerprintMismatch:
            self.refuse_mismatch()
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
        return PredictResponse(self.name, version, done.fingerprint, request_id, latency_ms, done.predictions)

    async def explain(self, text: str, request_id: str | None = None) -> ExplainResponse:
        """Word-occlusion importances for one text (heads/explain.py); not logged as a prediction."""
        self.validate([text], batch=False)
        try:
            return await explain.explain(self.pipeline, text, self.config.serving.max_explain_words,
                                         request_id or uuid.uuid4().hex)
        except FingerprintMismatch:
            self.refuse_mismatch()
            raise

    def refuse_mismatch(self) -> None:
        """Not ready until the next readiness check finds a matching encoder."""
        self._readiness = Readiness(False, {"fingerprint": "mismatch"})

    def embed_error(self, err: PolyheadError, servable: HeadServable) -> PolyheadError:
        """What this head answers for a failed shared Embed (HeadProcess.classify), as HeadPipeline.run would."""
        err = embed_error(servable, err)
        if isinstance(err, FingerprintMismatch):
            self.refuse_mismatch()
        return err

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
            served = feature_sets(info).get(servable.feature_set) if servable is not None else None
            if servable is not None and served is None:
                ready = False
                checks["fingerprint"] = (f"mismatch: artifact {servable.version} was trained on feature set "
                                         f"{servable.feature_set!r}, the embedder serves only "
                                         f"{', '.join(feature_sets(info))}")
            elif servable is not None and served.fingerprint != servable.fingerprint:
                ready = False
                checks["fingerprint"] = (f"mismatch: artifact {servable.version} was trained on embedder "
                                         f"{servable.fingerprint}, the embedder serves {served.fingerprint}")
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


def embedder_client(settings: HeadSettings) -> AsyncEmbedderClient | CoalescingEmbedder:
    """The embedder client of a head process; create it inside the serving event loop (grpc.aio
    channels belong to one loop). Few, fast retries: a head answers 503 quickly rather than hanging
    on a dead embedder."""
    client = AsyncEmbedderClient(settings.embedder_target, timeout_s=settings.embedder_timeout_s,
                                 retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1))
    if not settings.coalesce:
        return client
    return CoalescingEmbedder(client, max_inflight=settings.coalesce_max_inflight,
                              max_texts=settings.coalesce_max_texts, window_ms=settings.coalesce_window_ms)


@dataclass(frozen=True)
class ModelOutcome:
    """One head's answer inside a multi-head classify: a result, or the error it would have answered."""

    result: PredictResponse | None = None
    error: PolyheadError | None = None


class HeadProcess:
    """The heads one process serves, and what they share."""

    def __init__(self, settings: HeadSettings):
        self.settings = settings
        configs = [load_head_config(p) for p in settings.config_paths()]
        names = [c.name for c in configs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"heads: {', '.join(duplicates)} given twice (two configs with one name)")
        # Redaction is per head: PredictionRecord.create(redact=...) applies each head's own setting.
        self.inference_log = InferenceLog(settings.db_url, settings.spool_for(names), redact_text=False)
        self.services = {c.name: HeadService(settings, c, self.inference_log) for c in configs}
        self.client: AsyncEmbedderClient | CoalescingEmbedder | None = None
        self._pollers: list[asyncio.Task] = []

    @property
    def packed(self) -> bool:
        return self.settings.packed

    async def start(self) -> None:
        self.client = embedder_client(self.settings)
        for service in self.services.values():
            await service.start(self.client)
        await asyncio.to_thread(self.inference_log.start)
        for service in self.services.values():
            await asyncio.to_thread(service.manager.sync)  # a bad artifact leaves only this head unready
            self._pollers.append(asyncio.create_task(service.poll_versions()))

    async def close(self) -> None:
        for task in self._pollers:
            task.cancel()
        for service in self.services.values():
            await service.close()
        if self.client is not None:
            await self.client.close()
        await asyncio.to_thread(self.inference_log.close, 10)

    def get(self, name: str) -> HeadService:
        service = self.services.get(name)
        if service is None:
            raise NotFoundError(f"unknown model {name!r}; this process serves: {', '.join(sorted(self.services))}",
                                field="models")
        return service

    async def readiness(self) -> dict[str, Readiness]:
        states = await asyncio.gather(*(s.readiness() for s in self.services.values()))
        return dict(zip(self.services, states))

    async def classify(self, texts: list[str], models: list[str], request_id: str) -> dict[str, ModelOutcome]:
        """Every named head on the same texts with ONE Embed call per feature set among them; each
        head's error stays its own."""
        outcomes: dict[str, ModelOutcome] = {}
        by_set: dict[str, list[tuple[HeadService, HeadServable]]] = {}
        for name in dict.fromkeys(models):
            try:
                service = self.get(name)
                service.validate(texts, batch=True)  # each head's own limits
                servable = service.pipeline.servable()  # no artifact: its own 503, before the shared call
                by_set.setdefault(servable.feature_set, []).append((service, servable))
            except PolyheadError as err:
                outcomes[name] = ModelOutcome(error=err)

        async def embed_for(feature_set: str, heads: list[tuple[HeadService, HeadServable]]) -> None:
            t0 = time.perf_counter()
            try:
                vectors = await self.client.embed(texts, request_id=request_id, feature_set=feature_set)
            except PolyheadError as err:
                for service, servable in heads:
                    outcomes[service.name] = ModelOutcome(error=service.embed_error(err, servable))
                return
            ready = [service for service, _ in heads]
            embedded = Embedded(vectors, time.perf_counter() - t0, feature_set)

            async def one(service: HeadService) -> ModelOutcome:
                try:
                    return ModelOutcome(await service.predict(texts, batch=True, request_id=request_id,
                                                              embedded=embedded))
                except PolyheadError as err:
                    return ModelOutcome(error=err)

            for service, outcome in zip(ready, await asyncio.gather(*(one(s) for s in ready))):
                outcomes[service.name] = outcome

        await asyncio.gather(*(embed_for(fs, heads) for fs, heads in by_set.items()))
        return {name: outcomes[name] for name in dict.fromkeys(models)}
