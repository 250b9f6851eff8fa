"""What ranking each text by its newest answer costs the review queue's pool (``candidate_pool``,
least_confident order): the pool as found against the pool re-ranked by each text's newest answer, on one
head's synthetic log (each text answered about three times, by ten successive versions), alternating rounds.

    .venv/bin/python -m scripts.bench.review_pool --rows 300000 --pools 2000,5000 --rounds 3

The SQLite file is kept (``--db``) so a second run skips the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.review import candidate_pool
from polyhead.inference_log.schema import make_engine, migrate, predictions
from polyhead.inference_log.sink import escape_text
from scripts.bench.common import ROOT

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def load(engine: sa.Engine, rows: int, batch: int = 20_000) -> None:
    with engine.connect() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar()
    rng = random.Random(0)
    pending = []
    for i in range(have, rows):
        p = rng.uniform(0.34, 1.0)
        rec = PredictionRecord.create(request_id=f"r{i}", head="h", head_version=f"v{i * 10 // rows}",
                                      embedder_fingerprint="fp", text=f"text {rng.randrange(rows // 3)} about something",
                                      label="a", probability=p, top_k=[("a", p), ("b", 1 - p)], latency_ms=1.0,
                                      text_index=0, redact=False, shadow=None, issued_id=f"r{i}")
        stored, escaped = escape_text(rec.text)
        pending.append({**dataclasses.asdict(rec), "text": stored, "text_escaped": escaped,
                        "ts": T0 + timedelta(seconds=i)})
        if len(pending) == batch or i == rows - 1:
            with engine.begin() as conn:
                conn.execute(predictions.insert(), pending)
            pending = []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--pools", default="2000,5000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--db", type=Path, default=ROOT / "var" / "review-pool.db")
    args = p.parse_args(argv)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{args.db}")
    migrate(engine)
    load(engine, args.rows)
    print(f"| rows | pool | as found (s, median of {args.rounds}) | ranked by newest answer (s) | ratio |")
    print("|---|---|---|---|---|")
    for pool in (int(x) for x in args.pools.split(",")):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for newest in (False, True):  # alternating, so drift in the machine's load hits both
                started = time.perf_counter()
                candidate_pool(engine, "h", order="least_confident", limit=pool, rank_by_newest=newest)
                times[newest].append(time.perf_counter() - started)
        found, newest = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {args.rows:,} | {pool} | {found:.2f} | {newest:.2f} | {newest / found:.1f}x |")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
