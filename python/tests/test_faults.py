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


async def test_an_unknown_fault_is_refused_at_start():
    with pytest.raises(ValueError) as error:
        await raw_start_server(ServerConfig(host="127.0.0.1", port=0, fault="slow"))
    assert str(error.value) == '--fault must be one of reorder, drop, ignore-cancel, forget-history, no-heartbeat, wrong-status, strict-keepalive, slow-reader=<ms>; got "slow"'


@pytest.mark.parametrize("fault", ["", "slow-reader=150"])
async def test_slow_reader_paces_uploads(start_server, open_channel, fault):
    from polystream.chat.v1 import chat_pb2, chat_pb2_grpc

    server = await start_server(fault=fault)
    stub = chat_pb2_grpc.ChatServiceStub(open_channel(server.address))

    async def messages():
        for i in range(6):
            yield chat_pb2.Message(user="u", content=str(i), room="slow")

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await stub.UploadMessages(messages(), timeout=10)
    elapsed = loop.time() - started
    assert (response.message_count, response.success) == (6, True)
    if fault:
        assert elapsed >= 6 * 0.15 - 0.05, elapsed  # one read per 150 ms
    else:
        assert elapsed < 0.6, elapsed


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


@pytest.mark.parametrize("fault,service", [("drop", "events"), ("slow-reader=5", "chat")])
async def test_an_active_fault_is_announced_in_the_servers_log(start_server, open_channel, fault, service):
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server(fault=fault)
    stub = updates_pb2_grpc.StreamServiceStub(open_channel(server.address))
    entries = [e async for e in stub.TailLogs(updates_pb2.LogRequest(log_level="warn", lines=100), timeout=5)]
    announced = [e for e in entries if e.message == "SELF-TEST FAULT ACTIVE: this server is deliberately defective"]
    assert len(announced) == 1
    assert (announced[0].level, announced[0].service, announced[0].fields["fault"]) == ("warn", service, fault)


async def test_no_fault_no_announcement(start_server, open_channel):
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server()
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


@pytest.mark.parametrize("fault", ["wrong-status", "strict-keepalive"])
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
