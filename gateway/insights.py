"""What the heads did in production, at the gateway: reports and feedback over the inference DB.

GET  /v1/models/{name}/report    -- polyhead.inference_log.reports.build_report + the head's GET /drift
                                    + the review section (feedback by strategy, live accuracy, pending labels)
POST /v1/models/{name}/feedback  -- true labels of logged predictions (polyhead.inference_log.feedback)
GET  /v1/models/{name}/review    -- which logged predictions to label next (polyhead.inference_log.review)

The DB work runs in worker threads (asyncio.to_thread): SQLAlchemy is synchronous. The gateway
migrates the DB on first use, like a head does, so it works before any head has logged a row.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

import numpy as np
import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gateway.core import GatewayService
from gateway.settings import ApiKey
from heads.api import DriftReport
from polyhead.inference_log.feedback import LoggedPrediction, existing_feedback, find_predictions, store_feedback
from polyhead.inference_log.report_models import FeedbackStats, InferenceReport
from polyhead.inference_log.reports import build_report, default_since, utc, whole_hours
from polyhead.inference_log.review import STRATEGIES, Context, candidate_pool, pending_texts, review_summary, select
from polyhead.inference_log.schema import make_engine, migrate
from polyhead.errors import NotFoundError, PolyheadError, UnavailableError, ValidationError
from polyhead.validation import absent_not_null, text_type

log = logging.getLogger("polyhead.gateway.insights")

MAX_FEEDBACK_ITEMS = 1000
MAX_REPORT_BUCKETS = 2000  # above: hour buckets widen to days, then the range is cut (fit_report_range)
FEEDBACK_POLL_S = 0.1
REVIEW_EMBED_CHUNK = 256


# -- API schemas ------------------------------------------------------------------------------------
def _no_nul(value: str) -> str:
    # A prediction id or a label never holds NUL, and PostgreSQL text cannot: a 422, not a 503.
    if "\x00" in value:
        raise ValueError(f"must not contain NUL (U+0000), found at character {value.index(chr(0))}")
    return value


PredictionId = Annotated[text_type(64, "The predict answer's prediction_id (server-issued; not the x-request-id)"),
                         AfterValidator(_no_nul)]
Label = Annotated[text_type(256, "The true label (one of the model's labels)"), AfterValidator(_no_nul)]
SINGLE_FIELDS = ("prediction_id", "label", "index", "strategy")
LABELLER = "labeller"  # an API key role: may label any prediction of the models it may call
StrategyName = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]
STRATEGY_HELP = "The review strategy that picked this text (GET /review's item.strategy); absent: direct feedback"


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: PredictionId
    label: Label
    index: int = Field(0, ge=0, le=4095, description="Which text of a request with several texts (0 = the first)")
    strategy: StrategyName | None = Field(None, description=STRATEGY_HELP)


def _feedback_schema_extra(schema: dict) -> None:
    """JSON Schema for "one feedback (prediction_id + label, optional index) or `items`, never both, never null"
    (pydantic alone writes `default: null` and no exclusivity)."""
    absent_not_null(schema)
    schema["oneOf"] = [{"required": ["prediction_id", "label"], "not": {"required": ["items"]}},
                       {"required": ["items"], "not": {"anyOf": [{"required": [f]} for f in SINGLE_FIELDS]}}]
    schema["examples"] = [
        {"prediction_id": "Xb3...", "label": "billing"},
        {"items": [{"prediction_id": "Xb3...", "label": "billing"},
                   {"prediction_id": "q7K...", "label": "technical", "index": 1}]}]


class FeedbackRequest(BaseModel):
    """One feedback (`prediction_id`, `label`, optional `index`) or several (`items`). An absent field is None;
    an explicit null is refused (the types are not optional), as the schema says."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_feedback_schema_extra)

    prediction_id: PredictionId = Field(None)
    label: Label = Field(None)
    index: int = Field(None, ge=0, le=4095, description="Which text of a request with several texts (0 = the first)")
    strategy: StrategyName = Field(None, description=STRATEGY_HELP)
    items: list[FeedbackItem] = Field(None, min_length=1, max_length=MAX_FEEDBACK_ITEMS,
                                      description=f"Several feedbacks (at most {MAX_FEEDBACK_ITEMS})")
    dry_run: bool = Field(False, description="Check every item (known prediction, allowed label) and answer as if "
                                             "stored, but store nothing: `polyhead feedback --import` checks a "
                                             "whole file this way before writing any of it")

    @model_validator(mode="after")
    def _one_form(self):
        single = any(getattr(self, f) is not None for f in SINGLE_FIELDS)
        if single == (self.items is not None):
            raise ValueError("give either prediction_id and label (one feedback) or items (several)")
        if single and (self.prediction_id is None or self.label is None):
            raise ValueError("one feedback needs both prediction_id and label")
        return self

    @property
    def batch(self) -> bool:
        return self.items is not None

    def all_items(self) -> list[FeedbackItem]:
        if self.items is not None:
            return self.items
        return [FeedbackItem(prediction_id=self.prediction_id, label=self.label, index=self.index or 0,
                             strategy=self.strategy)]


class FeedbackResult(BaseModel):
    prediction_id: str
    index: int
    label: str
    predicted: str = Field(description="What the model answered for that text")
    version: str = Field(description="The head version that answered")
    status: Literal["stored", "replaced"] = Field(description="replaced: an earlier feedback for this text was overwritten")
    new_label: bool = Field(False, description="The label is not one the version was trained on (a head config "
                                               "with `labels: open` or a list): pending until a retraining adds it")
    strategy: str | None = Field(None, description="The review strategy recorded with it")


class FeedbackResponse(BaseModel):
    dry_run: bool = Field(False, description="true: checked only, nothing was stored")
    stored: int = Field(description="Feedback items accepted (each is the latest for its text now)")
    replaced: int = Field(description="How many of them replaced an earlier feedback for the same text")
    items: list[FeedbackResult]


class LiveAccuracy(BaseModel):
    source: Literal["random"] = Field(description="Only feedback on texts the random strategy picked: the other "
                                                  "strategies pick texts the model is likely wrong about")
    count: int
    accuracy: float | None
    ci95: list[float] | None = Field(description="95 % Wilson interval")


class ReviewStats(BaseModel):
    by_strategy: dict[str, FeedbackStats] = Field(description="Feedback by the strategy that picked the text "
                                                              "('direct': not given through the review queue)")
    live_accuracy: LiveAccuracy
    pending_labels: dict[str, int] = Field(description="Feedback labels the served version does not have, "
                                                       "with their counts (all time)")
    min_new_label_examples: int | None = Field(None, description="Texts a pending label needs before "
                                                                 "`train --with-feedback` adds it")


class Report(InferenceReport):
    """GET /v1/models/{name}/report: the inference log's report, the head's drift, what was adjusted."""

    drift: DriftReport | None = Field(None, description="The head's GET /drift; null when it has none or is down")
    adjusted: list[str] = Field([], description="How the asked range or bucket was changed to fit the limits "
                                                "(empty when it was not): since/until/bucket above are what was used")
    review: ReviewStats | None = Field(None, description="Feedback by review strategy, live accuracy from the "
                                                         "random slice, pending new labels")


class ReviewTopK(BaseModel):
    label: str
    probability: float


class ReviewChallenger(BaseModel):
    version: str
    label: str
    probability: float


class ReviewItem(BaseModel):
    prediction_id: str = Field(description="The predict answer's prediction_id: send it back with the label to "
                                           "POST /feedback")
    index: int
    text: str
    predicted: str
    probability: float
    top_k: list[ReviewTopK]
    version: str = Field(description="The head version that answered")
    ts: datetime
    strategy: str = Field(description="The strategy that picked it: send it back with the feedback")
    score: float | None = Field(description="The strategy's score (margin, entropy, centroid similarity, distance, "
                                            "similarity to a pending label's feedback; "
                                            "challenger probability; null for random)")
    score_name: str | None
    challenger: ReviewChallenger | None = Field(None, description="disagree: the challenger's shadow answer on "
                                                                  "this text (`predicted` is what the caller got)")


class ReviewQueue(BaseModel):
    model: str
    strategy: str = Field(description="The strategy that picked the items: the one asked for, or its fallback "
                                      "(new_label with no pending label: uncertain)")
    score: str | None = Field(description="What `score` of each item is")
    pool: int = Field(description="Distinct unlabelled texts the items were picked from")
    labels: list[str] = Field(description="The served version's labels, then the new labels the config expects")
    new_labels: Literal["closed", "open"] | list[str] = Field(description="The head config's `labels` policy")
    items: list[ReviewItem]


# -- the report's range: every ISO 8601 range is answered; what does not fit is adjusted and said ---------
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
LATEST = datetime.max.replace(tzinfo=timezone.utc)
BUCKET_SPAN = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def _utc_clamped(value: datetime) -> datetime:
    """utc(), but year 1 or 9999 with an offset that leaves datetime's range clamps to its ends."""
    try:
        return utc(value)
    except OverflowError:
        return EARLIEST if value.year == datetime.min.year else LATEST


def fit_report_range(since: datetime | None, until: datetime | None, bucket: str,
                     now: datetime | None = None) -> tuple[datetime, datetime, str, list[str]]:
    """(since, until, bucket, adjustments): a backwards range becomes the empty range at `until`; more
    than MAX_REPORT_BUCKETS hour buckets become day buckets; more than that many days keep the latest;
    ends off the hour widen to whole UTC hours (reports read hourly rollups: reports.whole_hours)."""
    asked = (since is not None, until is not None)  # widening a default end is not worth a note
    until = _utc_clamped(until) if until is not None else (now or datetime.now(timezone.utc))
    since = _utc_clamped(since) if since is not None else default_since(until)
    adjusted = []
    if since >= until:
        adjusted.append(f"since={since.isoformat()} is not before until={until.isoformat()}: the range is empty")
        since = until
    if bucket == "hour" and until - since > MAX_REPORT_BUCKETS * BUCKET_SPAN["hour"]:
        bucket = "day"
        adjusted.append(f"bucket=day: the range holds more than {MAX_REPORT_BUCKETS} hour buckets")
    if until - since > MAX_REPORT_BUCKETS * BUCKET_SPAN["day"]:
        since = until - MAX_REPORT_BUCKETS * BUCKET_SPAN["day"]
        adjusted.append(f"since={since.isoformat()}: the range is cut to its last {MAX_REPORT_BUCKETS} days")
    hours = whole_hours(since, until)
    if any(a and h != v for a, h, v in zip(asked, hours, (since, until))):
        adjusted.append(f"since={hours[0].isoformat()}, until={hours[1].isoformat()}: widened to whole UTC hours "
                        "(reports read hourly rollups; every count is exact over this range)")
    since, until = hours
    return since, until, bucket, adjusted


def _may_label(key: ApiKey | None, pred: LoggedPrediction) -> bool:
    """Keys off: whoever holds the prediction_id (unguessable, given only to the caller). Keys on: the
    key that asked for the prediction, or a labeller key (already checked to be allowed on the model)."""
    if key is None:
        return True
    return pred.caller == key.name or LABELLER in key.roles


# -- core -------------------------------------------------------------------------------------------
class Insights:
    def __init__(self, gateway: GatewayService):
        self.gateway = gateway
        self.settings = gateway.settings
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._labels: dict[tuple[str, str], list[str]] = {}  # (model, version) -> labels; a version's never change
        self._centroids_cache: dict[tuple[str, str], dict] = {}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _db(self) -> sa.Engine:
        with self._engine_lock:
            if self._engine is None:
                engine = make_engine(self.settings.db_url)
                migrate(engine)
                self._engine = engine
            return self._engine

    async def _in_db(self, fn, *args, **kwargs):
        def run():
            return fn(self._db(), *args, **kwargs)

        try:
            return await asyncio.to_thread(run)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("inference DB error: %s", exc)
            raise UnavailableError(f"the inference DB is unavailable ({type(exc).__name__})", retry_after_s=2) from None

    # -- reports ------------------------------------------------------------------------------------
    async def report(self, name: str, since: datetime | None, until: datetime | None, bucket: str,
                     request_id: str) -> Report:
        route = self.gateway.routing.get(name)  # 404 naming the known models
        since, until, bucket, adjusted = fit_report_range(since, until, bucket)
        body, drift, known = await asyncio.gather(
            self._in_db(build_report, name, since=since, until=until, bucket=bucket),
            self.gateway.head_json(route, "/drift", request_id), self._served_labels(route, request_id))
        try:
            drift = DriftReport.model_validate(drift) if drift is not None else None
        except ValueError:  # pydantic's: a head answering something else has no drift to show
            drift = None
        review = await self._in_db(review_summary, name, since=since, until=until, known_labels=known,
                                   min_new_label_examples=route.min_new_label_examples)
        return Report.model_validate({**body, "drift": drift, "adjusted": adjusted, "review": review})

    # -- review queue ---------------------------------------------------------------------------------
    async def review(self, name: str, *, n: int, strategy: str, score: str, pool: int, since: datetime | None,
                     until: datetime | None, seed: int | None, request_id: str) -> dict:
        route = self.gateway.routing.get(name)
        chosen = STRATEGIES[strategy]
        labels = await self._served_labels(route, request_id) or []
        pending = await self._in_db(pending_texts, name, labels) if chosen.needs_pending else []
        if chosen.needs_pending and not pending:
            chosen = STRATEGIES[chosen.fallback]  # nothing to rank against: the items name what picked them
        candidates = await self._in_db(candidate_pool, name, order=chosen.pool_order, limit=pool, since=since,
                                       until=until, disagreeing=chosen.disagreeing)
        ctx = Context(score=score, seed=seed)
        if candidates and (chosen.needs_vectors or chosen.needs_centroids):
            reference = await self._centroids(route, request_id)
            ctx.centroids = reference["centroids"]
            if chosen.needs_vectors:
                ctx.vectors = await self._embed([c.text for c in candidates], reference, request_id)
            if chosen.needs_pending:
                ctx.pending = await self._embed(pending, reference, request_id)
        picked = await asyncio.to_thread(select, chosen, candidates, n, ctx)
        score_name = ("entropy" if score == "entropy" else "margin") if chosen.takes_score else chosen.score_name
        expected = [x for x in route.new_labels if x not in labels] if isinstance(route.new_labels, tuple) else []
        items = [{"prediction_id": c.prediction_id, "index": c.index, "text": c.text, "predicted": c.label,
                  "probability": c.probability, "top_k": c.top_k, "version": c.version, "ts": c.ts,
                  "strategy": chosen.name, "score": None if value is None else round(float(value), 6),
                  "score_name": score_name if value is not None else None, "challenger": c.challenger}
                 for c, value in picked]
        return {"model": name, "strategy": chosen.name, "score": score_name, "pool": len(candidates),
                "labels": labels + expected,
                "new_labels": list(route.new_labels) if isinstance(route.new_labels, tuple) else route.new_labels,
                "items": items}

    async def _centroids(self, route, request_id: str) -> dict:
        """The served version's training centroids and feature set (the head's GET /drift/centroids), cached
        per version: a version's never change."""
        body = await self.gateway.head_json(route, "/drift/centroids", request_id)
        if body is None or "centroids" not in body:
            raise UnavailableError(f"model {route.name!r}: cannot rank against the training data now: its head did not "
                                   "answer its training centroids (GET /drift/centroids; an artifact without a drift "
                                   "reference has none)", retry_after_s=2)
        key = (route.name, str(body["version"]))
        cached = self._centroids_cache.get(key)
        if cached is None:
            raw = np.frombuffer(base64.b64decode(body["centroids"]), "<f4").reshape(-1, int(body["dim"]))
            cached = {**body, "centroids": raw.astype(np.float32)}
            self._centroids_cache = {k: v for k, v in self._centroids_cache.items() if k[0] != route.name}
            self._centroids_cache[key] = cached  # one version per model: the served one
        return cached

    async def _embed(self, texts: list[str], reference: dict, request_id: str) -> np.ndarray:
        """The texts' vectors in the served version's feature set, through the embedder (and its cache: the
        head embedded the same texts when it answered them)."""
        vectors = []
        for start in range(0, len(texts), REVIEW_EMBED_CHUNK):
            out = await self.gateway.embedder.embed(texts[start:start + REVIEW_EMBED_CHUNK], request_id=request_id,
                                                    feature_set=reference.get("feature_set") or "default")
            if reference.get("embedder_fingerprint") and out.fingerprint != reference["embedder_fingerprint"]:
                raise UnavailableError(f"the embedder now serves another encoder ({out.fingerprint}) than version "
                                       f"{reference.get('version')} was trained on", retry_after_s=2)
            vectors.append(out.vectors)
        return np.concatenate(vectors).astype(np.float32)

    # -- feedback -----------------------------------------------------------------------------------
    async def feedback(self, name: str, items: list[FeedbackItem], *, batch: bool, request_id: str,
                       key: ApiKey | None = None, dry_run: bool = False) -> dict:
        """`key`: the caller's API key (None: keys are off). It may label the predictions it asked for,
        or any with the labeller role; another key's prediction reads exactly like an unknown one."""
        route = self.gateway.routing.get(name)

        def where(i: int, attr: str) -> str:
            return f"items[{i}].{attr}" if batch else attr

        keys = [(it.prediction_id, it.index) for it in items]
        found = await self._wait_for_predictions(name, keys, key)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            i = missing[0]
            pid, index = keys[i]
            text = f" (text index {index})" if index else ""
            more = f"; {len(missing)} of {len(items)} items are unknown" if len(missing) > 1 else ""
            # 404: the request is well formed, the prediction it names does not exist for this caller
            raise NotFoundError(f"{where(i, 'prediction_id')}: unknown prediction_id {pid!r}{text}: model {name!r} "
                                f"logged no such prediction for this caller{more}", field=where(i, "prediction_id"))
        new_label = []
        for i, item in enumerate(items):
            labels = await self._labels_of(route, found[keys[i]].version, request_id)
            new_label.append(item.label not in labels)
            if new_label[-1] and not route.allows_new_label(item.label):
                expected = [x for x in route.new_labels if x not in labels] if isinstance(route.new_labels, tuple) \
                    else []
                raise ValidationError(f"{where(i, 'label')}: model {name!r} has no label {item.label!r}; its labels: "
                                      f"{', '.join(labels + expected)}", field=where(i, "label"))

        last = {key: i for i, key in enumerate(keys)}  # a text named twice in one call: the last one wins
        unique: list[tuple[LoggedPrediction, str]] = [(found[key], items[i].label) for key, i in last.items()]
        strategies = [items[i].strategy for i in last.values()]
        if dry_run:
            replaced_before = dict(zip(last, await self._in_db(existing_feedback, name, list(last))))
        else:
            replaced_before = dict(zip(last, await self._in_db(store_feedback, name, unique,
                                                               key.name if key is not None else None, strategies)))
        results, seen = [], set()
        for (pid, index), item, new in zip(keys, items, new_label):
            pred = found[(pid, index)]
            replaced = (pid, index) in seen or replaced_before[(pid, index)]
            seen.add((pid, index))
            results.append({"prediction_id": pid, "index": index, "label": item.label, "predicted": pred.label,
                            "version": pred.version, "status": "replaced" if replaced else "stored",
                            "new_label": new, "strategy": item.strategy})
        return {"dry_run": dry_run, "stored": len(results), "replaced": sum(r["status"] == "replaced" for r in results),
                "items": results}

    async def _wait_for_predictions(self, name: str, keys: list[tuple[str, int]], key: ApiKey | None) -> dict:
        """Heads log asynchronously (a writer thread, batches every ~0.2 s): feedback sent right after
        its predict may arrive first, so look again for up to feedback_wait_s before calling it unknown.
        Only the predictions this key may label count (the others are left out): "not yours" waits as
        long and answers the same 404 as "unknown", so neither the answer nor its timing tells them apart."""
        deadline = time.monotonic() + self.settings.feedback_wait_s
        while True:
            found = {k: pred for k, pred in (await self._in_db(find_predictions, name, keys)).items()
                     if _may_label(key, pred)}
            if len(found) == len(set(keys)) or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(FEEDBACK_POLL_S)

    async def _served_labels(self, route, request_id: str) -> list[str] | None:
        """The served version's labels (the head's /info); None when the head does not answer."""
        try:
            info = await self.gateway.head_info(route, request_id)
        except PolyheadError:
            return None
        return list(info.labels) or None

    async def _labels_of(self, route, version: str, request_id: str) -> list[str]:
        """The labels of the version that answered, from the head's /info (cached per version). A
        prediction of an older version is checked against the served version's labels."""
        cached = self._labels.get((route.name, version))
        if cached is not None:
            return cached
        try:
            info = await self.gateway.head_info(route, request_id)
        except PolyheadError:
            info = None
        if info is None or not info.labels:
            raise UnavailableError(f"model {route.name!r}: cannot check the label now: its head did not answer /info",
                                   retry_after_s=2)
        labels = info.labels
        if info.version:
            self._labels[(route.name, info.version)] = labels
        return labels
