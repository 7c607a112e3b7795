"""The server's own log records, kept in a ring and fed to TailLogs streams.

`LogRing` is a logging.Handler: the server attaches it to the "polystream"
logger, so every record of every service lands here. Records are converted at
once into small immutable entries (no references to args or exceptions are
kept), so the ring's memory is bounded by its size.
Same design as the Go server's LogRing (go/updates/logring.go).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import threading

LEVELS = ("debug", "info", "warn", "error")
_LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}

# Attributes every LogRecord has; anything else came from `extra=` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def level_name(levelno: int) -> str:
    if levelno < logging.INFO:
        return "debug"
    if levelno < logging.WARNING:
        return "info"
    if levelno < logging.ERROR:
        return "warn"
    return "error"


def level_rank(name: str) -> int:
    """Rank of a level name; "" means debug (everything)."""
    return _LEVEL_RANK[name or "debug"]


@dataclasses.dataclass(frozen=True)
class LogRecordEntry:
    created: float  # seconds since the epoch
    level: str
    message: str
    service: str
    fields: dict[str, str]

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self.level]


def entry_from_record(record: logging.LogRecord) -> LogRecordEntry:
    fields = {key: str(value) for key, value in vars(record).items() if key not in _STANDARD_ATTRS}
    if record.exc_info and record.exc_info[1] is not None:
        fields.setdefault("error", repr(record.exc_info[1]))
    return LogRecordEntry(
        created=record.created,
        level=level_name(record.levelno),
        message=record.getMessage(),
        # polystream.updates -> "updates": the service that logged it.
        service=record.name.rsplit(".", 1)[-1],
        fields=fields,
    )


class LogRing(logging.Handler):
    """The last `capacity` records, numbered 1, 2, 3, ... as they arrive.

    Followers hold no queue of their own: each keeps a cursor (the number of
    the next record it wants) and is woken when records arrive, so a slow
    follower costs no memory and never blocks the code that logs; one that
    falls more than `capacity` records behind skips to the oldest retained.
    """

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__(level=logging.DEBUG)
        self._entries: collections.deque[LogRecordEntry] = collections.deque(maxlen=capacity)
        self._next = 1  # number of the next record
        self._wakers: set[Waker] = set()
        # A plain lock: records arrive from the event loop and from worker threads.
        self._ring_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = entry_from_record(record)
        except Exception:  # a broken record must never break the code that logs
            self.handleError(record)
            return
        with self._ring_lock:
            self._entries.append(entry)
            self._next += 1
            wakers = list(self._wakers)
        for waker in wakers:
            waker.wake()

    def since(self, cursor: int) -> tuple[list[LogRecordEntry], int]:
        """Retained records numbered >= cursor (oldest first) and the cursor to ask with next."""
        with self._ring_lock:
            oldest = self._next - len(self._entries)
            skip = max(0, cursor - oldest)
            return list(itertools.islice(self._entries, skip, None)), self._next

    def add_waker(self, waker: Waker) -> None:
        with self._ring_lock:
            self._wakers.add(waker)

    def remove_waker(self, waker: Waker) -> None:
        with self._ring_lock:
            self._wakers.discard(waker)

    def follower_count(self) -> int:
        with self._ring_lock:
            return len(self._wakers)


class Waker:
    """Wakes one following stream on its own event loop, from any thread.

    At most one wake-up is in flight: records logged before it runs are read
    by the same wake-up, so a burst of records costs one loop callback.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self._scheduled = False

    def wake(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._set)
        except RuntimeError:  # the loop is closed: the stream is gone
            pass

    def _set(self) -> None:
        self._scheduled = False
        self.event.set()
