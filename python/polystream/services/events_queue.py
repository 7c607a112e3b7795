"""A subscriber's bounded queue and its backpressure policy (docs/contract.md).

Only log events count against the size. Control items (drop markers,
subscription acknowledgements) ride along in order and never count, so a
marker always fits at the place of the gap.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Callable, Optional, Union

import grpc

from polystream.services.events_store import StoredEvent

DROP_NEWEST, DROP_OLDEST, BLOCK, DISCONNECT = "drop-newest", "drop-oldest", "block", "disconnect"


@dataclasses.dataclass(slots=True)
class DroppedMarker:
    """Stands in for a run of consecutive dropped events."""

    count: int
    first: StoredEvent
    last: StoredEvent

    def absorb(self, event: StoredEvent) -> None:
        self.count += 1
        self.last = event


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionUpdated:
    """Acknowledges new filters; everything queued after it matched them.
    `delivered` resolves once the acknowledgement is sent: the next update
    waits for it, so updates cannot pile up in a stalled queue."""

    channel: str
    event_types: tuple[str, ...]
    delivered: asyncio.Future = dataclasses.field(compare=False, repr=False)


class EndOfStream:
    """Queued by `finish`: everything before it is still delivered."""


END_OF_STREAM = EndOfStream()

QueueItem = Union[StoredEvent, DroppedMarker, SubscriptionUpdated, EndOfStream]


@dataclasses.dataclass(frozen=True, slots=True)
class Closed:
    """Why a queue stopped: `code` None = the stream ends normally (the client went away)."""

    code: Optional[grpc.StatusCode] = None
    details: str = ""


class QueueClosed(Exception):
    def __init__(self, reason: Closed) -> None:
        super().__init__(reason.details)
        self.reason = reason


class SubscriberQueue:
    """One consumer (the stream handler), many producers (publishers)."""

    def __init__(self, capacity: int, policy: str, on_drop: Callable[[int], None] = lambda n: None) -> None:
        self.capacity = capacity
        self.policy = policy
        self._items: collections.deque[QueueItem] = collections.deque()
        self._events = 0  # log events in _items
        self._closed: Optional[Closed] = None
        self._finishing = False  # the client half-closed: queue nothing more, deliver the rest
        self._changed = asyncio.Event()  # set when an item arrives or the queue closes
        self._room: list[asyncio.Future] = []  # blocked publishers (policy block)
        self._on_drop = on_drop

    @property
    def full(self) -> bool:
        return self._events >= self.capacity

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def __len__(self) -> int:
        return self._events

    # --- producer side ---

    def offer(self, event: StoredEvent) -> bool:
        """Queues `event` or applies the policy; True if the event was queued.
        With policy block a full queue returns False and the caller waits with `offer_within`."""
        if self._closed is not None or self._finishing:
            return False
        if not self.full:
            self._append(event)
            return True
        if self.policy == DROP_NEWEST:
            self._drop_newest(event)
            return False
        if self.policy == DROP_OLDEST:
            self._drop_oldest()
            self._append(event)
            return True
        if self.policy == DISCONNECT:
            self.overflow()
        return False

    async def offer_within(self, event: StoredEvent, deadline: float) -> bool:
        """Policy block: waits for room until `deadline` (loop time), then disconnects."""
        loop = asyncio.get_running_loop()
        while self._closed is None and not self._finishing and self.full:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.overflow()
                return False
            waiter = loop.create_future()
            self._room.append(waiter)
            try:
                async with asyncio.timeout(remaining):  # not wait_for: it can swallow the call's cancellation
                    await waiter
            except TimeoutError:
                pass
            finally:
                if waiter in self._room:
                    self._room.remove(waiter)
        return self.offer(event)

    def push_control(self, item: QueueItem) -> None:
        if self._closed is None and not self._finishing:
            self._items.append(item)
            self._changed.set()

    def finish(self) -> None:
        """Ends the stream normally once what is already queued has been delivered."""
        self.push_control(END_OF_STREAM)
        self._finishing = True
        self._wake_publishers()

    def overflow(self) -> None:
        """Ends a slow subscriber's stream; the client resumes from its last event id."""
        self.close(
            Closed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"subscriber queue full ({self.capacity} events); resume from last_event_id",
            )
        )

    def close(self, reason: Closed = Closed()) -> None:
        """Wakes the consumer with `reason` and frees what was queued."""
        if self._closed is not None:
            return
        self._closed = reason
        self._items.clear()
        self._events = 0
        self._changed.set()
        self._wake_publishers()

    def _append(self, event: StoredEvent) -> None:
        self._items.append(event)
        self._events += 1
        self._changed.set()

    def _drop_newest(self, event: StoredEvent) -> None:
        tail = self._items[-1] if self._items else None
        if isinstance(tail, DroppedMarker):
            tail.absorb(event)
        else:
            self._items.append(DroppedMarker(1, event, event))
        self._on_drop(1)

    def _drop_oldest(self) -> None:
        index = next(i for i, item in enumerate(self._items) if isinstance(item, StoredEvent))
        oldest = self._items[index]
        del self._items[index]
        self._events -= 1
        before = self._items[index - 1] if index > 0 else None
        if isinstance(before, DroppedMarker) and before.last.sequence < oldest.sequence:
            before.absorb(oldest)  # extends the gap that ends right here
        else:
            self._items.insert(index, DroppedMarker(1, oldest, oldest))
        self._on_drop(1)

    def _wake_publishers(self) -> None:
        for waiter in self._room:
            if not waiter.done():
                waiter.set_result(None)
        self._room.clear()

    # --- consumer side ---

    def take_nowait(self) -> Optional[QueueItem]:
        if self._closed is not None:
            raise QueueClosed(self._closed)
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, StoredEvent):
            self._events -= 1
            self._wake_publishers()
        if not self._items:
            self._changed.clear()
        return item

    async def take(self, timeout: Optional[float]) -> Optional[QueueItem]:
        """The next item, or None after `timeout` seconds without one."""
        item = self.take_nowait()
        if item is None:
            self._changed.clear()
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow the call's cancellation
                    await self._changed.wait()
            except TimeoutError:
                return None
            item = self.take_nowait()
        return item
