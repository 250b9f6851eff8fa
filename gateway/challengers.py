"""Challengers at the gateway: comparison, promotion, the auto gate and the rollback guard.

GET  /v1/models/{name}/challengers  -- per challenger: shadow figures on the same texts as the champion
                                       (polyhead/inference_log/challengers.py), offline test metrics from
                                       both artifacts (the head's GET /roles), what the gate would decide
POST /v1/models/{name}/promote      -- admin: the head swaps champion and challenger (its /admin/promote)
POST /v1/models/{name}/rollback     -- admin: back to the champion before the last promotion
POST /v1/models/{name}/evaluate     -- admin: run the gate (auto policy) and the guard now
GET  /v1/models/{name}/audit        -- promotions and rollbacks: who, when, why, the figures

The head owns its roles (models/<name>/serving.json, heads/roles.py); the gateway decides from the
inference DB and asks the head to act, naming the champion its figures were about (`expect_champion`),
so two gateways (or workers) deciding at once cannot undo each other. The gate and the guard also run
after feedback arrives (at most once per `policy_check_interval_s` per model): evidence only grows
with feedback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field

from gateway import metrics
from gateway.core import GatewayService
from gateway.insights import Insights
from heads.config import PromotionConfig
from heads.promotion import gate, guard
from polyhead.errors import PolyheadError, UnavailableError
from polyhead.inference_log.challengers import compare_versions

log = logging.getLogger("polyhead.gateway.challengers")


# -- API schemas ------------------------------------------------------------------------------------
class Flip(BaseModel):
    champion_label: str
    challenger_label: str
    count: int
    examples: list[str] = Field(..., description="Recent texts of this flip; empty for a head that redacts texts")


class Confidence(BaseModel):
    champion_mean: float | None
    challenger_mean: float | None
    shift: float | None = Field(..., description="challenger_mean - champion_mean")


class ClassRecall(BaseModel):
    label: str
    support: int
    champion_recall: float
    challenger_recall: float
    recall_change: float


class PairedFeedback(BaseModel):
    paired: int = Field(..., description="Shadowed texts with feedback: both versions judged on the same texts")
    champion_accuracy: float
    challenger_accuracy: float
    accuracy_change: float
    champion_only_correct: int
    challenger_only_correct: int
    mcnemar_p: float = Field(..., description="McNemar's exact two-sided paired test on the disagreements")
    per_class: list[ClassRecall]


class GateCheck(BaseModel):
    name: str
    value: float | int | None
    threshold: str
    ok: bool


class GateDecision(BaseModel):
    act: bool = Field(..., description="Gate: would promote now; guard: would roll back now")
    reason: str
    checks: list[GateCheck]
    triggers: list[str] = Field([], description="Guard: what made it roll back (feedback, drift)")


class ChallengerReport(BaseModel):
    version: str
    created: str | None = None
    in_shadow: bool = Field(..., description="Shadowed now (false: failed to load or dropped; see error)")
    error: str | None = None
    shadowed: int = Field(..., description="Texts both versions answered")
    agreement: float | None
    flips: list[Flip]
    confidence: Confidence
    feedback: PairedFeedback | None
    offline_test: dict = Field(default_factory=dict, description="The artifact's test metrics")
    gate: GateDecision


class Guard(BaseModel):
    previous: str
    since: str
    until: str
    active: bool
    decision: GateDecision | None = None


class ChallengersResponse(BaseModel):
    model: str
    champion: str | None
    champion_offline_test: dict = Field(default_factory=dict)
    policy: dict
    redacted: bool
    guard: Guard | None = None
    challengers: list[ChallengerReport]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, max_length=64, description="The challenger; absent: the only one")
    reason: str = Field("manual promotion", max_length=2000)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("manual rollback", max_length=2000)


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    ts: str
    event: str
    version: str | None = None
    previous: str | None = None
    actor: str
    reason: str
    figures: dict = {}


class AuditLog(BaseModel):
    model: str
    entries: list[AuditEntry]


# -- core -------------------------------------------------------------------------------------------
def _headline(test: dict | None) -> dict:
    """The offline figures worth keeping in the audit log (not the confusion matrix)."""
    return {k: (test or {}).get(k) for k in ("n", "accuracy", "f1_weighted", "f1_macro")}


def _reference_confidence(roles: dict, previous: str) -> dict:
    """Each side's held-out mean top probability (its own drift reference), from the head's GET /roles."""
    prev = next((c for c in roles["challengers"] if c["version"] == previous), {})
    return {"champion": (roles.get("champion_info") or {}).get("reference_confidence"),
            "previous": prev.get("reference_confidence")}


def _parse(ts: str) -> datetime:
    value = datetime.fromisoformat(ts)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class Challengers:
    def __init__(self, gateway: GatewayService, insights: Insights):
        self.gateway = gateway
        self.insights = insights
        self._checked: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()

    async def _roles(self, name: str, request_id: str) -> dict:
        route = self.gateway.routing.get(name)
        roles = await self.gateway.head_json(route, "/roles", request_id)
        if roles is None:
            raise UnavailableError(f"model {name!r}: its head did not answer GET /roles", retry_after_s=2)
        return roles

    async def report(self, name: str, request_id: str, with_texts: bool = True) -> dict:
        roles = await self._roles(name, request_id)
        policy = PromotionConfig.model_validate(roles["policy"])
        champion, redacted = roles["champion"], bool(roles.get("redacted"))
        with_texts = with_texts and not redacted
        champion_test = (roles.get("champion_info") or {}).get("test") or {}
        out = []
        for ch in roles["challengers"]:
            figures = await self.insights._in_db(compare_versions, name, champion, ch["version"],
                                                 with_texts=with_texts)
            decision = gate(figures, policy, champion_test=champion_test, challenger_test=ch.get("test"))
            out.append({"version": ch["version"], "created": ch.get("created"), "in_shadow": ch["shadowed"],
                        "error": ch.get("error"), **figures, "offline_test": ch.get("test") or {},
                        "gate": decision.to_json()})
        guard_view = None
        if roles.get("guard"):
            g = roles["guard"]
            active = _parse(g["until"]) > datetime.now(timezone.utc)
            decision = None
            if active:
                decision = guard(await self._guard_figures(name, champion, g), policy,
                                 reference_confidence=_reference_confidence(roles, g["previous"])).to_json()
            guard_view = {**g, "active": active, "decision": decision}
        return {"model": name, "champion": champion, "champion_offline_test": champion_test,
                "policy": policy.model_dump(), "redacted": redacted, "guard": guard_view, "challengers": out}

    async def _guard_figures(self, name: str, champion: str, g: dict) -> dict:
        # The previous champion is a challenger now, still shadowed: both on the texts since the promotion.
        return await self.insights._in_db(compare_versions, name, champion, g["previous"], since=_parse(g["since"]),
                                          with_texts=False)

    async def act(self, name: str, path: str, body: dict, request_id: str) -> tuple[int, bytes]:
        """Ask the head to promote or roll back; its answer (status, JSON) comes back as is."""
        route = self.gateway.routing.get(name)
        reply = await self.gateway._call_head(route, "POST", path, request_id, body=json.dumps(body).encode())
        return reply.status, reply.content

    async def evaluate(self, name: str, request_id: str, actor: str = "gate") -> dict:
        """The guard first (a promotion under watch), then, for an `auto` policy, the gate."""
        roles = await self._roles(name, request_id)
        policy = PromotionConfig.model_validate(roles["policy"])
        champion = roles["champion"]
        g = roles.get("guard")
        if g and _parse(g["until"]) > datetime.now(timezone.utc):
            figures = await self._guard_figures(name, champion, g)
            references = _reference_confidence(roles, g["previous"])
            decision = guard(figures, policy, reference_confidence=references)
            if not decision.act:
                return {"model": name, "action": None, "reason": decision.reason}
            status, content = await self.act(name, "/admin/rollback", {
                "actor": f"{actor}:guard", "reason": decision.reason, "expect_champion": champion,
                "figures": {"decision": decision.to_json(), "comparison": figures,
                            "reference_confidence": references}}, request_id)
            if status == 200:
                metrics.ROLLBACKS.labels(name, "guard").inc()
                for trigger in decision.triggers:
                    metrics.GUARD_ROLLBACKS.labels(name, trigger).inc()
                log.warning("guard rolled back", extra={"model": name, "from": champion, "to": g["previous"],
                                                        "reason": decision.reason, "triggers": decision.triggers})
            return {"model": name, "action": "rollback" if status == 200 else None, "reason": decision.reason,
                    "head_status": status}
        if policy.mode != "auto" or not roles["challengers"]:
            return {"model": name, "action": None, "reason": f"policy {policy.mode}, "
                                                             f"{len(roles['challengers'])} challenger(s)"}
        champion_test = (roles.get("champion_info") or {}).get("test") or {}
        best = None
        for ch in roles["challengers"]:
            if not ch["shadowed"]:
                continue
            figures = await self.insights._in_db(compare_versions, name, champion, ch["version"], with_texts=False)
            decision = gate(figures, policy, champion_test=champion_test, challenger_test=ch.get("test"))
            if decision.act and (best is None or figures["feedback"]["challenger_accuracy"] >
                                 best[1]["feedback"]["challenger_accuracy"]):
                best = (ch, figures, decision)
        if best is None:
            return {"model": name, "action": None, "reason": "no challenger passes the gate"}
        ch, figures, decision = best
        status, _ = await self.act(name, "/admin/promote", {
            "version": ch["version"], "actor": f"{actor}:auto", "reason": decision.reason,
            "expect_champion": champion, "figures": {"decision": decision.to_json(), "comparison": figures,
                                                     "offline": {"champion": _headline(champion_test),
                                                                 "challenger": _headline(ch.get("test"))}}},
            request_id)
        if status == 200:
            metrics.PROMOTIONS.labels(name, "auto").inc()
            log.warning("auto promotion", extra={"model": name, "version": ch["version"], "reason": decision.reason})
        return {"model": name, "action": "promote" if status == 200 else None, "version": ch["version"],
                "reason": decision.reason, "head_status": status}

    def after_feedback(self, name: str, request_id: str) -> None:
        """Run evaluate() in the background, at most once per policy_check_interval_s per model."""
        interval = self.gateway.settings.policy_check_interval_s
        now = time.monotonic()
        if interval <= 0 or now - self._checked.get(name, -interval) < interval:
            return
        self._checked[name] = now

        async def run():
            try:
                await self.evaluate(name, request_id)
            except PolyheadError as err:
                log.info("policy check skipped", extra={"model": name, "error": err.message})
            except Exception:  # a background check must never take the gateway down
                log.exception("policy check failed", extra={"model": name})

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
