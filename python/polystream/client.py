"""The resilient EventService subscriber (docs/python.md, docs/contract.md).

It keeps one Subscribe stream alive across failures: exponential backoff with
jitter between attempts, retries only for transient failures, resume from the
last log event it delivered, duplicates dropped by id, and a heartbeat
watchdog that reconnects a stream that has gone silent. Use it as an async
iterator or with callbacks (or both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Sequence, TypeVar, Union

import grpc

from polystream.events.v1 import events_pb2, events_pb2_grpc
from polystream.helpers import Deduplicator

# Keepalive every client sends (docs/contract.md): above both servers'
# --keepalive-min-time, so no GOAWAY too_many_pings, and also while idle.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # grpcio stops pinging after 2 pings without data unless told otherwise;
    # a quiet subscription must keep being checked.
    ("grpc.http2.max_pings_without_data", 0),
)

# Failures worth another attempt; everything else is the caller's mistake or
# a final answer and is raised at once.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)

DEFAULT_HEARTBEAT_SECONDS = 30  # what the server uses for heartbeat_interval 0

T = TypeVar("T")
Event = events_pb2.Event
EventCallback = Callable[[Event], Union[None, Awaitable[None]]]
ConnectCallback = Callable[[], Union[None, Awaitable[None]]]
DisconnectCallback = Callable[[BaseException, int, Optional[float]], Union[None, Awaitable[None]]]


def create_channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An insecure grpc.aio channel with the project's keepalive settings."""
    return grpc.aio.insecure_channel(target, options=[*KEEPALIVE_OPTIONS, *options])


class StreamSilentError(Exception):
    """The watchdog gave up on a stream that sent nothing for too long."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no message for {seconds:g}s (twice the heartbeat interval)")
        self.seconds = seconds


class StreamEndedError(Exception):
    """The server ended a subscription with OK; subscriptions are endless, so reconnect."""

    def __init__(self) -> None:
        super().__init__("server ended the stream")


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter.

    The delay before retry n (1, 2, ...) is min(max, base * multiplier**(n-1)),
    scaled by a random factor in [1 - jitter, 1 + jitter]. max_retries counts
    consecutive failed attempts; -1 retries forever, 0 never retries.
    """

    base: float = 0.5
    max: float = 30.0
    multiplier: float = 2.0
    max_retries: int = -1
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base <= 0 or self.max < self.base:
            raise ValueError(f"backoff needs 0 < base <= max, got base={self.base} max={self.max}")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {self.jitter}")
        if self.max_retries < -1:
            raise ValueError(f"max_retries must be >= -1, got {self.max_retries}")

    def allows(self, attempt: int) -> bool:
        return self.max_retries < 0 or attempt <= self.max_retries

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        try:
            raw = min(self.max, self.base * self.multiplier ** (attempt - 1))
        except OverflowError:  # a very long outage: the cap applies
            raw = self.max
        return raw * (1 + self.jitter * (2 * rand() - 1))


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in RETRYABLE_CODES
    # Our own transport-level verdicts: a silent or ended stream.
    return isinstance(error, (StreamSilentError, StreamEndedError))


def is_control_event(event: Event) -> bool:
    """Heartbeats and polystream.* markers are not in the log (sequence 0)."""
    return event.sequence == 0


class ResilientSubscriber:
    """A Subscribe stream that survives server restarts and network trouble.

    Iterate it (`async for event in subscriber`) or pass callbacks and
    `await subscriber.run()`. Only log events are delivered unless
    include_control_events is set. A non-retryable error, or retries
    exhausted, is raised from the iterator / run() as the last grpc error.
    """

    def __init__(
        self,
        target: Union[str, grpc.aio.Channel],
        client_id: str,
        *,
        event_types: Sequence[str] = (),
        channel: str = "",
        last_event_id: str = "",
        heartbeat_interval: int = 0,
        backoff: Backoff = Backoff(),
        include_control_events: bool = False,
        dedup_capacity: int = 10_000,
        on_event: Optional[EventCallback] = None,
        on_connect: Optional[ConnectCallback] = None,
        on_disconnect: Optional[DisconnectCallback] = None,
        rand: Callable[[], float] = random.random,
        retryable: Optional[Callable[[BaseException], bool]] = None,
        watchdog: bool = True,
    ) -> None:
        """retryable decides which failures are retried (default
        is_retryable); watchdog=False waits on a silent stream for ever. Both
        exist for the conformance self-test's deliberately defective driver."""
        if isinstance(target, str):
            self._channel = create_channel(
                target,
                # Keep grpc's own reconnect timer in step with ours, or a
                # retry can fail fast while the channel is still backing off.
                options=[
                    ("grpc.initial_reconnect_backoff_ms", int(backoff.base * 1000)),
                    ("grpc.min_reconnect_backoff_ms", int(backoff.base * 1000)),
                    ("grpc.max_reconnect_backoff_ms", int(backoff.max * 1000)),
                ],
            )
            self._owns_channel = True
        else:
            self._channel = target
            self._owns_channel = False
        self._stub = events_pb2_grpc.EventServiceStub(self._channel)
        self.client_id = client_id
        self.event_types = list(event_types)
        self.channel_name = channel
        self.heartbeat_interval = heartbeat_interval
        self.backoff = backoff
        self.include_control_events = include_control_events
        self._last_event_id = last_event_id
        self._seen: Deduplicator[str] = Deduplicator(dedup_capacity)
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._rand = rand
        self._retryable = retryable or is_retryable
        self._watchdog = watchdog
        self._call: Optional[grpc.aio.UnaryStreamCall] = None
        self._closed = False
        self._close_requested = asyncio.Event()  # wakes a backoff sleep at once

    @property
    def last_event_id(self) -> str:
        """The resume point: the id of the last log event delivered."""
        return self._last_event_id

    @property
    def silence_limit(self) -> float:
        # a negative interval is the server's to reject, not a zero timeout
        interval = self.heartbeat_interval if self.heartbeat_interval > 0 else DEFAULT_HEARTBEAT_SECONDS
        return 2 * interval

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def __aenter__(self) -> "ResilientSubscriber":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self) -> None:
        """Delivers events to the callbacks until close() or a fatal error."""
        async for _ in self.events():
            pass

    async def close(self) -> None:
        """Ends the subscription; a running iterator finishes quietly."""
        self._closed = True
        self._close_requested.set()
        if self._call is not None:
            self._call.cancel()
        if self._owns_channel:
            await self._channel.close()

    async def events(self) -> AsyncIterator[Event]:
        attempt = 0  # consecutive failed attempts
        while not self._closed:
            call = self._stub.Subscribe(self._request())
            self._call = call
            try:
                await self._within_silence_limit(call.wait_for_connection())
                await _invoke(self._on_connect)
                while (event := await self._within_silence_limit(call.read())) is not grpc.aio.EOF:
                    attempt = 0  # the server is talking to us again
                    if is_control_event(event):
                        if self.include_control_events:
                            yield event
                        continue
                    if self._seen.seen(event.id):
                        continue
                    self._last_event_id = event.id
                    await _invoke(self._on_event, event)
                    yield event
                error: BaseException = StreamEndedError()
            except (grpc.aio.AioRpcError, StreamSilentError) as exc:
                error = exc
            except asyncio.CancelledError:
                if self._closed:  # close() cancelled the call under us
                    return
                raise
            finally:
                call.cancel()
                self._call = None
            if self._closed:
                return
            if not self._retryable(error) or not self.backoff.allows(attempt + 1):
                await _invoke(self._on_disconnect, error, attempt + 1, None)
                raise error
            attempt += 1
            delay = self.backoff.delay(attempt, self._rand)
            await _invoke(self._on_disconnect, error, attempt, delay)
            try:
                async with asyncio.timeout(delay):  # not wait_for: see _within_silence_limit
                    await self._close_requested.wait()
            except TimeoutError:
                pass

    def _request(self) -> events_pb2.SubscribeRequest:
        return events_pb2.SubscribeRequest(
            client_id=self.client_id,
            event_types=self.event_types,
            last_event_id=self._last_event_id,
            channel=self.channel_name,
            heartbeat_interval=self.heartbeat_interval,
        )

    async def _within_silence_limit(self, step: Awaitable[T]) -> T:
        """Awaits one step of a call; the watchdog: StreamSilentError after
        too long a wait (time spent in the caller's code does not count)."""
        if not self._watchdog:
            return await step
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
        # cancellation (Ctrl-C, close) that lands just as the step completes,
        # and the subscription would then go on reading for ever.
        try:
            async with asyncio.timeout(self.silence_limit):
                return await step
        except TimeoutError:
            raise StreamSilentError(self.silence_limit) from None


async def _invoke(callback: Optional[Callable[..., Any]], *args: Any) -> None:
    """Calls a sync or async callback."""
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result
