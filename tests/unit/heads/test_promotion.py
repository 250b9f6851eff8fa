"""The promotion gate and the rollback guard as pure decisions over paired figures."""

from __future__ import annotations

from heads.config import PromotionConfig
from heads.promotion import gate, guard
from polyhead.inference_log.challengers import summarize


def figures(rows):
    """rows: (champion label, challenger label, true label, count)."""
    return summarize([(a, b, t, n, 0.8 * n, 0.8 * n) for a, b, t, n in rows], [])


BETTER = figures([("x", "x", "x", 60), ("y", "y", "y", 60), ("x", "y", "y", 30), ("y", "x", "y", 2)])
POLICY = PromotionConfig(mode="auto", min_shadowed=100, min_paired_feedback=100, min_class_feedback=10)


def test_auto_promotes_a_clearly_better_challenger_and_says_why():
    decision = gate(BETTER, POLICY, champion_test={"accuracy": 0.8}, challenger_test={"accuracy": 0.81})
    assert decision.act and "152 paired" in decision.reason
    assert all(c.ok for c in decision.checks) and len(decision.checks) == 6


def test_manual_never_acts_but_says_what_auto_would_do():
    decision = gate(BETTER, PromotionConfig())
    assert not decision.act and decision.reason.startswith("promotion policy is manual")


def test_each_threshold_can_block_on_its_own():
    few = gate(BETTER, POLICY.model_copy(update={"min_paired_feedback": 1000}))
    assert not few.act and "paired feedback" in few.reason
    offline = gate(BETTER, POLICY, champion_test={"accuracy": 0.9}, challenger_test={"accuracy": 0.85})
    assert not offline.act and "offline test accuracy change" in offline.reason
    strict = gate(BETTER, POLICY.model_copy(update={"mcnemar_alpha": 1e-12}))
    assert not strict.act and "McNemar" in strict.reason
    # better overall, but one class loses 40 % of its recall
    lopsided = figures([("x", "x", "x", 100), ("y", "y", "y", 30), ("z", "x", "x", 40), ("z", "z", "z", 12),
                        ("z", "y", "z", 8)])
    decision = gate(lopsided, POLICY)
    assert not decision.act and "per-class recall drop (z)" in decision.reason


def test_the_guard_waits_for_evidence_then_rolls_back_a_worse_champion():
    # comparison after a promotion: champion = the new version, challenger = the previous one
    worse_new = figures([("x", "x", "x", 40), ("y", "x", "x", 2), ("x", "y", "y", 20)])
    assert not guard(worse_new, PromotionConfig(guard_min_feedback=100)).act
    decision = guard(worse_new, PromotionConfig(guard_min_feedback=50, guard_margin=0.02))
    assert decision.act and "trails the previous champion" in decision.reason
    holds = figures([("x", "x", "x", 60), ("y", "x", "x", 1), ("x", "y", "x", 1)])  # one each way
    assert not guard(holds, PromotionConfig(guard_min_feedback=50)).act
