"""Heads' core, independent of HTTP: validate -> embed (gRPC) -> classify -> log.

`HeadService` is one head (its artifact, version manager, readiness, metrics labels, log rows);
`HeadProcess` is what one process serves: one or many HeadServices sharing ONE embedder client
(a coalescing one by default), ONE inference-log writer and the event loop. `classify` answers
several heads of the process for the same texts with one Embed call per feature set among them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field

from embedder.client import AsyncEmbedderClient, RetryPolicy, feature_sets
from heads import explain, metrics, roles
from heads.api import ExplainResponse, PredictResponse
from heads.coalescing import CoalescingEmbedder
from heads.config import HeadConfig, load_head_config
from heads.drift import SCORE_NAMES, DriftMonitor, DriftThresholds, reference_confidence_mean
from heads.fallback import EmbeddingFallback
from heads.pipeline import Embedded, FingerprintMismatch, HeadPipeline, embed_error
from heads.servable import HeadServable, ServableManager
from heads.settings import HeadSettings
from polyhead.errors import ConflictError, NotFoundError, PolyheadError
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.writer import InferenceLog
from polyhead.validation import check_texts

log = logging.getLogger("polyhead.head.core")


def new_prediction_id() -> str:
    """The id feedback names: issued here, 128 random bits, never the caller's choice."""
    return secrets.token_urlsafe(16)


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
                      embedded: Embedded | None = None, caller: str | None = None) -> PredictResponse:
        """`embedded`: these texts already embedded (HeadProcess.classify). `caller`: the API key (name)
        the gateway asked for, logged with the prediction (feedback on it is that key's, or a labeller's)."""
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        prediction_id = new_prediction_id()
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
        rows = []
        for index, (text, p) in enumerate(zip(texts, done.predictions)):
            metrics.PREDICTIONS.labels(self.name, p.label).inc()
            if p.abstained:
                metrics.ABSTAINED.labels(self.name).inc()
            if self.inference_log is not None:
                rows.append(PredictionRecord.create(
                    request_id=request_id, head=self.name, head_version=version,
                    embedder_fingerprint=done.fingerprint, text=text, label=p.label,
                    probability=p.probability, top_k=p.top_k, latency_ms=latency_ms,
                    abstained=p.abstained, text_index=index, issued_id=prediction_id, caller=caller,
                    redact=self.config.serving.redact_text))
        if self.manager.challengers and done.servable is self.manager.current:
            rows += self._shadow(texts, [r.text_sha256 for r in rows], done, request_id)
        if rows:  # the champion's and every challenger's rows in the spool in ONE write, before the answer
            self.inference_log.record_many(rows)  # is sent: a SIGKILL after it loses nothing
        return PredictResponse(self.name, version, done.fingerprint, request_id, latency_ms, done.predictions,
                               prediction_id)

    def _shadow(self, texts: list[str], hashes: list[str], done, request_id: str) -> list[PredictionRecord]:
        """Every challenger on the champion's vectors (one matrix product each): its shadow rows, with the
        same request id and text index, for the caller to spool with the champion's; never returned. A
        challenger that raises is dropped from shadow and flagged (ServableManager.drop_challenger); the
        caller's answer is not touched."""
        rows: list[PredictionRecord] = []
        for challenger in self.manager.challengers:
            t0 = time.perf_counter()
            try:
                predictions = challenger.predict(done.vectors)
            except Exception as exc:  # noqa: BLE001 - a broken challenger must never fail the request
                self.manager.drop_challenger(challenger.version, f"{type(exc).__name__}: {exc}")
                continue
            shadow_ms = (time.perf_counter() - t0) * 1000
            metrics.SHADOW_PREDICTIONS.labels(self.name, challenger.version).inc(len(predictions))
            if self.inference_log is None:
                continue
            rows += [PredictionRecord.create(
                request_id=request_id, head=self.name, head_version=challenger.version,
                embedder_fingerprint=done.fingerprint, text=text, label=p.label,
                probability=p.probability, top_k=p.top_k, latency_ms=shadow_ms,
                abstained=p.abstained, text_index=index, redact=self.config.serving.redact_text,
                shadow=True, text_sha256=hashes[index] if index < len(hashes) else None)
                for index, (text, p) in enumerate(zip(texts, predictions))]
        return rows

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
        """Artifact loaded, embedder reachable, fingerprints match (cached for readiness_ttl_s); plus the
        inference log's state, live (its lag never makes a head unready: answers go on, spooled)."""
        state = await self._checked_readiness()
        if self.inference_log is None:
            return state
        return Readiness(state.ready, {**state.checks, "inference_log": self.inference_log.status()}, state.checked_at)

    async def _checked_readiness(self) -> Readiness:
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

    # -- roles (heads/roles.py): champion, challengers, promotion, rollback --------------------------
    def roles(self) -> dict:
        state = roles.read_state(self.settings.models_dir, self.name)
        shadowed = {c.version for c in self.manager.challengers}
        served = self.manager.current

        def version_info(version: str) -> dict:
            try:
                metrics_json = json.loads((self.settings.models_dir / self.name / version / "metrics.json").read_text())
                manifest = json.loads((self.settings.models_dir / self.name / version / "manifest.json").read_text())
            except (OSError, ValueError):
                metrics_json, manifest = {}, {}
            return {"version": version, "created": manifest.get("created"), "test": metrics_json.get("test", {}),
                    "feedback": manifest.get("feedback"), "labels": manifest.get("labels", []),
                    # the guard's drift check: each version against its own training reference
                    "reference_confidence": reference_confidence_mean(self.settings.models_dir / self.name / version)}

        return {
            "head": self.name, "champion": state.champion, "served": served.version if served else None,
            "version_spec": self.manager.version_spec, "redacted": self.config.serving.redact_text,
            "policy": self.config.promotion.model_dump(),
            "champion_info": version_info(state.champion) if state.champion else None,
            "challengers": [{**version_info(v), "shadowed": v in shadowed,
                             "error": self.manager.challenger_errors.get(v)} for v in state.challengers],
            "guard": dataclasses.asdict(state.guard) if state.guard else None,
            "history": list(state.history[-20:]), "legacy_layout": not state.from_file,
        }

    def audit(self, limit: int = 100) -> list[dict]:
        return roles.read_audit(self.settings.models_dir, self.name, limit)

    def promote(self, version: str | None, *, actor: str, reason: str, figures: dict | None = None,
                expect_champion: str | None = None) -> dict:
        """Swap champion and challenger: the state file first, then this process loads the new champion
        (fully, before one reference swap), so a request in flight finishes on the version it began with."""
        state = roles.promote(self.settings.models_dir, self.name, version, actor=actor, reason=reason,
                              figures=figures, guard_s=self.config.promotion.guard_s, expect_champion=expect_champion)
        log.warning("promoted", extra={"head": self.name, "version": state.champion, "actor": actor, "reason": reason})
        return self._after_role_change(state)

    def rollback(self, *, actor: str, reason: str, figures: dict | None = None,
                 expect_champion: str | None = None) -> dict:
        if expect_champion is not None:
            current = roles.read_state(self.settings.models_dir, self.name).champion
            if current != expect_champion:
                raise ConflictError(f"the champion of {self.name!r} is {current}, not {expect_champion}: "
                                    f"nothing rolled back", field="expect_champion")
        state = roles.rollback(self.settings.models_dir, self.name, actor=actor, reason=reason, figures=figures)
        log.warning("rolled back", extra={"head": self.name, "version": state.champion, "actor": actor, "reason": reason})
        return self._after_role_change(state)

    def _after_role_change(self, state) -> dict:
        if self.manager.sync(force=True):
            self._readiness = Readiness(False)  # re-check fingerprints for the new champion
        served = self.manager.current
        return {"head": self.name, "champion": state.champion, "challengers": list(state.challengers),
                "served": served.version if served else None,
                "guard": dataclasses.asdict(state.guard) if state.guard else None}

    async def poll_versions(self) -> None:
        """Follow the champion (serving.json; old layouts: `latest`) or a changed pin without a restart."""
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
        self.inference_log = InferenceLog(settings.db_url, settings.spool_for(names), redact_text=False,
                                          retention_days=settings.retention_days)
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

    async def classify(self, texts: list[str], models: list[str], request_id: str,
                       caller: str | None = None) -> dict[str, ModelOutcome]:
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
                                                              embedded=embedded, caller=caller))
                except PolyheadError as err:
                    return ModelOutcome(error=err)

            for service, outcome in zip(ready, await asyncio.gather(*(one(s) for s in ready))):
                outcomes[service.name] = outcome

        await asyncio.gather(*(embed_for(fs, heads) for fs, heads in by_set.items()))
        return {name: outcomes[name] for name in dict.fromkeys(models)}
