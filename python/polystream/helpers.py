"""Client-side helpers: rate limiting, batching and de-duplication (docs/python.md)."""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from typing import Awaitable, Callable, Generic, Hashable, Optional, TypeVar, Union

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class RateLimiter:
    """An async token bucket: `rate` tokens per second, at most `burst` saved up.

    Waiters are served in arrival order, so a large request is not starved by
    a stream of small ones. Use `await limiter.acquire()` or `async with limiter:`.
    """

    def __init__(self, rate: float, burst: float = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # start full: the first burst goes at once
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def try_acquire(self, tokens: float = 1) -> bool:
        """Takes tokens if there are enough now (and nobody is queued); never waits."""
        if self._lock.locked():
            return False
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    async def acquire(self, tokens: float = 1) -> None:
        if tokens > self.burst:
            raise ValueError(f"cannot acquire {tokens} tokens from a bucket of {self.burst}")
        async with self._lock:
            self._refill()
            while self._tokens < tokens:
                await asyncio.sleep((tokens - self._tokens) / self.rate)
                self._refill()
            self._tokens -= tokens

    async def __aenter__(self) -> "RateLimiter":
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


FlushFunction = Callable[[list[T]], Union[None, Awaitable[None]]]


class Batcher(Generic[T]):
    """Collects items and hands them to `flush` in lists of at most `max_size`.

    A batch is flushed when it is full, when its first item has waited
    `max_delay` seconds, or on flush()/close(). Batches are delivered in order,
    one at a time. An error raised by `flush` from the timer is raised again by
    the next add(), flush() or close().
    """

    def __init__(self, flush: FlushFunction[T], *, max_size: int, max_delay: float) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_delay <= 0:
            raise ValueError(f"max_delay must be > 0, got {max_delay}")
        self._flush = flush
        self.max_size = max_size
        self.max_delay = max_delay
        self._items: list[T] = []
        self._timer: Optional[asyncio.Task[None]] = None
        self._emit_lock = asyncio.Lock()
        self._error: Optional[BaseException] = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    async def add(self, item: T) -> None:
        self._raise_pending_error()
        if self._closed:
            raise RuntimeError("batcher is closed")
        self._items.append(item)
        if len(self._items) >= self.max_size:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after_delay())

    async def flush(self) -> None:
        """Hands over what is pending now."""
        self._cancel_timer()
        while self._items:
            await self._emit()
        self._cancel_timer()
        self._raise_pending_error()

    async def close(self) -> None:
        """Flushes what is left; later add() calls fail."""
        self._closed = True
        await self.flush()

    async def __aenter__(self) -> "Batcher[T]":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _flush_after_delay(self) -> None:
        await asyncio.sleep(self.max_delay)
        self._timer = None  # from here on flush() must not cancel us mid-delivery
        try:
            await self._emit()
        except Exception as exc:  # noqa: BLE001 - handed to the next caller
            self._error = exc

    async def _emit(self) -> None:
        async with self._emit_lock:
            batch = self._items[: self.max_size]
            del self._items[: self.max_size]
            if batch:
                result = self._flush(batch)
                if inspect.isawaitable(result):
                    await result
        if self._items and self._timer is None and not self._closed:
            self._timer = asyncio.create_task(self._flush_after_delay())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class Deduplicator(Generic[K]):
    """Remembers the last `capacity` distinct keys, so memory stays bounded.

    seen(key) answers whether the key was seen before and records it; a key
    that comes back counts as fresh again, and the oldest keys are forgotten.
    Empty keys (falsy) are never recorded: events without ids are not duplicates.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._keys: collections.OrderedDict[K, None] = collections.OrderedDict()

    def seen(self, key: K) -> bool:
        if not key:
            return False
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
