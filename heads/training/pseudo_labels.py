"""Self-training (`polyhead train --with-pseudo-labels`): production texts the champion is very sure of,
added to the training split with the champion's label.

- The threshold is chosen on held-out predictions: the lowest top probability at which the champion's
  out-of-fold (cross-validation) or validation answers were at least ``target_precision`` right, over
  at least ``min_support`` texts (fewer: no threshold, nothing is added: a precision measured on a
  handful of texts means nothing). Training records that table in metrics.json
  (``held_out_confidence``, see ``reliability``): the champion's answers on texts it was refitted on
  would be right far more often than on production texts.
- Candidates are the logged predictions of the champion's version at or above it, with their text
  kept, no feedback, not in any split (so never in val or test) and distinct; the most confident
  first, at most ``max_share`` of the training split.
- The result is a challenger (heads/roles.py): shadowed, not served, until the comparison with the
  champion on the same live texts gets it promoted.

Whether it helps is an empirical question per dataset: measure before claiming it does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = np.round(np.arange(0.50, 1.0, 0.01), 2)


@dataclass(frozen=True)
class PseudoLabelOptions:
    db_url: str
    target_precision: float = 0.97
    min_support: int = 30
    max_share: float = 0.2


def reliability(proba: np.ndarray, truth: np.ndarray) -> dict:
    """Per threshold in THRESHOLDS: held-out texts whose top probability reaches it and how many of those
    the top label got right (``proba`` [n, C] held-out probabilities, ``truth`` [n] class indices)."""
    top = np.asarray(proba).max(axis=1)
    right = np.asarray(proba).argmax(axis=1) == np.asarray(truth)
    return {"n": int(len(top)), "thresholds": THRESHOLDS.tolist(), "support": [int((top >= t).sum()) for t in THRESHOLDS],
            "correct": [int(right[top >= t].sum()) for t in THRESHOLDS]}


def choose_threshold(table: dict, *, target_precision: float, min_support: int) -> tuple[float, float, int] | None:
    """(threshold, held-out precision at it, held-out texts at or above it) from a ``reliability`` table: the
    lowest threshold that reaches ``target_precision`` on at least ``min_support`` texts; None when none does."""
    for t, n, correct in zip(table["thresholds"], table["support"], table["correct"]):
        if n < min_support:
            return None  # higher thresholds keep even fewer
        if correct / n >= target_precision:
            return float(t), round(correct / n, 6), int(n)
    return None


def confident_predictions(db_url: str, head: str, version: str, threshold: float) -> list[tuple[str, str, float]]:
    """(text, label, probability) of the version's logged, unredacted predictions at or above the
    threshold that have no feedback; one row per text (its most confident), most confident first."""
    import sqlalchemy as sa

    from polyhead.inference_log.schema import feedback, make_engine, migrate, predictions
    from polyhead.inference_log.sink import unescape_text

    p, f = predictions, feedback
    # A text with feedback (on any row: feedback names the served row, the version may have answered it
    # in shadow) gets its true label from merge_feedback, never a pseudo-label.
    labelled = predictions.alias("labelled")
    labelled_texts = (sa.select(labelled.c.text_sha256)
                      .select_from(f.join(labelled, f.c.prediction_id == labelled.c.id)).where(f.c.head == head))
    query = (sa.select(p.c.text, p.c.text_escaped, p.c.label, p.c.probability)
             .where(p.c.head == head, p.c.head_version == version, p.c.text.is_not(None),
                    p.c.probability >= threshold, sa.func.coalesce(p.c.abstained, False).is_(False),
                    p.c.text_sha256.not_in(labelled_texts))
             .order_by(p.c.probability.desc(), p.c.id))
    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    seen, out = set(), []
    for stored, escaped, label, probability in rows:
        text = unescape_text(stored, escaped)  # texts with NUL are stored escaped (sink.escape_text)
        if text.strip() and text.strip() not in seen:
            seen.add(text.strip())
            out.append((text, label, float(probability)))
    return out


def pick(candidates: list[tuple[str, str, float]], exclude: set[str], known_labels: set[str],
         cap: int) -> list[tuple[str, str, float]]:
    """Candidates not in any split, with a label the training data has, at most ``cap`` of them."""
    keep = [c for c in candidates if c[0].strip() not in exclude and c[1] in known_labels]
    return keep[:max(0, cap)]
