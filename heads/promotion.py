"""The promotion gate and the rollback guard: readable checks over paired figures.

Both read a comparison (polyhead/inference_log/challengers.py: champion and challenger on the same
live texts) and the head's `promotion:` policy (heads/config.py PromotionConfig), and answer a
Decision whose checks say, one by one, the figure, the threshold and whether it passed; the audit
log keeps that list, so "why was this promoted" is answered by the record itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from heads.config import PromotionConfig


@dataclass(frozen=True)
class Check:
    name: str
    value: float | int | None
    threshold: str
    ok: bool


@dataclass(frozen=True)
class Decision:
    act: bool  # promote (gate) or roll back (guard)
    reason: str
    checks: list[Check] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)  # the guard's: "feedback", "drift"

    def to_json(self) -> dict:
        return {"act": self.act, "reason": self.reason, "checks": [asdict(c) for c in self.checks],
                "triggers": list(self.triggers)}


def _offline_accuracy(metrics: dict | None) -> float | None:
    value = (metrics or {}).get("accuracy")
    return float(value) if value is not None else None


def gate(comparison: dict, policy: PromotionConfig, *, champion_test: dict | None = None,
         challenger_test: dict | None = None) -> Decision:
    """Would `auto` promote this challenger now? Every check must pass (manual mode: never acts)."""
    fb = comparison.get("feedback") or {}
    checks = [Check("shadowed texts", comparison.get("shadowed", 0), f">= {policy.min_shadowed}",
                    comparison.get("shadowed", 0) >= policy.min_shadowed),
              Check(f"paired feedback{_excluded(comparison)}", fb.get("paired", 0), f">= {policy.min_paired_feedback}",
                    fb.get("paired", 0) >= policy.min_paired_feedback)]
    if fb:
        better = fb["challenger_only_correct"] > fb["champion_only_correct"]
        checks.append(Check("challenger right on more of the disagreements",
                            fb["challenger_only_correct"] - fb["champion_only_correct"], "> 0", better))
        checks.append(Check("McNemar p (exact, paired)", fb["mcnemar_p"], f"<= {policy.mcnemar_alpha}",
                            fb["mcnemar_p"] <= policy.mcnemar_alpha))
        counted = [c for c in fb["per_class"] if c["support"] >= policy.min_class_feedback]
        worst = min(counted, key=lambda c: c["recall_change"], default=None)
        drop = -worst["recall_change"] if worst else 0.0
        checks.append(Check(f"largest per-class recall drop ({worst['label'] if worst else 'no class with '}"
                            f"{'' if worst else str(policy.min_class_feedback) + '+ feedback'})",
                            round(drop, 6), f"<= {policy.max_class_recall_drop}", drop <= policy.max_class_recall_drop))
    acc_c, acc_n = _offline_accuracy(champion_test), _offline_accuracy(challenger_test)
    if acc_c is not None and acc_n is not None:
        checks.append(Check("offline test accuracy change", round(acc_n - acc_c, 6), f">= -{policy.max_offline_drop}",
                            acc_n - acc_c >= -policy.max_offline_drop))
    failed = [c.name for c in checks if not c.ok]
    if policy.mode != "auto":
        return Decision(False, "promotion policy is manual" + (f"; would fail: {', '.join(failed)}" if failed else
                                                                "; every auto check passes"), checks)
    if failed:
        return Decision(False, f"not yet: {', '.join(failed)}", checks)
    return Decision(True, f"auto gate: challenger better on {fb['paired']} paired feedback texts "
                          f"({fb['challenger_accuracy']:.3f} vs {fb['champion_accuracy']:.3f}, "
                          f"McNemar p={fb['mcnemar_p']:.2g})", checks)


def _excluded(comparison: dict) -> str:
    """Says, in a check's name, how many feedback texts a review strategy picked on the answers and the
    comparison therefore left out (polyhead/inference_log/challengers.py: only direct and random-slice count)."""
    n = comparison.get("feedback_excluded_selected", 0)
    return f" (direct or random slice; {n} picked by other review strategies not counted)" if n else ""


def _shift(live: float | None, reference: float | None) -> float | None:
    return None if live is None or reference is None else abs(live - reference)


def guard(comparison: dict, policy: PromotionConfig, *, reference_confidence: dict | None = None) -> Decision:
    """After a promotion: roll back when the new champion trails the previous one (now a challenger,
    still shadowed) on the same texts: on feedback accuracy by more than guard_margin, or on drift,
    its confidence shift from its own training reference larger than the previous one's from its
    own by more than guard_confidence_margin. `reference_confidence`: {"champion", "previous"}: each
    version's held-out mean top probability (its drift reference; None where it has none)."""
    fb = comparison.get("feedback") or {}
    paired = fb.get("paired", 0)
    checks = [Check(f"paired feedback since the promotion{_excluded(comparison)}", paired, f">= {policy.guard_min_feedback}",
                    paired >= policy.guard_min_feedback)]
    fired: list[str] = []
    triggers: list[str] = []
    judged = paired >= policy.guard_min_feedback
    if judged:
        # The comparison is (champion = new, challenger = previous): accuracy_change = previous - new.
        shortfall = fb["challenger_accuracy"] - fb["champion_accuracy"]
        checks.append(Check("live accuracy: previous - new champion", round(shortfall, 6), f"<= {policy.guard_margin}",
                            shortfall <= policy.guard_margin))
        # A few texts either way on 50 are noise: the shortfall must also be significant, or a better version
        # is rolled back by chance (as the review loop's guard did before this check).
        significant = True
        if policy.guard_mcnemar_alpha is not None:
            significant = (fb["challenger_only_correct"] > fb["champion_only_correct"]
                           and fb["mcnemar_p"] <= policy.guard_mcnemar_alpha)
            checks.append(Check("previous champion right on more of the disagreements: McNemar p (exact, paired)",
                                fb["mcnemar_p"] if fb["challenger_only_correct"] > fb["champion_only_correct"] else 1.0,
                                f"> {policy.guard_mcnemar_alpha} (holds)", not significant))
        if shortfall > policy.guard_margin and significant:
            triggers.append("feedback")
            fired.append(f"the new champion's live accuracy {fb['champion_accuracy']:.3f} trails the previous "
                         f"champion's {fb['challenger_accuracy']:.3f} on the same {paired} texts by more than "
                         f"{policy.guard_margin}"
                         + (f" (McNemar p={fb['mcnemar_p']:.2g})" if policy.guard_mcnemar_alpha is not None else ""))
    ref = reference_confidence or {}
    shadowed = comparison.get("shadowed", 0)
    conf = comparison.get("confidence") or {}
    new_shift = _shift(conf.get("champion_mean"), ref.get("champion"))
    prev_shift = _shift(conf.get("challenger_mean"), ref.get("previous"))
    drift_on = policy.guard_confidence_margin is not None and None not in (ref.get("champion"), ref.get("previous"))
    if drift_on and new_shift is not None and prev_shift is not None:
        checks.append(Check("texts both answered since the promotion", shadowed, f">= {policy.guard_min_shadowed}",
                            shadowed >= policy.guard_min_shadowed))
        if shadowed >= policy.guard_min_shadowed:
            judged = True
            excess = new_shift - prev_shift
            checks.append(Check("confidence shift from own training reference: new - previous champion",
                                round(excess, 6), f"<= {policy.guard_confidence_margin}",
                                excess <= policy.guard_confidence_margin))
            if excess > policy.guard_confidence_margin:
                triggers.append("drift")
                fired.append(f"the new champion's live mean confidence {conf['champion_mean']:.3f} is {new_shift:.3f} "
                             f"from its training reference's {ref['champion']:.3f}, the previous champion's "
                             f"{conf['challenger_mean']:.3f} only {prev_shift:.3f} from its own "
                             f"{ref['previous']:.3f}, on the same {shadowed} texts: worse by more than "
                             f"{policy.guard_confidence_margin}")
    if fired:
        return Decision(True, "guard: " + "; and ".join(fired), checks, triggers)
    if not judged:
        return Decision(False, f"guard waits: {paired} of {policy.guard_min_feedback} paired feedback texts"
                               + (f", {shadowed} of {policy.guard_min_shadowed} shadowed texts" if drift_on else ""),
                        checks)
    return Decision(False, "guard: the new champion holds", checks)
