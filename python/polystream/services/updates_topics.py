"""Topic pub/sub for SubscribeToUpdates / PublishUpdate.

Each subscriber owns a bounded queue. Updates have no log to resume from, so
a full queue only ever drops (never blocks the publisher, never disconnects):
with the `drop-oldest` policy the oldest queued update makes room, with every
other policy the new update is refused. Drops are counted per stream.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class TopicUpdate:
    topic: str
    message: str
    metadata: dict[str, str]
    published_at: float  # seconds since the epoch


class TopicSubscriber:
    def __init__(self, client_id: str, topics: frozenset[str], capacity: int, drop_oldest: bool) -> None:
        self.client_id = client_id
        self.topics = topics
        self._capacity = capacity
        self._drop_oldest = drop_oldest
        self._pending: collections.deque[TopicUpdate] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = 0

    def offer(self, update: TopicUpdate) -> bool:
        """Queues the update without waiting; False if it was refused."""
        if len(self._pending) >= self._capacity:
            self.dropped += 1
            if not self._drop_oldest:
                return False
            self._pending.popleft()
        self._pending.append(update)
        self._ready.set()
        return True

    async def next(self) -> TopicUpdate:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()


class TopicHub:
    def __init__(self, queue_size: int, policy: str) -> None:
        self._queue_size = queue_size
        self._drop_oldest = policy == "drop-oldest"
        self._by_topic: dict[str, set[TopicSubscriber]] = collections.defaultdict(set)

    def subscribe(self, client_id: str, topics: list[str]) -> TopicSubscriber:
        subscriber = TopicSubscriber(client_id, frozenset(topics), self._queue_size, self._drop_oldest)
        for topic in subscriber.topics:
            self._by_topic[topic].add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: TopicSubscriber) -> None:
        for topic in subscriber.topics:
            members = self._by_topic.get(topic)
            if members is None:
                continue
            members.discard(subscriber)
            if not members:
                del self._by_topic[topic]

    def publish(self, topic: str, message: str, metadata: dict[str, str]) -> int:
        """Queues the update for every subscriber of the topic; returns how many took it."""
        update = TopicUpdate(topic, message, dict(metadata), time.time())
        return sum(1 for subscriber in self._by_topic.get(topic, ()) if subscriber.offer(update))

    def subscriber_count(self) -> int:
        return len({s for members in self._by_topic.values() for s in members})
