"""The review queue: which logged predictions a person should label next (GET /v1/models/{name}/review).

Candidates are logged predictions of one head that are worth a label: rows a caller got (never a
challenger's shadow row, ``served_only``) that carry the server-issued id feedback names
(``issued_id``, the item's ``prediction_id``; older rows cannot be labelled), whose text was kept (not
redacted), that no feedback names yet, and whose text no feedback names on another row
(``text_sha256``): a text already labelled once is not asked again. Duplicates among the candidates
collapse to one row per text, the first in the pool's order (the newest; for ``uncertain`` the text's
least confident answer finds it, and its newest answer ranks it). Texts with NUL are stored escaped and
read back as they were sent (``unescape_text``).

Each strategy is a ``Strategy`` in ``STRATEGIES`` (a registry: the gateway, the CLI and the
console list the names from it): it says how the database should order the candidate pool
(``pool_order``) and ranks the pool (``rank``):

- uncertain: smallest margin between the top two logged probabilities (or, ``score=entropy``, the
  highest entropy of the logged top-k, the mass outside it taken as one more outcome);
- balanced: as ``uncertain``, but in turn over the labels the head answered (the least confident text
  answered with each label, then the next of each, ...), so a batch is not one confusable pair of frequent
  classes;
- ood: least cosine similarity to every training centroid of the served version (the artifact's
  drift reference), i.e. texts unlike anything the head was trained on;
- diverse: farthest-first traversal (greedy k-center) over the texts' embeddings, starting from the
  training centroids, so a batch covers the traffic instead of repeating one question;
- clustered: the most uncertain texts (10 per pick), grouped by k-means on their embeddings weighted
  by uncertainty, and from each group the text nearest its centre (Zhdanov 2019, "Diverse mini-batch
  active learning"): as informative as ``uncertain`` without many near-copies of one hard question;
- new_label: the texts most like the feedback given with a label the served version lacks (a pending
  new class, see ``pending_texts``), most similar first: a new class needs ``min_new_label_examples``
  labels before training adds it, and its first few labels say what the next ones look like. With no
  pending label it ranks as ``uncertain`` does (``fallback``; the items then name ``uncertain``);
- random: a uniform sample of the pool, the control slice: live accuracy is estimated from it alone,
  because the other strategies pick the texts the head is most likely wrong about;
- disagree: a challenger's shadow prediction (same request_id and text_index, ``predictions.shadow``)
  differs from what the caller got; the most confident challenger first. No items for a head
  without challengers.

Feedback given for a reviewed item carries its strategy (``feedback.review_strategy``);
``review_summary`` splits feedback metrics by strategy for the report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from polyhead.inference_log.reports import feedback_metrics, utc
from polyhead.inference_log.schema import feedback, predictions, served_only
from polyhead.inference_log.sink import unescape_text

DEFAULT_N = 20
MAX_N = 500
DEFAULT_POOL = 2000
MAX_POOL = 20_000
UNCERTAINTY_SCORES = ("margin", "entropy")
CLUSTER_PREFILTER = 10  # clustered: k-means over the 10 x n most uncertain texts (the paper's beta)
KMEANS_ITERATIONS = 10
DIRECT = "direct"  # feedback not given through the review queue (no strategy)
CONTROL = "random"  # the unbiased slice live accuracy is computed from
PENDING_LIMIT = 200  # new_label: the newest feedback texts of pending labels ranked against


@dataclass(frozen=True)
class Candidate:
    row_id: str  # predictions.id
    prediction_id: str  # the server-issued id (predictions.issued_id): what feedback names
    index: int
    ts: datetime
    version: str
    text: str
    text_sha256: str
    label: str
    probability: float
    top_k: list[dict[str, Any]]
    # disagree: the challenger's answer on the same text {"version", "label", "probability"}; else None
    challenger: dict[str, Any] | None = None


@dataclass
class Context:
    """What a strategy may need beyond the pool: the texts' vectors and the training centroids
    (both [n, D] float32, fetched by the caller only for strategies that ask for them)."""

    score: str = "margin"
    seed: int | None = None
    vectors: np.ndarray | None = None
    centroids: np.ndarray | None = None
    pending: np.ndarray | None = None  # new_label: vectors of feedback texts whose label the version lacks
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    pool_order: str  # "recent" | "least_confident" | "random": how the DB picks the pool
    rank: Callable[[list[Candidate], int, Context], list[tuple[int, float | None]]]  # (pool index, score)
    needs_vectors: bool = False
    needs_centroids: bool = False
    score_name: str | None = None
    takes_score: bool = False  # ranks by Context.score (margin or entropy); score_name is then that score
    disagreeing: bool = False  # the pool holds only texts a challenger answered differently
    needs_pending: bool = False  # ranks against the feedback of pending new labels (Context.pending)
    fallback: str | None = None  # the strategy used instead when there is nothing to rank against


# -- scores ------------------------------------------------------------------------------------------
def margin(top_k: Sequence[dict]) -> float:
    """Top-1 minus top-2 probability (1.0 when the head logged one label only)."""
    probs = sorted((float(k["probability"]) for k in top_k), reverse=True)
    return probs[0] - probs[1] if len(probs) > 1 else 1.0


def entropy(top_k: Sequence[dict]) -> float:
    """Entropy (nats) of the logged top-k, the probability mass outside it counted as one more outcome:
    a lower bound of the full distribution's entropy that orders texts the same way in practice."""
    probs = [max(0.0, float(k["probability"])) for k in top_k]
    rest = max(0.0, 1.0 - sum(probs))
    return float(-sum(p * math.log(p) for p in [*probs, rest] if p > 0))


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def nearest_similarity(vectors: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Per row of ``vectors``: the cosine similarity to its most similar row of ``references``."""
    return (unit(vectors) @ unit(references).T).max(axis=1)


def farthest_first(vectors: np.ndarray, n: int, centers: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Greedy k-center on cosine distance: each pick is the point farthest from every center chosen so far
    (the training centroids, when given, count as chosen). Returns (index, distance when picked)."""
    x = unit(vectors)
    if len(x) == 0:
        return []
    if centers is not None and len(centers):
        nearest = 1.0 - nearest_similarity(x, centers)
    else:  # no reference: start from the point farthest from the mean direction
        nearest = 1.0 - x @ unit(x.mean(axis=0, keepdims=True))[0]
    picks: list[tuple[int, float]] = []
    for _ in range(min(n, len(x))):
        i = int(np.argmax(nearest))
        if nearest[i] < 0:  # every point already picked
            break
        picks.append((i, float(nearest[i])))
        nearest = np.minimum(nearest, 1.0 - x @ x[i])
        nearest[i] = -1.0
    return picks


def weighted_kmeans(x: np.ndarray, weights: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means on unit rows ``x`` with row weights: k-means++ seeding (weighted), then Lloyd
    steps. Returns each row's cluster (0..k-1). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    centers = [x[rng.choice(len(x), p=weights / weights.sum())]]
    nearest = 1.0 - x @ centers[0]
    for _ in range(1, k):
        d2 = weights * np.maximum(nearest, 0.0) ** 2
        i = int(rng.choice(len(x), p=d2 / d2.sum())) if d2.sum() > 0 else int(np.argmax(weights))
        centers.append(x[i])
        nearest = np.minimum(nearest, 1.0 - x @ x[i])
    c = np.stack(centers)
    assign = np.argmax(x @ c.T, axis=1)
    for _ in range(KMEANS_ITERATIONS):
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x * weights[:, None])
        empty = ~sums.any(axis=1)
        c = np.where(empty[:, None], c, unit(sums))  # an emptied cluster keeps its centre
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    return assign


def _rank_clustered(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    margins = np.array([margin(c.top_k) for c in pool], np.float64)
    top = np.argsort(margins, kind="stable")[:CLUSTER_PREFILTER * n]
    if len(top) <= n:
        return [(int(i), float(margins[i])) for i in top]
    x = unit(ctx.vectors[top])
    assign = weighted_kmeans(x, 1.0 - margins[top] + 1e-6, n, seed=ctx.seed or 0)
    picks = []
    for cluster in np.unique(assign):
        members = np.flatnonzero(assign == cluster)
        centre = unit(x[members].mean(axis=0, keepdims=True))[0]
        picks.append(int(top[members[int(np.argmax(x[members] @ centre))]]))
    return sorted(((i, float(margins[i])) for i in picks), key=lambda t: t[1])


def _rank_uncertain(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    if ctx.score == "entropy":
        scored = sorted(((i, entropy(c.top_k)) for i, c in enumerate(pool)), key=lambda t: -t[1])
    else:
        scored = sorted(((i, margin(c.top_k)) for i, c in enumerate(pool)), key=lambda t: t[1])
    return scored[:n]


def _rank_balanced(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    # Round robin over the labels the head answered, the least confident of each first: a batch of pure margin
    # is mostly one or two confusable pairs of frequent classes; this spreads it over every class the head
    # hesitates in (the review loop, BENCHMARKS.md: level with or ahead of `uncertain` in the real loop, within
    # half a point of it in the 8-seed replica).
    ranked = _rank_uncertain(pool, len(pool), ctx)
    by_label: dict[str, list[tuple[int, float | None]]] = defaultdict(list)
    for i, score in ranked:
        by_label[pool[i].label].append((i, score))
    queues = list(by_label.values())  # insertion order: the label of the most uncertain text first
    picks: list[tuple[int, float | None]] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if depth < len(queue) and len(picks) < n:
                picks.append(queue[depth])
        if len(picks) >= n:
            break
    return picks


def _rank_ood(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    similarity = nearest_similarity(ctx.vectors, ctx.centroids)
    order = np.argsort(similarity, kind="stable")[:n]
    return [(int(i), float(similarity[i])) for i in order]


def _rank_diverse(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    return farthest_first(ctx.vectors, n, ctx.centroids)


def _rank_new_label(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    similarity = nearest_similarity(ctx.vectors, ctx.pending)
    order = np.argsort(-similarity, kind="stable")[:n]
    return [(int(i), float(similarity[i])) for i in order]


def _rank_random(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    # The database already drew the pool at random; a seed makes the draw reproducible here instead.
    if ctx.seed is None:
        return [(i, None) for i in range(min(n, len(pool)))]
    order = np.random.default_rng(ctx.seed).permutation(len(pool))[:n]
    return [(int(i), None) for i in order]


def _rank_disagree(pool: list[Candidate], n: int, ctx: Context) -> list[tuple[int, float | None]]:
    # The challenger most sure of its different answer first: where one of the two is most likely wrong.
    scored = sorted(((i, float(c.challenger["probability"])) for i, c in enumerate(pool)), key=lambda t: -t[1])
    return scored[:n]


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("uncertain", "smallest top-2 margin (or highest entropy): where the head hesitates", "least_confident",
             _rank_uncertain, score_name="margin", takes_score=True),
    Strategy("balanced", "the least confident texts of each answered label in turn: uncertainty spread over every "
             "class, not one confusable pair", "least_confident", _rank_balanced, score_name="margin",
             takes_score=True),
    Strategy("ood", "least similar to every training centroid: traffic unlike the training data", "recent",
             _rank_ood, needs_vectors=True, needs_centroids=True, score_name="centroid_similarity"),
    Strategy("diverse", "farthest-first over the embeddings: a batch that covers the traffic", "recent",
             _rank_diverse, needs_vectors=True, needs_centroids=True, score_name="distance"),
    Strategy("clustered", "the most uncertain texts grouped by k-means on their embeddings, one per group: "
             "informative without near-copies", "least_confident", _rank_clustered, needs_vectors=True,
             score_name="margin"),
    Strategy("new_label", "most like the feedback given with a label the model lacks yet: the examples a new class "
             "needs (none pending: as uncertain)", "recent", _rank_new_label, needs_vectors=True, needs_centroids=True,
             score_name="pending_similarity", needs_pending=True, fallback="uncertain"),
    Strategy("random", "a uniform sample: the control slice live accuracy is estimated from", "random",
             _rank_random),
    Strategy("disagree", "a challenger's shadow answer differs from the champion's: one of them is wrong", "recent",
             _rank_disagree, score_name="challenger_probability", disagreeing=True),
]}


# -- the pool ----------------------------------------------------------------------------------------
def _labelled_texts(head: str) -> sa.Select:
    p2 = predictions.alias("labelled")
    return (sa.select(p2.c.text_sha256)
            .select_from(feedback.join(p2, feedback.c.prediction_id == p2.c.id))
            .where(feedback.c.head == head))


def pending_texts(engine: sa.Engine, head: str, known_labels: Sequence[str], limit: int = PENDING_LIMIT) -> list[str]:
    """The newest ``limit`` distinct texts given feedback with a label not in ``known_labels`` (the served
    version's): the examples of pending new classes (redacted texts have none to compare with)."""
    f, p = feedback, predictions
    query = (sa.select(p.c.text, p.c.text_escaped, p.c.text_sha256)
             .select_from(f.join(p, f.c.prediction_id == p.c.id))
             .where(f.c.head == head, f.c.label.not_in(list(known_labels)), p.c.text.is_not(None))
             .order_by(f.c.ts.desc(), f.c.id).limit(4 * limit))
    texts: dict[str, str] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            texts.setdefault(row.text_sha256, unescape_text(row.text, row.text_escaped))
            if len(texts) == limit:
                break
    return list(texts.values())


def candidate_pool(engine: sa.Engine, head: str, *, order: str, limit: int, since: datetime | None = None,
                   until: datetime | None = None, disagreeing: bool = False,
                   rank_by_newest: bool = True) -> list[Candidate]:
    """Up to ``limit`` distinct unlabelled texts of ``head`` (one row each, the first in ``order``).
    ``disagreeing``: only texts a challenger's shadow row answered with another label (joined, so a
    text two challengers disagree on comes once, with the first challenger in the order).
    ``rank_by_newest`` (least_confident): each text ranked by its newest answer; False keeps the row that
    found it (scripts/bench/review_pool.py times both)."""
    p, f = predictions, feedback
    index = sa.func.coalesce(p.c.text_index, 0)
    # Already labelled: feedback names the row itself (feedback.prediction_id, whatever id it was named by)
    labelled_rows = sa.select(f.c.prediction_id).where(f.c.head == head)
    conditions = [p.c.head == head, served_only(), p.c.issued_id.is_not(None), p.c.text.is_not(None),
                  p.c.id.not_in(labelled_rows), p.c.text_sha256.not_in(_labelled_texts(head))]
    if since is not None:
        conditions.append(p.c.ts >= utc(since))
    if until is not None:
        conditions.append(p.c.ts < utc(until))
    ordering = {"recent": [p.c.ts.desc(), p.c.id], "least_confident": [p.c.probability, p.c.ts.desc(), p.c.id],
                "random": [sa.func.random()]}[order]
    columns = [p.c.id, p.c.issued_id, index.label("idx"), p.c.ts, p.c.head_version, p.c.text, p.c.text_escaped,
               p.c.text_sha256, p.c.label, p.c.probability, p.c.top_k]
    source: sa.FromClause = p
    if disagreeing:
        s = predictions.alias("shadow_row")
        source = p.join(s, sa.and_(s.c.head == p.c.head, s.c.request_id == p.c.request_id,
                                   sa.func.coalesce(s.c.text_index, 0) == index, s.c.shadow == sa.true(),
                                   s.c.label != p.c.label))
        columns += [s.c.head_version.label("c_version"), s.c.label.label("c_label"),
                    s.c.probability.label("c_probability")]
        ordering = [*ordering, s.c.probability.desc(), s.c.id]
    query = sa.select(*columns).select_from(source).where(*conditions).order_by(*ordering)
    seen: set[str] = set()
    pool: list[Candidate] = []

    def candidate(row) -> Candidate:
        challenger = ({"version": row.c_version, "label": row.c_label,
                       "probability": float(row.c_probability)} if disagreeing else None)
        return Candidate(row.id, row.issued_id, int(row.idx), utc(row.ts), row.head_version,
                         unescape_text(row.text, row.text_escaped), row.text_sha256, row.label,
                         float(row.probability), list(row.top_k), challenger)

    # Duplicates are dropped here, so read in pages until the pool is full or the rows run out.
    page, offset = max(limit, 100), 0
    with engine.connect() as conn:
        while len(pool) < limit:
            rows = conn.execute(query.limit(page).offset(offset)).all()
            for row in rows:
                if row.text_sha256 in seen:
                    continue
                seen.add(row.text_sha256)
                pool.append(candidate(row))
                if len(pool) == limit:
                    break
            if len(rows) < page:
                break
            offset += page
        if order == "least_confident" and not disagreeing and rank_by_newest:
            # A text answered by several versions is found by its least confident answer but ranked by its
            # newest: after a retraining an old version's hesitation says little about the served one's.
            # One IN list for the whole pool where the driver takes that many parameters: each list is one
            # more scan of the head's rows (5000 texts of 300k rows on SQLite: 0.55 s -> 1.0 s with one list,
            # 2.1 s with six).
            newest, hashes, step = {}, [c.text_sha256 for c in pool], _in_list_limit(engine)
            for start in range(0, len(hashes), step):
                chunk = hashes[start:start + step]
                rows = conn.execute(sa.select(*columns).where(*conditions, p.c.text_sha256.in_(chunk))
                                    .order_by(p.c.ts.desc(), p.c.id))
                for row in rows:
                    newest.setdefault(row.text_sha256, row)
            pool = sorted((candidate(newest[c.text_sha256]) if c.text_sha256 in newest else c for c in pool),
                          key=lambda c: c.probability)
    return pool


def _in_list_limit(engine: sa.Engine) -> int:
    """Values one IN (...) list may carry: SQLite before 3.32 allowed 999 bound parameters, later 32,766;
    PostgreSQL 65,535. MAX_POOL fits the later ones."""
    if engine.dialect.name == "sqlite" and engine.dialect.dbapi.sqlite_version_info < (3, 32, 0):
        return 900
    return MAX_POOL


def select(strategy: Strategy, pool: list[Candidate], n: int, ctx: Context) -> list[tuple[Candidate, float | None]]:
    if not pool:
        return []
    return [(pool[i], score) for i, score in strategy.rank(pool, n, ctx)]


# -- what the report says about reviewed feedback ------------------------------------------------------
def wilson_interval(correct: int, total: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of a proportion (sensible at small counts and at 0 or 1)."""
    if total == 0:
        return None
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def review_summary(engine: sa.Engine, head: str, *, since: datetime, until: datetime,
                   known_labels: Sequence[str] | None = None, min_new_label_examples: int | None = None) -> dict:
    """Feedback split by the strategy that picked it, live accuracy from the random slice only, and
    labels given as feedback that the served version does not have (pending new classes).

    ``known_labels``: the served version's labels; None reads them off the logged predictions."""
    f, p = feedback, predictions
    strategy = sa.func.coalesce(f.c.review_strategy, DIRECT)
    window = sa.and_(f.c.head == head, f.c.prediction_ts >= utc(since), f.c.prediction_ts < utc(until))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(strategy, f.c.label, f.c.predicted_label, sa.func.count())
                            .where(window).group_by(strategy, f.c.label, f.c.predicted_label)).all()
        if known_labels is None:
            known_labels = list(conn.execute(sa.select(p.c.label).where(p.c.head == head, served_only())
                                             .distinct()).scalars())
        pending_rows = conn.execute(sa.select(f.c.label, sa.func.count())
                                    .where(f.c.head == head, f.c.label.not_in(list(known_labels)))
                                    .group_by(f.c.label)).all()
    confusion: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for name, true, predicted, n in rows:
        confusion[name][(true, predicted)] = int(n)
    by_strategy = {name: feedback_metrics(c) for name, c in sorted(confusion.items())}
    control = confusion.get(CONTROL, {})
    n_control = sum(control.values())
    correct = sum(n for (true, pred), n in control.items() if true == pred)
    live = {"source": CONTROL, "count": n_control,
            "accuracy": round(correct / n_control, 6) if n_control else None,
            "ci95": wilson_interval(correct, n_control)}
    pending = {label: int(n) for label, n in sorted(pending_rows, key=lambda r: (-r[1], r[0]))}
    out = {"by_strategy": by_strategy, "live_accuracy": live, "pending_labels": pending}
    if min_new_label_examples is not None:
        out["min_new_label_examples"] = min_new_label_examples
    return out
