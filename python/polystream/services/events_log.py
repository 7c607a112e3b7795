"""The event log and its subscribers: publish -> log (sequence, retention,
store) -> each matching subscriber's bounded queue.

Everything that must be atomic (appending, snapshotting subscribers,
registering a subscriber against the log's upper bound) happens between two
awaits, so the event loop itself is the lock. One writer task appends, so
events are stored and delivered in sequence order, and concurrent publishes
share one store transaction.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import time
import uuid
from typing import Optional

from polystream.services.events_filter import TypeFilter
from polystream.services.events_queue import BLOCK, Closed, SubscriberQueue, SubscriptionUpdated
from polystream.services.events_store import SqliteEventStore, StoredEvent

FORGOTTEN_CLIENTS = 10_000  # stats kept for clients without open streams


class LogClosed(Exception):
    pass


@dataclasses.dataclass(slots=True)
class ClientStats:
    events_received: int = 0
    events_dropped: int = 0
    open_streams: dict = dataclasses.field(default_factory=dict)  # stream id -> connected_at (ns)


@dataclasses.dataclass(slots=True)
class Draft:
    """What a publisher supplies; the log adds sequence, id (if absent) and timestamp."""

    id: str
    type: str
    channels: tuple[str, ...]
    data: str
    payload: Optional[bytes]
    metadata: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    recipients: int
    event_id: str
    sequence: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayGap:
    requested_id: str
    oldest_retained_id: str


class Subscriber:
    _ids = itertools.count(1)

    def __init__(self, client_id: str, channel: str, type_filter: TypeFilter, queue: SubscriberQueue) -> None:
        self.stream_id = next(self._ids)
        self.client_id = client_id
        self.channel = channel
        self.type_filter = type_filter
        self.queue = queue

    def wants(self, event: StoredEvent) -> bool:
        return event.reaches(self.channel) and self.type_filter.matches(event.type)


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    subscriber: Subscriber
    replay: list[StoredEvent]  # already filtered for the subscriber
    gap: Optional[ReplayGap]


class EventLog:
    def __init__(
        self,
        history_size: int,
        queue_size: int,
        policy: str,
        publish_timeout: float,
        store: Optional[SqliteEventStore] = None,
        idempotent_ids: bool = True,  # False only under the duplicate-broadcast self-test fault
    ) -> None:
        self._history_size = history_size
        self._queue_size = queue_size
        self._policy = policy
        self._publish_timeout = publish_timeout
        self._store = store
        self._idempotent_ids = idempotent_ids
        self._window: collections.deque[StoredEvent] = collections.deque()
        self._by_id: dict[str, StoredEvent] = {}
        self._next_sequence = 1
        self._subscribers: dict[int, Subscriber] = {}
        self._clients: dict[str, ClientStats] = {}
        self._idle_clients: collections.OrderedDict[str, ClientStats] = collections.OrderedDict()
        self._pending: list[tuple[Draft, asyncio.Future]] = []  # accepted, not yet written
        self._has_pending = asyncio.Event()
        self._writer: Optional[asyncio.Task] = None
        self._closed = False

    async def open(self) -> None:
        if self._store is not None:
            for event in await self._store.open():
                self._remember(event)
        self._writer = asyncio.create_task(self._write_batches(), name="events-log-writer")

    async def close(self) -> None:
        self._closed = True
        for subscriber in list(self._subscribers.values()):
            subscriber.queue.close()  # also releases a fan-out waiting for room
        if self._writer is not None:
            self._has_pending.set()
            await self._writer  # finishes what was accepted, then stops
        if self._store is not None:
            await self._store.close()

    # --- publishing ---

    async def publish(self, draft: Draft) -> Published:
        """Appends and delivers one event. The writer task does the work, so a
        publisher that goes away cannot leave an event half-stored or half-delivered."""
        if self._closed:
            raise LogClosed("event log is closed")
        result: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        self._pending.append((draft, result))
        self._has_pending.set()
        return await result

    async def _write_batches(self) -> None:
        """Takes whatever publishers queued meanwhile as one batch: one store
        transaction (group commit), then each event in sequence order."""
        while not (self._closed and not self._pending):
            await self._has_pending.wait()
            self._has_pending.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write(batch)
                except Exception as exc:  # e.g. the disk is full: those publishers get the error
                    for _, result in batch:
                        if not result.done():
                            result.set_exception(exc)

    async def _write(self, batch: list[tuple[Draft, asyncio.Future]]) -> None:
        new: dict[str, StoredEvent] = {}
        planned: list[tuple[asyncio.Future, StoredEvent, bool]] = []
        sequence = self._next_sequence
        for draft, result in batch:
            known = (self._by_id.get(draft.id) or new.get(draft.id)) if draft.id else None
            if known is not None and self._idempotent_ids:  # idempotent retry: nothing appended, nothing delivered
                planned.append((result, known, False))
                continue
            event = StoredEvent(
                sequence=sequence,
                id=draft.id if draft.id and known is None else str(uuid.uuid4()),
                type=draft.type,
                channels=draft.channels,
                timestamp_ns=time.time_ns(),
                data=draft.data,
                payload=draft.payload,
                metadata=draft.metadata,
            )
            sequence += 1
            new[event.id] = event
            planned.append((result, event, True))
        if self._store is not None and new:
            await self._store.append(list(new.values()))
        self._next_sequence = sequence  # stored: these sequences are taken whatever happens next
        for result, event, is_new in planned:
            recipients = 0
            if is_new:
                # From here to the end of the fan-out's first pass nothing
                # awaits: a subscriber registers either before (gets it live)
                # or after (gets it by replay), never both, never neither.
                self._remember(event)
                recipients = await self._fan_out(event)
            if not result.done():
                result.set_result(Published(recipients, event.id, event.sequence))

    def _remember(self, event: StoredEvent) -> None:
        self._window.append(event)
        self._by_id[event.id] = event
        self._next_sequence = event.sequence + 1
        while len(self._window) > self._history_size:
            del self._by_id[self._window.popleft().id]

    async def _fan_out(self, event: StoredEvent) -> int:
        recipients = 0
        waiting: list[SubscriberQueue] = []
        for subscriber in [s for s in self._subscribers.values() if s.wants(event)]:
            queue = subscriber.queue
            if queue.offer(event):
                recipients += 1
            elif queue.policy == BLOCK and not queue.closed:
                waiting.append(queue)
        if waiting:  # everyone with room already has it; now wait for the slow ones together
            deadline = asyncio.get_running_loop().time() + self._publish_timeout
            results = await asyncio.gather(*(queue.offer_within(event, deadline) for queue in waiting))
            recipients += sum(results)
        return recipients

    # --- subscribing ---

    def subscribe(self, client_id: str, channel: str, type_filter: TypeFilter, last_event_id: str) -> Subscription:
        """Registers a subscriber and returns what it must replay first. Atomic: no await."""
        stats = self._stats_for(client_id)

        def count_drops(n: int) -> None:
            stats.events_dropped += n

        subscriber = Subscriber(client_id, channel, type_filter, SubscriberQueue(self._queue_size, self._policy, count_drops))
        replay: list[StoredEvent] = []
        gap: Optional[ReplayGap] = None
        if last_event_id:
            resume_from = self._by_id.get(last_event_id)
            if resume_from is None:
                oldest = self._window[0].id if self._window else ""
                gap = ReplayGap(last_event_id, oldest)
                replay = [e for e in self._window if subscriber.wants(e)]
            else:
                start = resume_from.sequence - self._window[0].sequence + 1  # the window is contiguous
                replay = [e for e in itertools.islice(self._window, start, None) if subscriber.wants(e)]
        self._subscribers[subscriber.stream_id] = subscriber
        stats.open_streams[subscriber.stream_id] = time.time_ns()
        return Subscription(subscriber, replay, gap)

    def update(self, subscriber: Subscriber, channel: str, type_filter: TypeFilter) -> asyncio.Future:
        """Atomically replaces the filters; the acknowledgement marks the switch
        in the queue. Returns a future resolved when the acknowledgement is sent."""
        subscriber.channel = channel
        subscriber.type_filter = type_filter
        delivered = asyncio.get_running_loop().create_future()
        subscriber.queue.push_control(SubscriptionUpdated(channel, type_filter.patterns, delivered))
        return delivered

    def unsubscribe(self, subscriber: Subscriber, keep_counted: bool = False) -> None:
        """Publishers skip `subscriber` from now on. keep_counted (only the
        ignore-cancel self-test fault, events_faults.py) leaves it counted
        as an active stream of its client."""
        if self._subscribers.pop(subscriber.stream_id, None) is None:
            return
        subscriber.queue.close(Closed())
        if keep_counted:
            return
        stats = self._clients.get(subscriber.client_id)
        if stats is None:
            return
        stats.open_streams.pop(subscriber.stream_id, None)
        if not stats.open_streams:  # keep its counters, within a bound
            del self._clients[subscriber.client_id]
            self._idle_clients[subscriber.client_id] = stats
            while len(self._idle_clients) > FORGOTTEN_CLIENTS:
                self._idle_clients.popitem(last=False)

    def count_delivered(self, client_id: str) -> None:
        stats = self._clients.get(client_id)
        if stats is not None:
            stats.events_received += 1

    def status(self, client_id: str) -> tuple[ClientStats, Optional[int]]:
        """The client's counters and the start (ns) of its oldest open stream."""
        stats = self._clients.get(client_id) or self._idle_clients.get(client_id) or ClientStats()
        oldest = min(stats.open_streams.values(), default=None)
        return stats, oldest

    def _stats_for(self, client_id: str) -> ClientStats:
        stats = self._clients.get(client_id)
        if stats is None:
            stats = self._idle_clients.pop(client_id, None) or ClientStats()
            self._clients[client_id] = stats
        return stats

    @property
    def active_streams(self) -> int:
        return len(self._subscribers)
