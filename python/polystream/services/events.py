"""EventService: SSE-style pub/sub over a sequenced, retained (optionally
durable) event log. Rules: SPEC.md and docs/contract.md.

The path of an event is publish -> EventLog (events_log.py) -> each
subscriber's SubscriberQueue (events_queue.py) -> the stream below.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from polystream.config import ServerConfig
from polystream.services import events_faults
from polystream.events.v1 import events_pb2, events_pb2_grpc
from polystream.services.events_filter import PatternError, TypeFilter
from polystream.services.events_log import Draft, EventLog, LogClosed, ReplayGap, Subscriber, Subscription
from polystream.services.events_queue import Closed, DroppedMarker, EndOfStream, QueueClosed, SubscriptionUpdated
from polystream.services.events_store import SqliteEventStore, StoredEvent

DEFAULT_CHANNEL = "default"
DEFAULT_HEARTBEAT_SECONDS = 30


class BadRequest(Exception):
    """INVALID_ARGUMENT with the contract's message."""


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _control(event_type: str, channel: str, metadata: dict[str, str]) -> events_pb2.Event:
    """Control events are not in the log: sequence 0, no id."""
    return events_pb2.Event(type=event_type, timestamp=_now(), metadata=metadata, channel=channel)


def _heartbeat(channel: str, count: int) -> events_pb2.Event:
    """Not part of the log; `count` numbers this stream's heartbeats."""
    event = events_pb2.Event(type="heartbeat", timestamp=_now(), channel=channel)
    event.payload.Pack(events_pb2.HeartbeatEvent(timestamp=event.timestamp, sequence=count))
    return event


def _gap_event(gap: ReplayGap, channel: str) -> events_pb2.Event:
    return _control(
        "polystream.replay_gap",
        channel,
        {"requested_id": gap.requested_id, "oldest_retained_id": gap.oldest_retained_id},
    )


def _dropped_event(marker: DroppedMarker, channel: str, fault: str) -> events_pb2.Event:
    return _control(
        "polystream.dropped",
        channel,
        {
            "count": str(events_faults.dropped_count(fault, marker.count)),  # miscount-drops self-test fault
            "first_dropped_id": marker.first.id,
            "last_dropped_id": marker.last.id,
            "first_dropped_sequence": str(marker.first.sequence),
            "last_dropped_sequence": str(marker.last.sequence),
        },
    )


def _updated_event(update: SubscriptionUpdated) -> events_pb2.Event:
    return _control(
        "polystream.subscription_updated",
        update.channel,
        {"channel": update.channel, "event_types": ",".join(update.event_types)},
    )


def _parse_subscription(request: events_pb2.SubscribeRequest) -> tuple[str, TypeFilter]:
    """Checks a SubscribeRequest in the contract's order; returns (channel, filter)."""
    if not request.client_id:
        raise BadRequest("client_id is required")
    if request.heartbeat_interval < 0:
        raise BadRequest(f"heartbeat_interval must be >= 0, got {request.heartbeat_interval}")
    try:
        type_filter = TypeFilter(request.event_types)
    except PatternError as exc:
        raise BadRequest(str(exc)) from None
    return request.channel or DEFAULT_CHANNEL, type_filter


class EventService(events_pb2_grpc.EventServiceServicer):
    def __init__(self, config: ServerConfig, logger: logging.Logger) -> None:
        self._logger = logger
        self._fault = config.fault  # self-test only (events_faults.py); "" = none
        data_dir = events_faults.store_data_dir(self._fault, config.data_dir)
        store = SqliteEventStore(data_dir, config.history_size) if data_dir else None
        self._log = EventLog(
            config.history_size,
            events_faults.queue_size(self._fault, config.queue_size),  # unbounded-queue self-test fault
            config.backpressure,
            config.publish_timeout,
            store,
            idempotent_ids=events_faults.idempotent_ids(self._fault),  # not under duplicate-broadcast
        )

    def register(self, server: grpc.aio.Server) -> None:
        events_pb2_grpc.add_EventServiceServicer_to_server(self, server)

    async def start(self) -> None:
        if events_faults.active(self._fault):  # at start, so TailLogs has it too
            self._logger.warning("SELF-TEST FAULT ACTIVE: this server is deliberately defective", extra={"fault": self._fault})
        await self._log.open()

    async def close(self) -> None:
        await self._log.close()

    @property
    def active_streams(self) -> int:
        return self._log.active_streams

    # --- RPCs ---

    async def Broadcast(self, request: events_pb2.BroadcastRequest, context: grpc.aio.ServicerContext) -> events_pb2.BroadcastResponse:
        if not request.HasField("event"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event is required")
        event = request.event
        if not event.type:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event.type is required")
        draft = Draft(
            id=event.id,
            type=event.type,
            channels=tuple(sorted({c or DEFAULT_CHANNEL for c in request.target_channels})),
            data=event.data,
            payload=event.payload.SerializeToString() if event.HasField("payload") else None,
            metadata=dict(event.metadata),
        )
        try:
            published = await self._log.publish(draft)
        except LogClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except sqlite3.Error as exc:
            self._logger.error("broadcast failed", extra={"error": str(exc)})
            await context.abort(grpc.StatusCode.INTERNAL, f"event log: {exc}")
        self._logger.debug("published %s seq=%d recipients=%d", published.event_id, published.sequence, published.recipients)
        return events_pb2.BroadcastResponse(
            recipients=published.recipients, event_id=published.event_id, sequence=published.sequence
        )

    async def GetConnectionStatus(self, request: events_pb2.SubscribeRequest, context: grpc.aio.ServicerContext) -> events_pb2.ConnectionStatus:
        if not request.client_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_id is required")
        stats, oldest_ns = self._log.status(request.client_id)
        if oldest_ns is None and events_faults.unknown_client_not_found(self._fault):
            await context.abort(grpc.StatusCode.NOT_FOUND, f'client "{request.client_id}" not found')
        status = events_pb2.ConnectionStatus(
            client_id=request.client_id,
            connected=oldest_ns is not None,
            events_received=stats.events_received,
            events_dropped=stats.events_dropped,
            active_streams=len(stats.open_streams),
        )
        if oldest_ns is not None:
            status.connected_at.FromNanoseconds(oldest_ns)
        return status

    async def Subscribe(self, request: events_pb2.SubscribeRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[events_pb2.Event]:
        try:
            channel, type_filter = _parse_subscription(request)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        subscription = self._log.subscribe(request.client_id, channel, type_filter, request.last_event_id)
        async for event in self._deliver(subscription, request.heartbeat_interval, context):
            yield event

    async def SubscribeMultiple(self, request_iterator: AsyncIterator[events_pb2.SubscribeRequest], context: grpc.aio.ServicerContext) -> AsyncIterator[events_pb2.Event]:
        first = await anext(aiter(request_iterator), None)
        if first is None:  # half-closed without subscribing
            return
        try:
            channel, type_filter = _parse_subscription(first)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        subscription = self._log.subscribe(first.client_id, channel, type_filter, first.last_event_id)
        follower = asyncio.create_task(self._follow_updates(request_iterator, subscription.subscriber))
        try:
            async for event in self._deliver(subscription, first.heartbeat_interval, context):
                yield event
        finally:
            follower.cancel()

    # --- streaming ---

    async def _follow_updates(self, requests: AsyncIterator[events_pb2.SubscribeRequest], subscriber: Subscriber) -> None:
        """Applies later SubscribeMultiple requests; ends the stream at half-close or on a bad one."""
        try:
            async for request in requests:
                channel, type_filter = _parse_subscription(request)  # same checks, same order, as the first
                if request.client_id != subscriber.client_id:
                    raise BadRequest("client_id cannot change within a stream")
                await self._log.update(subscriber, channel, type_filter)  # one update in flight at a time
        except BadRequest as exc:
            subscriber.queue.close(Closed(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception:  # the call itself failed (cancelled by the client, connection lost)
            self._logger.debug("SubscribeMultiple request stream ended abnormally", exc_info=True)
            subscriber.queue.close()
        else:
            subscriber.queue.finish()  # half-close: deliver what is queued, then end

    async def _deliver(self, subscription: Subscription, heartbeat_interval: int, context: grpc.aio.ServicerContext) -> AsyncIterator[events_pb2.Event]:
        """Replay, then live events, with heartbeats and control events, until the queue closes."""
        subscriber = subscription.subscriber
        # The client going away (cancel, deadline, lost connection) frees the
        # subscription at once, even while this generator is parked in a write.
        # (With the ignore-cancel self-test fault, `ignoring` decides instead.)
        ignoring = events_faults.ignore_cancel(self._fault, lambda keep: self._log.unsubscribe(subscriber, keep_counted=keep))
        if ignoring is None:
            context.add_done_callback(lambda _: self._log.unsubscribe(subscriber))
        else:
            context.add_done_callback(lambda ctx: ignoring.call_ended(ctx.code()))
        faults = events_faults.delivery(self._fault)  # None unless a reorder/drop self-test fault is active
        cancelled = False
        client_id = subscriber.client_id
        beats = _Heartbeats(heartbeat_interval or DEFAULT_HEARTBEAT_SECONDS, events_faults.heartbeats(self._fault))
        channel = subscriber.channel  # the channel of what is queued; switches at each acknowledgement
        self._logger.debug("subscribe client=%s channel=%s stream=%d", client_id, channel, subscriber.stream_id)
        try:
            # Headers now, not with the first event: the client learns that it is subscribed.
            await context.send_initial_metadata(())
            if subscription.gap is not None and events_faults.replay_gap(self._fault):  # not under no-replay-gap
                yield _gap_event(subscription.gap, channel)
            # Each log event is counted as it is handed to grpc, as Go counts it once
            # Send has queued it: counting after the yield would miss the last one
            # when the client cancels right after receiving it.
            for stored in subscription.replay:
                for event in faults.pass_(stored) if faults else (stored,):
                    self._log.count_delivered(client_id)
                    yield event.to_proto(channel)
                if beats.due():
                    yield beats.next(channel)
            queue = subscriber.queue
            while True:
                if beats.due():
                    if queue.full:  # a heartbeat never takes a slot from an event
                        beats.skip()
                    else:
                        yield beats.next(channel)
                    continue
                hold = faults.hold_remaining() if faults else None
                if hold == 0:  # reorder fault: a held event had no successor in time
                    self._log.count_delivered(client_id)
                    yield faults.release().to_proto(channel)
                    continue
                try:
                    item = await queue.take(beats.remaining() if hold is None else min(hold, beats.remaining()))
                except QueueClosed as closed:
                    if closed.reason.code is None:
                        return
                    await context.abort(closed.reason.code, closed.reason.details)
                if item is None:
                    continue
                if isinstance(item, StoredEvent):
                    for event in faults.pass_(item) if faults else (item,):
                        self._log.count_delivered(client_id)
                        yield event.to_proto(channel)
                elif isinstance(item, DroppedMarker):
                    yield _dropped_event(item, channel, self._fault)
                elif isinstance(item, SubscriptionUpdated):
                    channel = item.channel
                    yield _updated_event(item)
                    if not item.delivered.done():
                        item.delivered.set_result(None)
                elif isinstance(item, EndOfStream):
                    held = faults.release() if faults else None
                    if held is not None:
                        self._log.count_delivered(client_id)
                        yield held.to_proto(channel)
                    return
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = True  # the client went away, or shutdown interrupted the stream
            raise
        finally:
            if ignoring is None:
                self._log.unsubscribe(subscriber)
            else:
                ignoring.handler_ended(cancelled)
            self._logger.debug("unsubscribe client=%s stream=%d", client_id, subscriber.stream_id)


class _Heartbeats:
    """A stream's heartbeat schedule: one every `interval` seconds; a late one
    is sent once, not caught up. Never due when not `enabled` (the no-heartbeat
    self-test fault): the stream then only wakes every `interval` to look again."""

    def __init__(self, interval: float, enabled: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self._enabled = enabled
        self._next = self._loop.time() + interval
        self._count = 0

    def due(self) -> bool:
        if not self._enabled and self._loop.time() >= self._next:
            self.skip()
        return self._enabled and self._loop.time() >= self._next

    def remaining(self) -> float:
        return max(0.0, self._next - self._loop.time())

    def skip(self) -> None:
        self._next = self._loop.time() + self._interval

    def next(self, channel: str) -> events_pb2.Event:
        self.skip()
        self._count += 1
        return _heartbeat(channel, self._count)
