"""The self-test faults (`--fault`, events_faults.py): each one is off by
default, does exactly what conformance/selftest.yaml and the Go server say,
and an unknown one is refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from conftest import eventually, expect_error
from polystream.config import ServerConfig
from polystream.events.v1 import events_pb2 as pb
from polystream.events.v1 import events_pb2_grpc as pb_grpc
from polystream.server import start_server as raw_start_server


async def publish(stub, count: int, channel: str = "f") -> list[int]:
    sequences = []
    for i in range(count):
        response = await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t", data=str(i)), target_channels=[channel]))
        sequences.append(response.sequence)
    return sequences


async def read_log_events(call, count: int, timeout: float = 10.0) -> list[int]:
    """Sequences of the next `count` log events (control events and heartbeats skipped)."""
    sequences: list[int] = []

    async def read() -> None:
        while len(sequences) < count:
            event = await call.read()
            assert event is not grpc.aio.EOF
            if event.sequence:
                sequences.append(event.sequence)

    await asyncio.wait_for(read(), timeout)
    return sequences


async def subscribed(stub, client_id: str, **fields):
    call = stub.Subscribe(pb.SubscribeRequest(client_id=client_id, channel="f", **fields))
    await asyncio.wait_for(call.initial_metadata(), 5)
    return call


async def test_no_fault_by_default_delivers_every_event_in_order(start_server, open_channel):
    server = await start_server(history_size=500)
    assert server.config.fault == ""
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "plain")
    published = await publish(stub, 250)
    assert await read_log_events(call, 250) == published
    call.cancel()


async def test_reorder_swaps_every_100th_event_with_the_next(start_server, open_channel):
    server = await start_server(fault="reorder", history_size=500)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "r")
    published = await publish(stub, 250)
    expected = list(published)
    for i in (99, 199):  # the 100th and the 200th go after their successors
        expected[i], expected[i + 1] = expected[i + 1], expected[i]
    assert await read_log_events(call, 250) == expected
    status = await stub.GetConnectionStatus(pb.SubscribeRequest(client_id="r"))
    assert status.events_received == 250
    call.cancel()


async def test_reorder_counts_replay_too_and_sends_a_held_event_alone_after_a_second(start_server, open_channel):
    server = await start_server(fault="reorder", history_size=500)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    published = await publish(stub, 100)
    # An unknown id replays all 100: the stream's 100th event has no successor.
    call = stub.Subscribe(pb.SubscribeRequest(client_id="held", channel="f", last_event_id="unknown-id"))
    loop = asyncio.get_running_loop()
    assert await read_log_events(call, 99) == published[:99]
    ninety_ninth = loop.time()
    assert await read_log_events(call, 1) == published[99:], "late, not lost"
    assert loop.time() - ninety_ninth >= 0.8
    call.cancel()


async def test_drop_skips_every_100th_event_without_a_marker(start_server, open_channel):
    server = await start_server(fault="drop", history_size=500)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "d")
    published = await publish(stub, 250)
    expected = [s for i, s in enumerate(published, 1) if i % 100]
    got = []
    types = []
    while len(got) < len(expected):
        event = await asyncio.wait_for(call.read(), 10)
        types.append(event.type)
        if event.sequence:
            got.append(event.sequence)
    assert got == expected
    assert "polystream.dropped" not in types
    status = await stub.GetConnectionStatus(pb.SubscribeRequest(client_id="d"))
    assert (status.events_received, status.events_dropped) == (248, 0)
    call.cancel()


@pytest.mark.parametrize("fault", ["", "ignore-cancel"])
async def test_ignore_cancel_keeps_a_cancelled_stream_counted(start_server, open_channel, fault):
    server = await start_server(fault=fault)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))

    async def active(client_id: str) -> int:
        return (await stub.GetConnectionStatus(pb.SubscribeRequest(client_id=client_id))).active_streams

    call = await subscribed(stub, "ic")
    assert await active("ic") == 1
    call.cancel()  # the channel stays open
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Subscribe(pb.SubscribeRequest(client_id="ic-deadline", channel="f"), timeout=0.3).read()
    await eventually(lambda: server.stats()[1] == 0, what="both streams ended")
    await asyncio.sleep(0.3)
    if fault:
        assert (await active("ic"), await active("ic-deadline")) == (1, 1)
        assert server.events.active_streams == 0, "a leaked registration gets no more events"
    else:
        assert (await active("ic"), await active("ic-deadline")) == (0, 0)


@pytest.mark.parametrize("fault", ["", "forget-history"])
async def test_forget_history_ignores_the_data_dir(tmp_path, open_channel, fault):
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), fault=fault)
    server = await raw_start_server(config)
    try:
        stub = pb_grpc.EventServiceStub(open_channel(server.address))
        first = await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t")))
    finally:
        await server.stop()
    server = await raw_start_server(config)
    try:
        stub = pb_grpc.EventServiceStub(open_channel(server.address))
        after = await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t")))
        call = stub.Subscribe(pb.SubscribeRequest(client_id="fh", last_event_id=first.event_id))
        event = await asyncio.wait_for(call.read(), 5)
        call.cancel()
    finally:
        await server.stop()
    if fault:
        assert after.sequence == 1, "nothing kept across the restart"
        assert event.type == "polystream.replay_gap"
        assert not (tmp_path / "events.db").exists()
    else:
        assert after.sequence == first.sequence + 1
        assert event.sequence == after.sequence


@pytest.mark.parametrize("fault", ["slow", "slow-reader=150"])
async def test_an_unknown_fault_is_refused_at_start(fault):
    """slow-reader=<ms> is no fault any more (now --upload-read-delay)."""
    with pytest.raises(ValueError) as error:
        await raw_start_server(ServerConfig(host="127.0.0.1", port=0, fault=fault))
    assert str(error.value) == f'--fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, unknown-client-not-found, duplicate-broadcast, no-replay-gap, miscount-drops, unbounded-queue, wrong-status, strict-keepalive, skip-sequence, lose-request, no-metadata, abrupt-shutdown, unbounded-window; got "{fault}"'


async def test_ignore_cancel_still_releases_streams_the_server_ends(start_server, open_channel):
    server = await start_server(fault="ignore-cancel")
    stub = pb_grpc.EventServiceStub(open_channel(server.address))

    async def active(client_id: str) -> int:
        return (await stub.GetConnectionStatus(pb.SubscribeRequest(client_id=client_id))).active_streams

    # Half-close: the server ends the stream with OK.
    async def one_request():
        yield pb.SubscribeRequest(client_id="half", channel="f")

    async for _ in stub.SubscribeMultiple(one_request(), timeout=5):
        pass
    # A stream parked in the handler, cancelled by its client: kept.
    call = await subscribed(stub, "kept")
    call.cancel()
    # Shutdown: the server ends the stream with UNAVAILABLE.
    open_at_shutdown = await subscribed(stub, "shutdown")
    await eventually(lambda: server.stats()[1] == 1, what="only the shutdown stream open")
    assert (await active("half"), await active("kept"), await active("shutdown")) == (0, 1, 1)
    await server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await open_at_shutdown.read()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    log = server.events._log  # the service is closed: read its counters directly
    assert [len(log.status(c)[0].open_streams) for c in ("half", "kept", "shutdown")] == [0, 1, 0]


@pytest.mark.parametrize(
    "fault,service",
    [
        ("drop", "events"),
        ("unknown-client-not-found", "events"),
        ("duplicate-broadcast", "events"),
        ("no-replay-gap", "events"),
        ("miscount-drops", "events"),
        ("unbounded-queue", "events"),
    ],
)
async def test_an_active_fault_is_announced_in_the_servers_log(start_server, open_channel, fault, service):
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server(fault=fault)
    stub = updates_pb2_grpc.StreamServiceStub(open_channel(server.address))
    entries = [e async for e in stub.TailLogs(updates_pb2.LogRequest(log_level="warn", lines=100), timeout=5)]
    announced = [e for e in entries if e.message == "SELF-TEST FAULT ACTIVE: this server is deliberately defective"]
    assert len(announced) == 1
    assert (announced[0].level, announced[0].service, announced[0].fields["fault"]) == ("warn", service, fault)


@pytest.mark.parametrize("overrides", [{}, {"upload_read_delay": 0.005}])
async def test_no_fault_no_announcement(start_server, open_channel, overrides):
    """Nor with --upload-read-delay: a testing knob, not a fault."""
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server(**overrides)
    stub = updates_pb2_grpc.StreamServiceStub(open_channel(server.address))
    entries = [e async for e in stub.TailLogs(updates_pb2.LogRequest(log_level="warn", lines=100), timeout=5)]
    assert not [e for e in entries if "FAULT" in e.message]


async def test_reorder_sends_a_held_event_before_a_half_closed_stream_ends(start_server, open_channel):
    server = await start_server(fault="reorder", history_size=500)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    published = await publish(stub, 100)

    async def one_request():  # then half-close: the server delivers what is queued and ends with OK
        yield pb.SubscribeRequest(client_id="mh", channel="f", last_event_id="unknown-id")

    loop = asyncio.get_running_loop()
    started = loop.time()
    got = [e.sequence async for e in stub.SubscribeMultiple(one_request(), timeout=5) if e.sequence]
    assert got == published
    assert loop.time() - started < 0.9, "not the 1 s hold: the half-close released it"


async def test_ignore_cancel_keeps_a_stream_cancelled_while_its_write_is_stuck(start_server, open_channel):
    server = await start_server(fault="ignore-cancel", history_size=100)
    stub = pb_grpc.EventServiceStub(open_channel(server.address, [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]))
    call = await subscribed(stub, "stuck")
    for _ in range(40):  # the client reads nothing: the server's write blocks
        await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="big", data="x" * 60_000), target_channels=["f"]))
    await asyncio.sleep(0.3)
    call.cancel()
    await eventually(lambda: server.stats()[1] == 0 and server.events.active_streams == 0, what="the stream out of delivery")
    status = await stub.GetConnectionStatus(pb.SubscribeRequest(client_id="stuck"))
    assert (status.connected, status.active_streams) == (True, 1)


@pytest.mark.parametrize("fault", ["", "no-heartbeat"])
async def test_no_heartbeat_sends_no_heartbeats(start_server, open_channel, fault):
    server = await start_server(fault=fault)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "quiet", heartbeat_interval=1)
    published = await publish(stub, 3)
    events: list = []

    async def read() -> None:
        while True:
            events.append(await call.read())

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(read(), 3.5)  # three heartbeat intervals
    assert [e.sequence for e in events if e.sequence] == published, "log events are delivered as usual"
    heartbeats = [e for e in events if e.type == "heartbeat"]
    assert (len(heartbeats) == 0) if fault else (len(heartbeats) >= 2)
    call.cancel()


@pytest.mark.parametrize("fault", ["", "wrong-status"])
async def test_wrong_status_replaces_invalid_argument_and_not_found_messages(start_server, open_channel, fault):
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc
    from polystream.vendor import grpc_health_v1_pb2 as health_pb
    from polystream.vendor import grpc_health_v1_pb2_grpc as health_grpc

    server = await start_server(fault=fault)
    channel = open_channel(server.address)
    events = pb_grpc.EventServiceStub(channel)
    updates = updates_pb2_grpc.StreamServiceStub(channel)
    health = health_grpc.HealthStub(channel)

    def message(normal: str) -> str:
        return "wrong-status fault" if fault else normal

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(events.Broadcast(pb.BroadcastRequest()), invalid, message("event is required"))  # unary
    await expect_error(events.Subscribe(pb.SubscribeRequest()), invalid, message("client_id is required"))  # server stream
    await expect_error(updates.WatchJobProgress(updates_pb2.JobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND, message('job "nope" not found'))
    await expect_error(updates.CancelJob(updates_pb2.CancelJobRequest(job_id="")), invalid, message("job_id is required"))
    await expect_error(health.Check(health_pb.HealthCheckRequest(service="nope")), grpc.StatusCode.NOT_FOUND, message("unknown service"))
    # Other codes keep their message, and calls that succeed are unchanged.
    assert (await events.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t")))).sequence == 1


def _pinging_every_second(open_channel, address: str) -> grpc.aio.Channel:
    return open_channel(
        address,
        options=[
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", 1000),
        ],
    )


@pytest.mark.parametrize("fault", ["", "strict-keepalive"])
async def test_strict_keepalive_sends_a_client_pinging_every_second_away(start_server, open_channel, fault):
    # keepalive-min-time 500ms lets 1 s pings through; strict-keepalive overrides it with 60 s.
    server = await start_server(fault=fault, keepalive_min_time=0.5)
    stub = pb_grpc.EventServiceStub(_pinging_every_second(open_channel, server.address))
    call = await subscribed(stub, "idle")  # no events, the first heartbeat in 30 s: an idle stream

    async def read_all() -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    if fault:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(read_all(), 10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    else:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read_all(), 10)
        call.cancel()


@pytest.mark.parametrize(
    "fault", ["wrong-status", "strict-keepalive", "skip-sequence", "lose-request", "no-metadata", "abrupt-shutdown", "unbounded-window"]
)
async def test_a_server_fault_is_announced_in_the_servers_log(start_server, open_channel, fault):
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server(fault=fault)
    stub = updates_pb2_grpc.StreamServiceStub(open_channel(server.address))
    entries = [e async for e in stub.TailLogs(updates_pb2.LogRequest(log_level="warn", lines=100), timeout=5)]
    announced = [e for e in entries if e.message == "SELF-TEST FAULT ACTIVE: this server is deliberately defective"]
    assert [(e.level, e.service, e.fields["fault"]) for e in announced] == [("warn", "server", fault)]


def test_strict_keepalive_also_stops_the_servers_own_pings():
    # Otherwise the server's pings keep an idle client busy and it never pings itself.
    from polystream import server as server_module
    from polystream.config import ServerConfig

    def keepalive_time(fault: str) -> int:
        return dict(server_module.server_options(ServerConfig(fault=fault)))["grpc.keepalive_time_ms"]

    assert keepalive_time("") == 30_000
    assert keepalive_time("strict-keepalive") == 2**31 - 1


# --- the EventService faults added with the contract's full list ---


@pytest.mark.parametrize("fault", ["", "unknown-client-not-found"])
async def test_unknown_client_not_found_answers_a_client_without_streams_with_not_found(start_server, open_channel, fault):
    server = await start_server(fault=fault)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    if fault:
        await expect_error(stub.GetConnectionStatus(pb.SubscribeRequest(client_id="nobody")), grpc.StatusCode.NOT_FOUND, 'client "nobody" not found')
    else:
        assert (await stub.GetConnectionStatus(pb.SubscribeRequest(client_id="nobody"))).connected is False
    call = await subscribed(stub, "somebody")  # a client with an open stream is answered as usual
    status = await stub.GetConnectionStatus(pb.SubscribeRequest(client_id="somebody"))
    assert (status.connected, status.active_streams) == (True, 1)
    call.cancel()


@pytest.mark.parametrize("fault", ["", "duplicate-broadcast"])
async def test_duplicate_broadcast_appends_a_known_id_again(start_server, open_channel, fault):
    import uuid

    server = await start_server(fault=fault)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "dup")
    request = pb.BroadcastRequest(event=pb.Event(id="my-id", type="t"), target_channels=["f"])
    first = await stub.Broadcast(request)
    again = await stub.Broadcast(request)
    assert (first.event_id, first.sequence, first.recipients) == ("my-id", 1, 1)
    if fault:
        assert again.event_id != "my-id" and uuid.UUID(again.event_id).version == 4
        assert (again.sequence, again.recipients) == (2, 1)
        assert await read_log_events(call, 2) == [1, 2]
    else:
        assert (again.event_id, again.sequence, again.recipients) == ("my-id", 1, 0)
        assert (await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t"), target_channels=["f"]))).sequence == 2
        assert await read_log_events(call, 2) == [1, 2]
    call.cancel()


@pytest.mark.parametrize("fault", ["", "no-replay-gap"])
async def test_no_replay_gap_resumes_from_an_unknown_id_without_the_gap_event(start_server, open_channel, fault):
    server = await start_server(fault=fault)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    published = await publish(stub, 3)
    call = stub.Subscribe(pb.SubscribeRequest(client_id="gap", channel="f", last_event_id="unknown-id"))
    events = [await asyncio.wait_for(call.read(), 5) for _ in range(3 if fault else 4)]
    call.cancel()
    if not fault:
        gap = events.pop(0)
        assert (gap.type, gap.metadata["requested_id"]) == ("polystream.replay_gap", "unknown-id")
    assert [e.sequence for e in events] == published, "the replay of what the log holds is unchanged"


async def _stalled(server, open_channel, client_id: str):
    """A subscriber whose client reads nothing (fixed 64 KiB window)."""
    stub = pb_grpc.EventServiceStub(open_channel(server.address, [("grpc.http2.bdp_probe", 0)]))
    return await subscribed(stub, client_id)


BIG = "x" * 16_000  # a few fill a stalled stream's window


@pytest.mark.parametrize("fault", ["", "miscount-drops"])
async def test_miscount_drops_says_one_less_in_the_marker(start_server, open_channel, fault):
    server = await start_server(fault=fault, queue_size=4, backpressure="drop-newest")
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    slow = await _stalled(server, open_channel, "slow")
    dropped = []
    while len(dropped) < 2:
        response = await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t", data=BIG), target_channels=["f"]))
        if response.recipients == 0:
            dropped.append(response)
        assert response.sequence < 200, "the stalled queue never filled"
    marker = None
    while marker is None:
        event = await asyncio.wait_for(slow.read(), 5)
        if event.type == "polystream.dropped":
            marker = event
    assert marker.metadata["count"] == ("1" if fault else "2")
    assert (marker.metadata["first_dropped_sequence"], marker.metadata["last_dropped_sequence"]) == (
        str(dropped[0].sequence),
        str(dropped[1].sequence),
    )
    assert (await stub.GetConnectionStatus(pb.SubscribeRequest(client_id="slow"))).events_dropped == 2
    slow.cancel()


@pytest.mark.parametrize("fault", ["", "unbounded-queue"])
async def test_unbounded_queue_never_fills(start_server, open_channel, fault):
    server = await start_server(fault=fault, queue_size=4, backpressure="disconnect")
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    slow = await _stalled(server, open_channel, "slow")
    recipients = [
        (await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t", data=BIG), target_channels=["f"]))).recipients
        for _ in range(60)  # far more than a 4-event queue and the stream's window hold
    ]
    if fault:
        assert recipients == [1] * 60, "nothing dropped, nobody disconnected"
        assert await read_log_events(slow, 60) == list(range(1, 61))
        slow.cancel()
    else:
        assert 0 in recipients, "the slow subscriber was disconnected"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            while await asyncio.wait_for(slow.read(), 5) is not grpc.aio.EOF:
                pass
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- the whole server's faults added with the contract's full list ---


@pytest.mark.parametrize("fault", ["", "skip-sequence"])
async def test_skip_sequence_sends_the_fifth_sequenced_message_with_sequence_plus_one(start_server, open_channel, fault):
    from polystream.chat.v1 import chat_pb2, chat_pb2_grpc
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server(fault=fault)
    channel = open_channel(server.address)
    stub = pb_grpc.EventServiceStub(channel)
    published = await publish(stub, 8)
    expected = [1, 2, 3, 4, 6, 6, 7, 8] if fault else published
    # Replay (after a replay_gap control event, sequence 0: not counted), twice: each stream counts its own.
    for client_id in ("s1", "s2"):
        call = stub.Subscribe(pb.SubscribeRequest(client_id=client_id, channel="f", last_event_id="unknown"))
        assert await read_log_events(call, 8) == expected
        call.cancel()
    # The log is unchanged: a resume after event 4 replays event 5 as sequence 5 (that stream's 1st).
    resumed = stub.Subscribe(pb.SubscribeRequest(client_id="s3", channel="f", last_event_id=(await _event_id(stub, 4))))
    assert (await read_log_events(resumed, 1)) == [5]
    resumed.cancel()
    # Any service: a bidi Chat's echoes, and a server stream of another service.
    chat = chat_pb2_grpc.ChatServiceStub(channel)

    async def six():
        for i in range(6):
            yield chat_pb2.Message(user="u", room="skip", content=str(i))

    echoes = [m.sequence async for m in chat.Chat(six(), timeout=10)]
    assert echoes == ([1, 2, 3, 4, 6, 6] if fault else [1, 2, 3, 4, 5, 6])
    updates = updates_pb2_grpc.StreamServiceStub(channel)
    logs = [e.sequence async for e in updates.TailLogs(updates_pb2.LogRequest(lines=6), timeout=10)]
    assert logs[:6] == ([1, 2, 3, 4, 6, 6] if fault else [1, 2, 3, 4, 5, 6])


async def _event_id(stub, sequence: int) -> str:
    call = stub.Subscribe(pb.SubscribeRequest(client_id="ids", channel="f", last_event_id="unknown"))
    try:
        while True:
            event = await asyncio.wait_for(call.read(), 5)
            if event.sequence == sequence and event.id:
                return event.id
    finally:
        call.cancel()


@pytest.mark.parametrize("fault", ["", "lose-request"])
async def test_lose_request_discards_the_fifth_request_of_every_request_stream(start_server, open_channel, fault):
    from polystream.chat.v1 import chat_pb2, chat_pb2_grpc

    server = await start_server(fault=fault)
    chat = chat_pb2_grpc.ChatServiceStub(open_channel(server.address))

    async def messages(room: str, count: int):
        for i in range(count):
            yield chat_pb2.Message(user="u", room=room, content=str(i))

    upload = await chat.UploadMessages(messages("lose-up", 8), timeout=10)
    assert upload.message_count == (7 if fault else 8)
    echoes = [m.content async for m in chat.Chat(messages("lose-chat", 7), timeout=10)]
    assert echoes == ([str(i) for i in (0, 1, 2, 3, 5, 6)] if fault else [str(i) for i in range(7)])


@pytest.mark.parametrize("fault", ["", "abrupt-shutdown"])
async def test_abrupt_shutdown_cuts_streams_without_the_shutdown_status(start_server, open_channel, fault):
    server = await start_server(fault=fault, shutdown_grace=5.0)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "open")
    await server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        while await asyncio.wait_for(call.read(), 5) is not grpc.aio.EOF:
            pass
    if fault:
        assert error.value.details() != "server is shutting down", "the library's own status"
    else:
        assert (error.value.code(), error.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")


def test_unbounded_window_fixes_16_mib_windows_whatever_the_flag_says():
    from polystream import server as server_module

    def windows(**fields) -> tuple:
        options = dict(server_module.server_options(ServerConfig(**fields)))
        return options.get("grpc.http2.bdp_probe"), options.get("grpc.http2.lookahead_bytes")

    assert windows() == (None, None)
    assert windows(initial_window_size=65535) == (0, 65535)
    assert windows(fault="unbounded-window") == (0, 16 * 1024 * 1024)
    assert windows(fault="unbounded-window", initial_window_size=65535) == (0, 16 * 1024 * 1024)


@pytest.mark.parametrize("fault", ["", "ignore-cancel"])
async def test_ignore_cancel_logs_cancelled_and_expired_calls_as_ok(start_server, open_channel, records, fault):
    server = await start_server(fault=fault)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = await subscribed(stub, "c")
    call.cancel()
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Subscribe(pb.SubscribeRequest(client_id="d", channel="f"), timeout=0.3).read()
    await eventually(lambda: len(records.codes("/polystream.events.v1.EventService/Subscribe")) == 2, what="both rpc records")
    codes = sorted(records.codes("/polystream.events.v1.EventService/Subscribe"))
    assert codes == (["OK", "OK"] if fault else ["CANCELLED", "DEADLINE_EXCEEDED"])


@pytest.mark.parametrize("fault", ["", "abrupt-shutdown"])
async def test_abrupt_shutdown_on_sigterm_cuts_streams_and_exits(fault):
    import signal

    from support import PYTHON_CLI, ServerProcess, python_env

    server = ServerProcess([*PYTHON_CLI, "serve", "--port", "0", "--shutdown-grace", "30s", "--fault", fault], env=python_env())
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = await subscribed(pb_grpc.EventServiceStub(channel), "open")
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                while await asyncio.wait_for(call.read(), 10) is not grpc.aio.EOF:
                    pass
            code = await asyncio.get_running_loop().run_in_executor(None, server.process.wait, 10)
        assert code == 0
        if fault:
            assert error.value.details() != "server is shutting down", "the library's own status"
        else:
            assert (error.value.code(), error.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    finally:
        server.stop()


async def test_skip_sequence_also_applies_to_handlers_that_write_and_copies_the_message():
    # No service writes with context.write today; the guard's context applies the fault there too.
    from polystream.stream_guard import _HandlerContext

    class Written:
        def __init__(self) -> None:
            self.messages: list = []

        def invocation_metadata(self):
            return ()

        async def write(self, message) -> None:
            self.messages.append(message)

    real = Written()
    context = _HandlerContext(real, "skip-sequence")
    shared = [pb.Event(sequence=s) for s in range(1, 8)]
    await context.write(pb.Event(type="heartbeat"))  # sequence 0: not counted
    for event in shared:
        await context.write(event)
    assert [m.sequence for m in real.messages] == [0, 1, 2, 3, 4, 6, 6, 7]
    assert [e.sequence for e in shared] == list(range(1, 8)), "the handler's messages are not changed"
