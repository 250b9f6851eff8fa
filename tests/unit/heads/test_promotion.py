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


def confident(rows, new_conf: float, previous_conf: float):
    """rows: (champion label, challenger label, count); each version's live mean top probability given."""
    return summarize([(a, b, None, n, new_conf * n, previous_conf * n) for a, b, n in rows], [])


def test_the_guard_rolls_back_on_drift_from_its_own_reference_without_any_feedback():
    policy = PromotionConfig(guard_min_shadowed=100, guard_confidence_margin=0.1)
    # Same labels everywhere; the new champion is far less sure than on its held-out data (0.9),
    # the previous one about as sure as on its own (0.8): the references differ per version.
    drifted = confident([("x", "x", 150)], new_conf=0.55, previous_conf=0.78)
    refs = {"champion": 0.9, "previous": 0.8}
    decision = guard(drifted, policy, reference_confidence=refs)
    assert decision.act and decision.triggers == ["drift"]
    assert "0.350 from its training reference's 0.900" in decision.reason and "150 texts" in decision.reason
    (check,) = [c for c in decision.checks if c.name.startswith("confidence shift")]
    assert check.value == round(0.35 - 0.02, 6) and not check.ok
    # Both versions drifted alike: the new one is not to blame.
    alike = confident([("x", "x", 150)], new_conf=0.55, previous_conf=0.45)
    assert not guard(alike, policy, reference_confidence=refs).act
    # Too few texts, an old artifact without a reference, or the check switched off: no drift verdict.
    few = confident([("x", "x", 50)], new_conf=0.55, previous_conf=0.78)
    waiting = guard(few, policy, reference_confidence=refs)
    assert not waiting.act and "50 of 100 shadowed texts" in waiting.reason
    assert not guard(drifted, policy, reference_confidence={"champion": 0.9, "previous": None}).act
    assert not guard(drifted, policy.model_copy(update={"guard_confidence_margin": None}),
                     reference_confidence=refs).act
    assert PromotionConfig().guard_confidence_margin == 0.1 and PromotionConfig().guard_min_shadowed == 200


def test_feedback_and_drift_both_named_when_both_fire():
    rows = [("x", "y", "y", 60), ("x", "x", "x", 60)] + [("x", "x", None, 100)]
    both = summarize([(a, b, t, n, 0.5 * n, 0.8 * n) for a, b, t, n in rows], [])
    decision = guard(both, PromotionConfig(guard_min_feedback=50, guard_min_shadowed=100),
                     reference_confidence={"champion": 0.9, "previous": 0.8})
    assert decision.act and decision.triggers == ["feedback", "drift"]
    assert "live accuracy" in decision.reason and "confidence" in decision.reason


def test_the_checks_say_when_review_picked_feedback_was_left_out():
    waiting = {**figures([("x", "x", "x", 10)]), "feedback_excluded_selected": 90}
    decision = guard(waiting, PromotionConfig(guard_min_feedback=50))
    assert not decision.act and "90 picked by other review strategies not counted" in decision.checks[0].name
    assert "not counted" not in guard(figures([("x", "x", "x", 10)]), PromotionConfig()).checks[0].name
    assert "90 picked" in gate(waiting, POLICY).checks[1].name


def test_the_guard_does_not_roll_back_on_a_few_texts_either_way():
    # 55 paired texts, the previous champion right on 4 of the 6 disagreements: 0.036 ahead, p = 0.69
    noisy = figures([("x", "x", "x", 33), ("y", "y", "y", 16), ("y", "x", "x", 4), ("x", "y", "x", 2)])
    assert noisy["feedback"]["accuracy_change"] > 0.02
    decision = guard(noisy, PromotionConfig(guard_min_feedback=50))
    assert not decision.act and decision.reason == "guard: the new champion holds"
    assert any("McNemar" in c.name and c.ok for c in decision.checks)
    # without the significance check the margin alone fires
    assert guard(noisy, PromotionConfig(guard_min_feedback=50, guard_mcnemar_alpha=None)).act
