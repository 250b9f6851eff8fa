"""Shadow rows in the inference DB (SQLite and PostgreSQL): paired with the served row, left out of
reports and feedback matching, compared per challenger."""

from __future__ import annotations

from datetime import timedelta

from polyhead.inference_log.challengers import compare_versions
from polyhead.inference_log.feedback import find_predictions, store_feedback
from polyhead.inference_log.reports import build_report
from tests.unit.polyhead.inference_log.test_reports import T0, engine, insert, row  # noqa: F401


def shadow_row(rid, **kwargs) -> dict:
    return {**row(rid, **kwargs), "shadow": True}


def test_shadow_rows_pair_with_the_served_row_and_stay_out_of_reports_and_feedback(engine):  # noqa: F811
    served = [row(f"r{i}", version="champ", label="pos" if i < 6 else "neg", p=0.9, text=f"text {i}")
              for i in range(10)]
    # the challenger flips r0 and r1 to neg; r9 (neg) to pos; less sure everywhere
    shadow = [shadow_row(f"r{i}", version="chall", label=("neg" if i in (0, 1) else "pos" if i == 9 else
                                                         "pos" if i < 6 else "neg"), p=0.7) for i in range(10)]
    other = [shadow_row("r0", version="older", label="pos")]  # another challenger's row of the same text
    insert(engine, served + shadow + other)

    found = find_predictions(engine, "h", [("r0", 0)])
    assert found[("r0", 0)].version == "champ"  # feedback names what the caller got
    report = build_report(engine, "h", since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))
    assert report["summary"]["texts"] == 10 and [v["version"] for v in report["versions"]] == ["champ"]

    # truth: r0 pos (champion right), r1 neg (challenger right), r9 neg (champion right), r2 pos (both)
    store_feedback(engine, "h", [(find_predictions(engine, "h", [(r, 0)])[(r, 0)], label)
                                 for r, label in (("r0", "pos"), ("r1", "neg"), ("r9", "neg"), ("r2", "pos"))])
    cmp = compare_versions(engine, "h", "champ", "chall")
    assert cmp["shadowed"] == 10 and cmp["agreement"] == 0.7
    flips = {(f["champion_label"], f["challenger_label"]): f for f in cmp["flips"]}
    assert flips[("pos", "neg")]["count"] == 2 and flips[("neg", "pos")]["count"] == 1
    assert sorted(flips[("pos", "neg")]["examples"]) == ["text 0", "text 1"]
    assert cmp["confidence"] == {"champion_mean": 0.9, "challenger_mean": 0.7, "shift": -0.2}
    fb = cmp["feedback"]
    assert (fb["paired"], fb["champion_only_correct"], fb["challenger_only_correct"]) == (4, 2, 1)
    assert (fb["champion_accuracy"], fb["challenger_accuracy"]) == (0.75, 0.5) and fb["mcnemar_p"] == 1.0
    recall = {c["label"]: c for c in fb["per_class"]}
    assert recall["neg"]["support"] == 2 and recall["neg"]["champion_recall"] == 0.5
    assert recall["pos"]["recall_change"] == -0.5
    assert compare_versions(engine, "h", "champ", "chall", with_texts=False)["flips"][0]["examples"] == []
    assert compare_versions(engine, "h", "champ", "older")["shadowed"] == 1
    assert compare_versions(engine, "h", "champ", "chall", since=T0 + timedelta(minutes=1))["shadowed"] == 0


def test_feedback_a_review_strategy_picked_on_the_answers_is_not_counted_in_the_paired_figures(engine):  # noqa: F811
    """The queue's `uncertain` picks the texts the served version hesitates on: its feedback is where that version
    is weakest, so counting it would promote challengers (gate) and roll back new champions (guard) by selection
    alone. Direct feedback and the random slice count; the rest is counted apart."""
    served = [row(f"r{i}", version="champ", label="pos", p=0.9, text=f"text {i}") for i in range(6)]
    shadow = [shadow_row(f"r{i}", version="chall", label="neg", p=0.7) for i in range(6)]
    insert(engine, served + shadow)
    found = find_predictions(engine, "h", [(f"r{i}", 0) for i in range(6)])
    # every answer is "neg": the challenger right on all six, the champion on none
    store_feedback(engine, "h", [(found[(f"r{i}", 0)], "neg") for i in range(6)],
                   strategies=[None, "random", "uncertain", "clustered", "disagree", "new_label"])
    cmp = compare_versions(engine, "h", "champ", "chall")
    assert cmp["feedback"]["paired"] == 2 and cmp["feedback"]["challenger_only_correct"] == 2
    assert cmp["feedback_excluded_selected"] == 4
    assert cmp["shadowed"] == 6  # the texts still count as shadowed
