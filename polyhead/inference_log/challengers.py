"""A champion and a challenger on the same live texts, from the inference log's shadow rows.

A challenger's shadow row (predictions.shadow TRUE) has the request_id and text_index of the row
the caller got; pairing the two gives agreement, the flip matrix and the confidence shift on
exactly the same texts, and, where feedback names the text, both versions' accuracies on those
texts with McNemar's exact paired test and the per-class recall change. Three aggregate queries and
one bounded query for example texts, whatever the volume.

Only feedback whose text was not picked on what a version answered counts in the paired figures: feedback
given directly and through the review queue's control slice (``random``). A queue strategy such as
``uncertain`` picks the texts the served version hesitates on, so its feedback is a sample where that
version is weakest: counted, it would make the gate promote a challenger and the guard roll back a new
champion for being the one whose doubts chose the texts. Those rows are counted apart (``feedback_excluded_selected``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa

from polyhead.inference_log.review import CONTROL
from polyhead.inference_log.schema import feedback, predictions, served_only

EXAMPLES_PER_FLIP = 3
EXAMPLE_ROWS = 2000  # recent disagreements scanned for example texts


def comparable(f: sa.Table) -> sa.ColumnElement[bool]:
    """Feedback a paired comparison may count: given directly, or through the queue's random slice."""
    return sa.or_(f.c.review_strategy.is_(None), f.c.review_strategy == CONTROL)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c = the discordant pairs (binomial, n = b + c, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _pairs(head: str, champion: str, challenger: str, since: datetime | None):
    s, p = predictions.alias("s"), predictions.alias("p")
    on = sa.and_(p.c.head == s.c.head, p.c.request_id == s.c.request_id,
                 sa.func.coalesce(p.c.text_index, 0) == sa.func.coalesce(s.c.text_index, 0),
                 p.c.head_version == champion, served_only(p))
    where = [s.c.head == head, s.c.shadow == sa.true(), s.c.head_version == challenger]
    if since is not None:
        where.append(s.c.ts >= since)
    return s, p, on, where


def compare_versions(engine: sa.Engine, head: str, champion: str, challenger: str, *, since: datetime | None = None,
                     with_texts: bool = True, examples: int = EXAMPLES_PER_FLIP) -> dict:
    """The comparison of `challenger` with `champion` on the texts both answered (since `since`).
    `with_texts=False` (a redacted head) leaves example texts out."""
    s, p, on, where = _pairs(head, champion, challenger, since)
    f = feedback
    f_on = sa.and_(f.c.head == head, f.c.prediction_id == p.c.id, comparable(f))  # feedback names the served row
    query = (sa.select(p.c.label.label("champion"), s.c.label.label("challenger"), f.c.label.label("truth"),
                       sa.func.count().label("n"), sa.func.sum(p.c.probability).label("p_champion"),
                       sa.func.sum(s.c.probability).label("p_challenger"))
             .select_from(s.join(p, on).outerjoin(f, f_on)).where(*where)
             .group_by(p.c.label, s.c.label, f.c.label))
    with engine.connect() as conn:
        groups = conn.execute(query).all()
        example_rows = []
        if with_texts and examples > 0:
            example_rows = conn.execute(
                sa.select(p.c.label, s.c.label, p.c.text).select_from(s.join(p, on))
                .where(*where, p.c.label != s.c.label, p.c.text.is_not(None))
                .order_by(s.c.ts.desc()).limit(EXAMPLE_ROWS)).all()
        excluded = conn.execute(
            sa.select(sa.func.count()).select_from(
                s.join(p, on).join(f, sa.and_(f.c.head == head, f.c.prediction_id == p.c.id)))
            .where(*where, sa.not_(comparable(f)))).scalar_one()
    return summarize(groups, example_rows, examples, excluded_selected=int(excluded))


def summarize(groups, example_rows, examples: int = EXAMPLES_PER_FLIP, excluded_selected: int = 0) -> dict:
    """Figures from (champion label, challenger label, true label | None, n, sum p champion, sum p challenger).
    `excluded_selected`: paired texts whose feedback a review strategy picked on the answers (not counted)."""
    total = agree = 0
    sum_pc = sum_pn = 0.0
    flips: dict[tuple[str, str], int] = defaultdict(int)
    paired = both = only_champion = only_challenger = 0
    support: dict[str, int] = defaultdict(int)
    hits_champion: dict[str, int] = defaultdict(int)
    hits_challenger: dict[str, int] = defaultdict(int)
    for champ, chall, truth, n, pc, pn in groups:
        n = int(n)
        total += n
        sum_pc += float(pc or 0)
        sum_pn += float(pn or 0)
        if champ == chall:
            agree += n
        else:
            flips[(champ, chall)] += n
        if truth is None:
            continue
        paired += n
        support[truth] += n
        ok_c, ok_n = champ == truth, chall == truth
        hits_champion[truth] += n * ok_c
        hits_challenger[truth] += n * ok_n
        both += n * (ok_c and ok_n)
        only_champion += n * (ok_c and not ok_n)
        only_challenger += n * (ok_n and not ok_c)
    texts: dict[tuple[str, str], list[str]] = defaultdict(list)
    for champ, chall, text in example_rows:
        if len(texts[(champ, chall)]) < examples:
            texts[(champ, chall)].append(text)
    flip_list = [{"champion_label": a, "challenger_label": b, "count": n, "examples": texts.get((a, b), [])}
                 for (a, b), n in sorted(flips.items(), key=lambda kv: (-kv[1], kv[0]))]
    feedback_figures = None
    if paired:
        acc_c = (both + only_champion) / paired
        acc_n = (both + only_challenger) / paired
        feedback_figures = {
            "paired": paired, "champion_accuracy": round(acc_c, 6), "challenger_accuracy": round(acc_n, 6),
            "accuracy_change": round(acc_n - acc_c, 6),
            "champion_only_correct": only_champion, "challenger_only_correct": only_challenger,
            "mcnemar_p": round(mcnemar_exact(only_champion, only_challenger), 8),
            "per_class": [{"label": label, "support": support[label],
                           "champion_recall": round(hits_champion[label] / support[label], 6),
                           "challenger_recall": round(hits_challenger[label] / support[label], 6),
                           "recall_change": round((hits_challenger[label] - hits_champion[label]) / support[label], 6)}
                          for label in sorted(support)],
        }
    return {
        "shadowed": total,
        "agreement": round(agree / total, 6) if total else None,
        "flips": flip_list,
        "confidence": {"champion_mean": round(sum_pc / total, 6) if total else None,
                       "challenger_mean": round(sum_pn / total, 6) if total else None,
                       "shift": round((sum_pn - sum_pc) / total, 6) if total else None},
        "feedback": feedback_figures,
        "feedback_excluded_selected": excluded_selected,
    }


def feedback_since(engine: sa.Engine, head: str, since: datetime | None) -> int:
    """Feedback labels stored for `head` since `since` (a retraining trigger: new labels since the
    champion was trained)."""
    query = sa.select(sa.func.count()).select_from(feedback).where(feedback.c.head == head)
    if since is not None:
        query = query.where(feedback.c.ts >= since)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
