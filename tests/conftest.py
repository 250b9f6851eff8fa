"""Shared fixtures. Real parts: the real exported model, real servers on loopback ports.

Tests that need an outside service (PostgreSQL, ../shared/datasets) skip with a reason when it
is missing; with POLYHEAD_REQUIRE_SERVICES=1 (set by .ci/run) such a skip becomes a failure.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest_plugins = ["tests.e2e.embedder.fixtures", "tests.e2e.heads.fixtures"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
POSTGRES_URL = os.environ.get("POLYHEAD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("POLYHEAD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("POLYHEAD_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str):
    if services_required():
        pytest.fail(f"{reason} (POLYHEAD_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL, or a skip (a failure under POLYHEAD_REQUIRE_SERVICES=1)."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        skip_or_fail(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis, or a skip (a failure under POLYHEAD_REQUIRE_SERVICES=1)."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        skip_or_fail(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    return REDIS_URL


@pytest.fixture
def l2_prefix(redis_url):
    """A key prefix of this test alone (the Redis may be shared); its keys are deleted afterwards."""
    import uuid

    import redis

    prefix = f"polyhead-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        skip_or_fail(f"{SHARED_DATASETS} is absent (public datasets live beside the project, not in it)")
    return SHARED_DATASETS
