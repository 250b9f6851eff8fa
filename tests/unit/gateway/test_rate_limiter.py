"""The gateway's rate limiter: token buckets per caller, bounded however many callers appear."""

from __future__ import annotations

import tracemalloc

import pytest

from gateway.auth import RateLimiter
from polyhead.errors import OverloadedError


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_429_with_retry_after_then_refill():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("key-a")
    with pytest.raises(OverloadedError) as err:
        limiter.take("key-a")
    assert err.value.retry_after_s == pytest.approx(0.5) and "key-a" in err.value.message
    limiter.take("key-b")  # callers do not share a bucket
    clock.now += 0.5
    limiter.take("key-a")  # one token back after 1/rate seconds
    with pytest.raises(OverloadedError):
        limiter.take("key-a")


def test_many_distinct_callers_cannot_grow_memory_past_the_bound():
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=5, max_callers=1_000, clock=clock)
    tracemalloc.start()
    for i in range(20_000):  # e.g. one request from each of 20k spoofed client IPs, all at once
        limiter.take(f"ip:10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        if i == 1_999:
            at_2k, _ = tracemalloc.get_traced_memory()
    at_20k, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(limiter) == 1_000
    assert at_20k < at_2k * 1.2  # flat after the bound is reached, not 10x


def test_an_idle_caller_s_bucket_expires_and_that_changes_nothing():
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    limiter.take("idle")
    limiter.take("idle")
    with pytest.raises(OverloadedError):
        limiter.take("idle")
    clock.now += limiter.refill_s + 0.01  # long enough to refill completely
    limiter.take("someone-else")  # any write lets the cache drop expired buckets
    assert len(limiter) == 1
    limiter.take("idle")  # a fresh bucket: exactly what the refilled one would have allowed (burst=2)
    limiter.take("idle")
    with pytest.raises(OverloadedError):
        limiter.take("idle")


def test_the_slowest_rate_decides_when_a_bucket_is_full_again():
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=4, slowest_rate=0.5, clock=clock)
    assert limiter.refill_s == pytest.approx(8.0)
    for _ in range(4):
        limiter.take("slow-key", rate=0.5)
    clock.now += 4.0  # 2 tokens back at 0.5/s; the bucket must still be there (not reset to a full burst)
    limiter.take("slow-key", rate=0.5)
    limiter.take("slow-key", rate=0.5)
    with pytest.raises(OverloadedError):
        limiter.take("slow-key", rate=0.5)
