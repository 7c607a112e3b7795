"""Client-side helpers: token-bucket rate limiter, batcher, de-duplicator."""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the polystream package

import pytest

from polystream.helpers import Batcher, Deduplicator, RateLimiter

# ---------------------------------------------------------------- rate limiter


async def test_rate_limiter_allows_a_burst_then_paces():
    limiter = RateLimiter(rate=20, burst=5)
    started = time.monotonic()
    for _ in range(5):
        await limiter.acquire()
    assert time.monotonic() - started < 0.05, "a full bucket lets the burst through at once"
    for _ in range(10):
        await limiter.acquire()
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5, f"10 more tokens at 20/s take ~0.5 s, took {elapsed:.2f}"


async def test_rate_limiter_with_a_fake_clock_refills_up_to_burst():
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token
    assert limiter.try_acquire() and not limiter.try_acquire()
    now[0] += 100  # never more than the burst
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]


async def test_rate_limiter_serves_waiters_in_order():
    limiter = RateLimiter(rate=50, burst=1)
    order = []

    async def worker(n):
        async with limiter:
            order.append(n)

    await asyncio.gather(*(worker(n) for n in range(8)))
    assert order == list(range(8))


async def test_rate_limiter_rejects_impossible_requests():
    with pytest.raises(ValueError):
        RateLimiter(rate=0)
    with pytest.raises(ValueError):
        await RateLimiter(rate=1, burst=2).acquire(3)


# ---------------------------------------------------------------- batcher


async def test_batcher_flushes_by_size():
    batches = []
    batcher = Batcher(batches.append, max_size=3, max_delay=10)
    for n in range(7):
        await batcher.add(n)
    assert batches == [[0, 1, 2], [3, 4, 5]]
    await batcher.close()
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(RuntimeError):
        await batcher.add(8)


async def test_batcher_flushes_by_period():
    batches = []
    flushed = asyncio.Event()

    async def flush(batch):  # async flush functions are awaited
        batches.append((batch, time.monotonic()))
        flushed.set()

    async with Batcher(flush, max_size=100, max_delay=0.2) as batcher:
        started = time.monotonic()
        await batcher.add("a")
        await asyncio.sleep(0.05)
        await batcher.add("b")
        await asyncio.wait_for(flushed.wait(), 2)
        assert [b for b, _ in batches] == [["a", "b"]]
        waited = batches[0][1] - started
        assert 0.18 <= waited < 1.0, "the period runs from the batch's first item"
    assert len(batches) == 1, "nothing left to flush on close"


async def test_batcher_reports_a_failed_timer_flush():
    def flush(batch):
        raise OSError("sink down")

    batcher = Batcher(flush, max_size=10, max_delay=0.05)
    await batcher.add(1)
    await asyncio.sleep(0.2)
    with pytest.raises(OSError, match="sink down"):
        await batcher.add(2)


# ---------------------------------------------------------------- de-duplicator


def test_deduplicator_drops_repeats_and_forgets_the_oldest():
    dedup = Deduplicator(capacity=3)
    assert [dedup.seen(k) for k in "abca"] == [False, False, False, True]
    assert dedup.seen("d") is False  # evicts b, the least recently seen
    assert "b" not in dedup and len(dedup) == 3
    assert dedup.seen("b") is False
    assert dedup.seen("a") is True


def test_deduplicator_never_treats_empty_keys_as_duplicates():
    dedup = Deduplicator(capacity=2)
    assert not dedup.seen("") and not dedup.seen("")
    assert len(dedup) == 0


def test_deduplicator_memory_is_bounded():
    dedup = Deduplicator(capacity=100)
    for n in range(10_000):
        dedup.seen(n + 1)
    assert len(dedup) == 100
