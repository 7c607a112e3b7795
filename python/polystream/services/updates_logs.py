"""The server's own log records, kept in a ring and fed to TailLogs streams.

`LogRing` is a logging.Handler: the server attaches it to the "polystream"
logger, so every record of every service lands here. Records are converted at
once into small immutable entries (no references to args or exceptions are
kept), so the ring's memory is bounded by its size.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
from typing import Callable

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


Matcher = Callable[[LogRecordEntry], bool]


class Follower:
    """One following TailLogs stream: a bounded queue fed from any thread.

    A follower that cannot keep up loses the newest records (counted in
    `dropped`) instead of holding up the code that logs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, matches: Matcher, capacity: int) -> None:
        self._loop = loop
        self.matches = matches
        self.queue: asyncio.Queue[LogRecordEntry] = asyncio.Queue(maxsize=capacity)
        self.dropped = 0

    def offer(self, entry: LogRecordEntry) -> None:
        """Hands the entry over on the follower's own loop (records come from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._put, entry)
        except RuntimeError:  # the loop is closed: the stream is gone
            pass

    def _put(self, entry: LogRecordEntry) -> None:
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1


class LogRing(logging.Handler):
    def __init__(self, capacity: int = 1000, follower_capacity: int = 256) -> None:
        super().__init__(level=logging.DEBUG)
        self._entries: collections.deque[LogRecordEntry] = collections.deque(maxlen=capacity)
        self._followers: set[Follower] = set()
        self._follower_capacity = follower_capacity
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
            # Handed over under the lock so every follower sees ring order.
            for follower in self._followers:
                if follower.matches(entry):
                    follower.offer(entry)

    def recent(self, matches: Matcher, lines: int) -> list[LogRecordEntry]:
        with self._ring_lock:
            return self._recent_locked(matches, lines)

    def follow(self, matches: Matcher, lines: int) -> tuple[list[LogRecordEntry], Follower]:
        """The last `lines` matching records and a follower for the ones after them.

        Both are taken under one lock, so nothing is missed or repeated at the seam.
        """
        follower = Follower(asyncio.get_running_loop(), matches, self._follower_capacity)
        with self._ring_lock:
            past = self._recent_locked(matches, lines)
            self._followers.add(follower)
        return past, follower

    def unfollow(self, follower: Follower) -> None:
        with self._ring_lock:
            self._followers.discard(follower)

    def follower_count(self) -> int:
        with self._ring_lock:
            return len(self._followers)

    def _recent_locked(self, matches: Matcher, lines: int) -> list[LogRecordEntry]:
        if lines <= 0:
            return []
        picked: list[LogRecordEntry] = []
        for entry in reversed(self._entries):
            if matches(entry):
                picked.append(entry)
                if len(picked) == lines:
                    break
        picked.reverse()
        return picked
