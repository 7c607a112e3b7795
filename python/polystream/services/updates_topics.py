"""Topic pub/sub for SubscribeToUpdates / PublishUpdate.

Each subscriber owns a bounded queue (--queue-size). Updates have no log to
resume from, so whatever the events' --backpressure policy, a full queue
refuses the new update (counted per stream) rather than blocking the
publisher or the other subscribers; Go does the same (go/updates/topics.go).
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
    def __init__(self, topics: frozenset[str], capacity: int) -> None:
        self.topics = topics
        self._capacity = capacity
        self._pending: collections.deque[TopicUpdate] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = 0

    def offer(self, update: TopicUpdate) -> bool:
        """Queues the update without waiting; False if it was refused."""
        if len(self._pending) >= self._capacity:
            self.dropped += 1
            return False
        self._pending.append(update)
        self._ready.set()
        return True

    async def next(self) -> TopicUpdate:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()


class TopicHub:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._by_topic: dict[str, set[TopicSubscriber]] = collections.defaultdict(set)

    def subscribe(self, topics: frozenset[str]) -> TopicSubscriber:
        subscriber = TopicSubscriber(topics, self._queue_size)
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
