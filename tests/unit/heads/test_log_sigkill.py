"""Nothing answered is lost: a real head process (its own interpreter, `python -m cli head serve`, over
the in-process fake embedder) answers predictions, is SIGKILLed, restarted on the same spool dir, and
every answered request id is in the database, on SQLite and PostgreSQL.

Twice per database: once with the DB up (the kill lands while the writer holds rows in its batch
window) and once with the DB down (nothing can have been written; only the spool has them).
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import pytest
import sqlalchemy as sa

from polyhead.inference_log.schema import make_engine, predictions
from tests.e2e.heads.fixtures import start_head_process
from tests.unit.conftest import HEAD
from tests.unit.polyhead.inference_log.test_inference_log import backend  # noqa: F401

pytestmark = pytest.mark.timeout(180)

N = 60  # predictions per phase, 3 texts each


def logged_request_ids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(predictions.c.request_id).where(predictions.c.head == HEAD)).scalars())
    finally:
        engine.dispose()


async def answer(url: str, tag: str, path: str) -> list[str]:
    """N concurrent predictions; the request ids of those answered 200."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(i: int) -> str | None:
            rid = f"{tag}-{i}-{uuid.uuid4().hex[:6]}"
            r = await client.post(path, json={"texts": ["refund my invoice", "parcel lost", f"n {i}"]},
                                  headers={"x-request-id": rid})
            return rid if r.status_code == 200 else None

        return [rid for rid in await asyncio.gather(*(one(i) for i in range(N))) if rid]


@pytest.mark.parametrize("packed", [False, True], ids=["one-head-process", "packed-process"])
async def test_sigkill_after_answering_loses_no_prediction(backend, trained_head, embedder, tmp_path, packed):  # noqa: F811
    spool = tmp_path / "spool"
    # packed: the same head served by a pool process (--heads), at /heads/<name>/predict
    config = [] if packed else trained_head.config
    extra = ("--heads", HEAD, "--heads-dir", str(trained_head.config.parent)) if packed else ()
    path = f"/heads/{HEAD}/predict" if packed else "/predict"

    def start():
        return start_head_process(config, trained_head.models_dir, embedder.target, db_url=backend.flaky_url,
                                  spool_dir=spool, log=tmp_path / "head.log", extra_args=extra)

    answered: list[str] = []
    for phase in ("db-up", "db-down"):
        proc, url = await asyncio.to_thread(start)
        try:
            if phase == "db-down":
                backend.down()
            rids = await answer(url, phase, path)
            assert len(rids) == N, f"{phase}: only {len(rids)} of {N} answered; log: {(tmp_path / 'head.log').read_text()[-2000:]}"
            proc.send_signal(signal.SIGKILL)  # no shutdown hook, no flush: only what the spool already holds
            await asyncio.to_thread(proc.wait, 10)
            answered += rids
        finally:
            if proc.poll() is None:
                proc.kill()
            if phase == "db-down":
                backend.up()
        if phase == "db-down":
            assert not logged_request_ids(backend.url) >= set(rids)  # the DB really had none of them

    proc, url = await asyncio.to_thread(start)  # the restart replays the spool
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not logged_request_ids(backend.url) >= set(answered):
            assert asyncio.get_running_loop().time() < deadline, \
                f"missing after restart: {len(set(answered) - logged_request_ids(backend.url))} of {len(answered)}"
            await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
    engine = make_engine(backend.url)
    try:
        with engine.connect() as conn:  # each answered text exactly once: the replay duplicated nothing
            rows = conn.execute(sa.select(sa.func.count()).where(predictions.c.head == HEAD,
                                                                 predictions.c.request_id.in_(answered))).scalar()
    finally:
        engine.dispose()
    assert rows == 3 * len(answered)
