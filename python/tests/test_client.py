"""The resilient subscriber: backoff, retry policy, resume, de-duplication,
watchdog and clean shutdown.

Fault cases run against a small scripted EventService (each Subscribe call
plays the next script); resume across a restart runs against the real server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import socket
import sys
import time
import uuid
from typing import Optional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the polystream package

import grpc
import pytest

from polystream.client import (
    KEEPALIVE_OPTIONS,
    Backoff,
    ResilientSubscriber,
    StreamEndedError,
    StreamSilentError,
    create_channel,
)
from polystream.events.v1 import events_pb2, events_pb2_grpc

# ---------------------------------------------------------------- scripted server


@dataclasses.dataclass
class Script:
    """What one Subscribe call does: send `events` (a float = sleep that
    long), then abort with `code`, or stay silent, or end with OK."""

    events: list = dataclasses.field(default_factory=list)
    code: Optional[grpc.StatusCode] = None
    silent: bool = False


class ScriptedEventService(events_pb2_grpc.EventServiceServicer):
    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = list(scripts)
        self.requests: list[events_pb2.SubscribeRequest] = []
        self.active = 0  # open Subscribe streams

    async def Subscribe(self, request, context):
        self.requests.append(request)
        script = self.scripts.pop(0) if self.scripts else Script(silent=True)
        self.active += 1
        try:
            for item in script.events:
                if isinstance(item, (int, float)):
                    await asyncio.sleep(item)
                else:
                    yield item
            if script.code is not None:
                await context.abort(script.code, f"scripted {script.code.name}")
            if script.silent:
                await asyncio.Event().wait()
        finally:
            self.active -= 1


def event(n: int) -> events_pb2.Event:
    return events_pb2.Event(id=f"id-{n}", type="test.event", sequence=n, data=f'{{"n":{n}}}')


def heartbeat(n: int = 1) -> events_pb2.Event:
    beat = events_pb2.Event(type="heartbeat")
    beat.payload.Pack(events_pb2.HeartbeatEvent(sequence=n))
    return beat


@pytest.fixture
async def scripted():
    """Starts a scripted server: `service, address = await scripted(scripts)`."""
    servers = []

    async def start(scripts: list[Script]):
        service = ScriptedEventService(scripts)
        # the servers' keepalive enforcement (docs/contract.md), or our
        # client's 10 s pings earn a GOAWAY too_many_pings
        server = grpc.aio.server(
            options=[
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        events_pb2_grpc.add_EventServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return service, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


def fast_backoff(**overrides) -> Backoff:
    return Backoff(**{"base": 0.01, "max": 0.05, "jitter": 0.0, **overrides})


async def collect(subscriber: ResilientSubscriber, n: int, timeout: float = 10) -> list[events_pb2.Event]:
    got = []

    async def take():
        async for ev in subscriber:
            got.append(ev)
            if len(got) == n:
                return

    await asyncio.wait_for(take(), timeout)
    return got


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_up_to_max_and_jitter_stays_in_bounds():
    backoff = Backoff(base=1.0, max=10.0, multiplier=2.0, jitter=0.2)
    for attempt, raw in enumerate([1, 2, 4, 8, 10, 10], start=1):
        assert backoff.delay(attempt, rand=lambda: 0.0) == pytest.approx(raw * 0.8)
        assert backoff.delay(attempt, rand=lambda: 0.5) == pytest.approx(raw)
        assert backoff.delay(attempt, rand=lambda: 0.999999) == pytest.approx(raw * 1.2, rel=1e-5)
        samples = [backoff.delay(attempt) for _ in range(200)]
        assert all(raw * 0.8 <= s <= raw * 1.2 for s in samples)
        assert len(set(samples)) > 1, "jitter must vary the delay"
    # a very long outage neither overflows nor exceeds the cap
    assert backoff.delay(100_000) <= 12.0


def test_backoff_retry_budget():
    assert Backoff(max_retries=-1).allows(10**9)
    assert not Backoff(max_retries=0).allows(1)
    assert Backoff(max_retries=3).allows(3) and not Backoff(max_retries=3).allows(4)


@pytest.mark.parametrize(
    "kwargs", [dict(base=0), dict(base=2, max=1), dict(multiplier=0.5), dict(jitter=1.5), dict(max_retries=-2)]
)
def test_backoff_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_keepalive_options_match_the_contract():
    options = dict(KEEPALIVE_OPTIONS)
    assert options["grpc.keepalive_time_ms"] == 10_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.keepalive_permit_without_calls"] == 1


# ---------------------------------------------------------------- retry policy


async def test_transport_failure_is_retried_with_backoff_then_given_up():
    disconnects = []
    backoff = Backoff(base=0.02, max=0.1, multiplier=2.0, max_retries=3, jitter=0.5)
    subscriber = ResilientSubscriber(
        f"127.0.0.1:{free_port()}",
        "c1",
        backoff=backoff,
        on_disconnect=lambda error, attempt, delay: disconnects.append((error, attempt, delay)),
    )
    async with subscriber:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(subscriber.run(), 20)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [attempt for _, attempt, _ in disconnects] == [1, 2, 3, 4]
    for _, attempt, delay in disconnects[:3]:
        raw = min(0.1, 0.02 * 2 ** (attempt - 1))
        assert raw * 0.5 <= delay <= raw * 1.5
    assert disconnects[-1][2] is None, "the last report says: no more retries"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED]
)
async def test_retryable_codes_are_retried(scripted, code):
    service, addr = await scripted([Script([event(1)], code=code), Script([event(2)], silent=True)])
    async with ResilientSubscriber(addr, "c1", backoff=fast_backoff()) as subscriber:
        got = await collect(subscriber, 2)
    assert [e.id for e in got] == ["id-1", "id-2"]
    assert len(service.requests) == 2


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
async def test_other_codes_are_not_retried(scripted, code):
    service, addr = await scripted([Script(code=code), Script([event(1)])])
    disconnects = []
    async with ResilientSubscriber(
        addr, "c1", backoff=fast_backoff(), on_disconnect=lambda *args: disconnects.append(args)
    ) as subscriber:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(subscriber, 1)
    assert raised.value.code() == code
    assert len(service.requests) == 1
    assert [(attempt, delay) for _, attempt, delay in disconnects] == [(1, None)]


async def test_stream_ended_by_server_reconnects(scripted):
    service, addr = await scripted([Script([event(1)]), Script([event(2)], silent=True)])
    disconnects = []
    async with ResilientSubscriber(
        addr, "c1", backoff=fast_backoff(), on_disconnect=lambda e, *_: disconnects.append(e)
    ) as subscriber:
        got = await collect(subscriber, 2)
    assert [e.id for e in got] == ["id-1", "id-2"]
    assert isinstance(disconnects[0], StreamEndedError)


async def test_backoff_resets_after_the_server_talks_again(scripted):
    unavailable = grpc.StatusCode.UNAVAILABLE
    service, addr = await scripted(
        [Script(code=unavailable), Script(code=unavailable), Script([event(1)], code=unavailable), Script([event(2)])]
    )
    attempts = []
    async with ResilientSubscriber(
        addr, "c1", backoff=fast_backoff(), on_disconnect=lambda _e, attempt, _d: attempts.append(attempt)
    ) as subscriber:
        await collect(subscriber, 2)
    assert attempts[:3] == [1, 2, 1]


# ---------------------------------------------------------------- resume and duplicates


async def test_resumes_from_last_log_event_and_drops_duplicates(scripted):
    gap = events_pb2.Event(type="polystream.replay_gap", metadata={"requested_id": "x"})
    service, addr = await scripted(
        [
            Script([event(1), event(2), heartbeat(), gap], code=grpc.StatusCode.UNAVAILABLE),
            # the server replays id-2 again: it must not reach the caller twice
            Script([event(2), event(3), heartbeat(2)], silent=True),
        ]
    )
    async with ResilientSubscriber(
        addr, "c1", event_types=["test.*"], channel="ch", last_event_id="id-0", backoff=fast_backoff()
    ) as subscriber:
        got = await collect(subscriber, 3)
        assert subscriber.last_event_id == "id-3"
    assert [e.id for e in got] == ["id-1", "id-2", "id-3"]
    first, second = service.requests
    assert first.last_event_id == "id-0"
    assert second.last_event_id == "id-2", "control events must not move the resume point"
    assert (second.client_id, list(second.event_types), second.channel) == ("c1", ["test.*"], "ch")


async def test_control_events_on_request(scripted):
    service, addr = await scripted([Script([heartbeat(), event(1)], silent=True)])
    async with ResilientSubscriber(addr, "c1", include_control_events=True) as subscriber:
        got = await collect(subscriber, 2)
    assert [e.type for e in got] == ["heartbeat", "test.event"]


# ---------------------------------------------------------------- watchdog


async def test_watchdog_reconnects_a_silent_stream(scripted):
    service, addr = await scripted([Script([event(1)], silent=True), Script([event(2)], silent=True)])
    disconnects = []
    started = time.monotonic()
    async with ResilientSubscriber(
        addr,
        "c1",
        heartbeat_interval=1,
        backoff=fast_backoff(),
        on_disconnect=lambda e, *_: disconnects.append(e),
    ) as subscriber:
        got = await collect(subscriber, 2)
    elapsed = time.monotonic() - started
    assert [e.id for e in got] == ["id-1", "id-2"]
    assert isinstance(disconnects[0], StreamSilentError)
    assert 2.0 <= elapsed < 5.0, "silence limit is twice the heartbeat interval"
    assert service.requests[0].heartbeat_interval == 1
    assert service.requests[1].last_event_id == "id-1"


async def test_heartbeats_keep_the_stream_alive(scripted):
    beats = [item for n in range(1, 7) for item in (0.5, heartbeat(n))]
    service, addr = await scripted([Script([*beats, event(1)], silent=True)])
    async with ResilientSubscriber(addr, "c1", heartbeat_interval=1, backoff=fast_backoff()) as subscriber:
        await collect(subscriber, 1)
    assert len(service.requests) == 1


# ---------------------------------------------------------------- callbacks and shutdown


async def test_callbacks_and_clean_close(scripted):
    service, addr = await scripted([Script([event(1)], code=grpc.StatusCode.UNAVAILABLE), Script([event(2)], silent=True)])
    seen, connects, second = [], [], asyncio.Event()

    async def on_event(ev):  # async callbacks are awaited
        seen.append(ev.id)
        if len(seen) == 2:
            second.set()

    subscriber = ResilientSubscriber(
        addr, "c1", backoff=fast_backoff(), on_event=on_event, on_connect=lambda: connects.append(1)
    )
    before = asyncio.all_tasks()  # the scripted server's own
    runner = asyncio.create_task(subscriber.run())
    await asyncio.wait_for(second.wait(), 10)
    await subscriber.close()
    await asyncio.wait_for(runner, 5)  # ends quietly, no exception
    assert seen == ["id-1", "id-2"] and len(connects) == 2
    await asyncio.sleep(0.1)
    left = asyncio.all_tasks() - before - {runner}
    assert not left, "close must leave no task behind"


async def test_close_wakes_a_subscriber_waiting_to_retry():
    waiting = asyncio.Event()
    subscriber = ResilientSubscriber(
        f"127.0.0.1:{free_port()}",
        "c1",
        backoff=Backoff(base=30, max=60),
        on_disconnect=lambda *_: waiting.set(),
    )
    runner = asyncio.create_task(subscriber.run())
    await asyncio.wait_for(waiting.wait(), 10)
    started = time.monotonic()
    await subscriber.close()
    await asyncio.wait_for(runner, 2)
    assert time.monotonic() - started < 1


async def test_breaking_out_of_the_iterator_cancels_the_call(scripted):
    service, addr = await scripted([Script([event(1), event(2)], silent=True), Script([event(3)], silent=True)])
    channel = create_channel(addr)
    subscriber = ResilientSubscriber(channel, "c1")
    events = subscriber.events()
    async for ev in events:
        break
    await events.aclose()
    for _ in range(50):
        if service.active == 0:
            break
        await asyncio.sleep(0.05)
    assert service.active == 0, "the server must see the stream end"
    await subscriber.close()  # a channel passed in stays open for its owner
    stub = events_pb2_grpc.EventServiceStub(channel)
    call = stub.Subscribe(events_pb2.SubscribeRequest(client_id="c2"))
    assert (await call.read()).id == "id-3"
    call.cancel()
    await channel.close()


# ---------------------------------------------------------------- real server


async def broadcast(addr: str, n: int, prefix: str) -> list[str]:
    async with create_channel(addr) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        ids = []
        for i in range(n):
            response = await stub.Broadcast(
                events_pb2.BroadcastRequest(event=events_pb2.Event(id=f"{prefix}-{i}", type="resume.test"))
            )
            ids.append(response.event_id)
        return ids


async def until_connected(addr: str, client_id: str, timeout: float = 10) -> None:
    async with create_channel(addr) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        deadline = time.monotonic() + timeout
        while not (await stub.GetConnectionStatus(events_pb2.SubscribeRequest(client_id=client_id))).connected:
            assert time.monotonic() < deadline, f"{client_id} never connected"
            await asyncio.sleep(0.05)


async def test_resume_across_server_restart_with_data_dir(start_server, tmp_path):
    server = await start_server(port=0, data_dir=str(tmp_path), shutdown_grace=0.5)
    port = server.port
    addr = f"127.0.0.1:{port}"
    # jitter 0 and a 1.5 s first delay: the restarted server gets events to
    # replay before the subscriber is back
    client_id = f"resume-{uuid.uuid4()}"
    subscriber = ResilientSubscriber(
        addr, client_id, event_types=["resume.*"], backoff=Backoff(base=1.5, max=2, jitter=0)
    )
    received: list[events_pb2.Event] = []
    got = {n: asyncio.Event() for n in (3, 6, 8)}

    async def consume():
        async for ev in subscriber:
            received.append(ev)
            if len(received) in got:
                got[len(received)].set()

    consumer = asyncio.create_task(consume())
    try:
        await until_connected(addr, client_id)  # live events from here on reach it
        before = await broadcast(addr, 3, "before")
        await asyncio.wait_for(got[3].wait(), 10)

        await server.stop()
        server = await start_server(port=port, data_dir=str(tmp_path), shutdown_grace=0.5)
        while_away = await broadcast(addr, 3, "away")
        await asyncio.wait_for(got[6].wait(), 15)
        after = await broadcast(addr, 2, "after")
        await asyncio.wait_for(got[8].wait(), 10)
    finally:
        await subscriber.close()
        await asyncio.wait_for(consumer, 5)
    ids = [ev.id for ev in received]
    assert ids == before + while_away + after
    sequences = [ev.sequence for ev in received]
    assert sequences == sorted(set(sequences)), "no duplicate, in log order"


async def test_real_server_rejection_is_not_retried(start_server):
    server = await start_server(port=0)
    subscriber = ResilientSubscriber(f"127.0.0.1:{server.port}", "", backoff=fast_backoff())
    async with subscriber:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(subscriber.run(), 10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "client_id is required"


async def test_slow_subscriber_cut_off_by_the_server_resumes_without_loss(start_server):
    """The disconnect policy ends a slow stream with RESOURCE_EXHAUSTED; the
    subscriber retries, resumes from its last event and still gets every
    event once, in order."""
    server = await start_server(port=0, queue_size=4, backpressure="disconnect")
    addr = f"127.0.0.1:{server.port}"
    client_id = f"slow-{uuid.uuid4()}"
    codes = []
    # Fixed HTTP/2 windows (no BDP probing) and 32 KiB events: the transport
    # cannot soak up the backlog, so the server's queue really fills.
    channel = create_channel(addr, options=[("grpc.http2.bdp_probe", 0)])
    subscriber = ResilientSubscriber(
        channel,
        client_id,
        event_types=["slow.*"],
        backoff=fast_backoff(),
        on_disconnect=lambda error, *_: codes.append(getattr(error, "code", lambda: None)()),
    )
    received: list[str] = []

    async def consume_slowly():
        async for ev in subscriber:
            received.append(ev.id)
            await asyncio.sleep(0.02)
            if len(received) == 40:
                return

    consumer = asyncio.create_task(consume_slowly())
    try:
        await until_connected(addr, client_id)
        payload = json.dumps({"padding": "x" * 32 * 1024})
        async with create_channel(addr) as publisher:
            stub = events_pb2_grpc.EventServiceStub(publisher)
            published = await asyncio.gather(
                *(
                    stub.Broadcast(events_pb2.BroadcastRequest(event=events_pb2.Event(type="slow.n", data=payload)))
                    for _ in range(40)
                )
            )
        await asyncio.wait_for(consumer, 30)
    finally:
        consumer.cancel()
        await subscriber.close()
        await channel.close()
    assert received == [r.event_id for r in sorted(published, key=lambda r: r.sequence)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, "the server should have cut the slow stream at least once"


async def test_a_cancel_that_lands_as_a_step_completes_is_not_swallowed():
    # Ctrl-C on `polystream subscribe` just as the stream's headers arrived
    # used to be lost: Python 3.11's asyncio.wait_for returns the step's
    # result and drops a cancellation that lands at that moment, and the
    # subscriber read on for ever. The watchdog must let it through.
    subscriber = ResilientSubscriber("127.0.0.1:1", "c1", heartbeat_interval=1)
    try:
        step = asyncio.get_running_loop().create_future()

        async def one_step():
            return await subscriber._within_silence_limit(step)

        task = asyncio.create_task(one_step())
        for _ in range(3):
            await asyncio.sleep(0)  # the task is now waiting on the step
        step.set_result("headers")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await subscriber.close()
