"""EventService against a real server: every rule of SPEC.md and docs/contract.md."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import grpc
import pytest
from google.protobuf import any_pb2

from conftest import eventually, expect_error
from polystream.events.v1 import events_pb2 as pb
from polystream.events.v1 import events_pb2_grpc as pb_grpc
from polystream.services.events_filter import PatternError, TypeFilter

BIG = "x" * 16_000  # a few of these fill a stalled stream's 64 KiB HTTP/2 window
NO_BDP = [("grpc.http2.bdp_probe", 0)]  # keep the client's receive window fixed


def connect(server, open_channel, options=()) -> pb_grpc.EventServiceStub:
    return pb_grpc.EventServiceStub(open_channel(server.address, options))


async def publish(stub, event_type="t", targets=(), **fields) -> pb.BroadcastResponse:
    return await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type=event_type, **fields), target_channels=targets))


async def subscribe(stub, client_id="c", **fields):
    """Opens a Subscribe stream and returns once the server has registered it."""
    call = stub.Subscribe(pb.SubscribeRequest(client_id=client_id, **fields))
    await call.initial_metadata()
    return call


async def next_event(call, timeout=5.0) -> pb.Event:
    """The next message that is not a heartbeat."""
    while True:
        event = await asyncio.wait_for(call.read(), timeout)
        assert event is not grpc.aio.EOF, "stream ended"
        if event.type != "heartbeat":
            return event


async def read_until_sequence(call, last: int, timeout=10.0) -> list[pb.Event]:
    events = []
    while not events or events[-1].sequence < last:
        events.append(await next_event(call, timeout))
    return events


async def status(stub, client_id="c") -> pb.ConnectionStatus:
    return await stub.GetConnectionStatus(pb.SubscribeRequest(client_id=client_id))


async def drain_to_error(call) -> tuple[list[pb.Event], grpc.aio.AioRpcError]:
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            if event.type != "heartbeat":
                events.append(event)
    return events, caught.value


def assert_nothing_lost(received: list[pb.Event], published: list[int]) -> None:
    """Log events and drop markers together account for every published
    sequence, in order, each exactly once."""
    covered = []
    for event in received:
        if event.type == "polystream.dropped":
            first, last = int(event.metadata["first_dropped_sequence"]), int(event.metadata["last_dropped_sequence"])
            assert int(event.metadata["count"]) == last - first + 1
            covered.extend(range(first, last + 1))
        elif event.sequence:
            covered.append(event.sequence)
    assert covered == published


# --- bad input: exact codes and messages ---


async def test_bad_requests_get_exact_codes_and_messages(start_server, open_channel):
    server = await start_server()
    stub = connect(server, open_channel)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(stub.Subscribe(pb.SubscribeRequest()).read(), bad, "client_id is required")
    await expect_error(
        stub.Subscribe(pb.SubscribeRequest(client_id="c", heartbeat_interval=-5)).read(),
        bad,
        "heartbeat_interval must be >= 0, got -5",
    )
    await expect_error(
        stub.Subscribe(pb.SubscribeRequest(client_id="c", event_types=["ok.*", "a..b"])).read(),
        bad,
        'invalid event type pattern "a..b": empty segment',
    )
    await expect_error(
        stub.Subscribe(pb.SubscribeRequest(client_id="c", event_types=[""])).read(),
        bad,
        'invalid event type pattern "": empty segment',
    )
    await expect_error(stub.GetConnectionStatus(pb.SubscribeRequest()), bad, "client_id is required")
    await expect_error(stub.Broadcast(pb.BroadcastRequest()), bad, "event is required")
    await expect_error(stub.Broadcast(pb.BroadcastRequest(event=pb.Event(data="{}"))), bad, "event.type is required")
    multiple = stub.SubscribeMultiple()
    await multiple.write(pb.SubscribeRequest())
    await expect_error(multiple.read(), bad, "client_id is required")
    # Nothing was registered by the failed calls.
    assert server.events.active_streams == 0


async def test_subscribe_multiple_rejects_a_changed_client_id_or_bad_filter(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    call = stub.SubscribeMultiple()
    await call.write(pb.SubscribeRequest(client_id="me"))
    await call.initial_metadata()
    await call.write(pb.SubscribeRequest(client_id="someone-else"))
    await expect_error(next_event(call), grpc.StatusCode.INVALID_ARGUMENT, "client_id cannot change within a stream")

    call = stub.SubscribeMultiple()
    await call.write(pb.SubscribeRequest(client_id="me"))
    await call.initial_metadata()
    await call.write(pb.SubscribeRequest(client_id="me", event_types=["a..b"]))
    await expect_error(next_event(call), grpc.StatusCode.INVALID_ARGUMENT, 'invalid event type pattern "a..b": empty segment')


# --- the log: ids, sequences, what the server keeps and sets ---


async def test_published_events_get_uuid4_ids_global_sequences_and_keep_their_content(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    a = await subscribe(stub, "a", channel="a")
    b = await subscribe(stub, "b")
    payload = pb.UserEvent(user_id="u1", action="created", username="ann", email="a@x")
    before = time.time()
    first = await publish(stub, "user.created", data='{"n":1}', metadata={"k": "v"}, channel="ignored")
    second = await stub.Broadcast(
        pb.BroadcastRequest(event=pb.Event(type="user.updated", payload=_pack(payload)), target_channels=["a"])
    )
    assert (first.sequence, second.sequence) == (1, 2)
    assert uuid.UUID(first.event_id).version == 4 and uuid.UUID(second.event_id).version == 4
    assert (first.recipients, second.recipients) == (2, 1)

    got = await read_until_sequence(a, 2)
    assert [e.sequence for e in got] == [1, 2]
    assert got[0].id == first.event_id and got[0].type == "user.created"
    assert got[0].data == '{"n":1}' and dict(got[0].metadata) == {"k": "v"}
    assert got[0].channel == "a", "delivered on the subscriber's channel, not the publisher's"
    assert before - 1 <= got[0].timestamp.ToNanoseconds() / 1e9 <= time.time() + 1
    unpacked = pb.UserEvent()
    assert got[1].payload.Unpack(unpacked) and unpacked == payload

    only = await next_event(b)
    assert (only.sequence, only.channel) == (1, "default")  # event 2 targeted channel "a" only


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def test_broadcast_with_a_known_id_is_idempotent(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    call = await subscribe(stub)
    original = await publish(stub, "order.placed", id="order-1")
    again = await publish(stub, "order.placed", id="order-1", data="different")
    assert (again.event_id, again.sequence, again.recipients) == ("order-1", original.sequence, 0)
    after = await publish(stub, "order.placed")
    got = await read_until_sequence(call, after.sequence)
    assert [(e.id, e.sequence) for e in got] == [("order-1", 1), (after.event_id, 2)]


async def test_target_channels_and_default_channel(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    default = await subscribe(stub, "d")  # "" = default
    news = await subscribe(stub, "n", channel="news")
    await publish(stub, "x", targets=["news"])
    await publish(stub, "x", targets=["default"])
    await publish(stub, "x", targets=[""])  # "" names the default channel here too
    everyone = await publish(stub, "x")
    assert everyone.recipients == 2
    assert [(e.sequence, e.channel) for e in await read_until_sequence(news, 4)] == [(1, "news"), (4, "news")]
    assert [e.sequence for e in await read_until_sequence(default, 4)] == [2, 3, 4]


# --- filters ---


@pytest.mark.parametrize(
    "pattern, event_type, matches",
    [
        ("user.*", "user.created", True),
        ("user.*", "user", False),
        ("user.*", "user.created.late", False),
        ("**.error", "error", True),
        ("**.error", "system.db.error", True),
        ("**.error", "system.db.errors", False),
        ("**", "anything.at.all", True),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("a.**.z", "a.b.c", False),
        ("*.*", "a.b", True),
        ("User.*", "user.created", False),  # case-sensitive
        ("exact.type", "exact.type", True),
    ],
)
def test_type_patterns(pattern, event_type, matches):
    assert TypeFilter([pattern]).matches(event_type) is matches


@pytest.mark.parametrize("pattern", ["", "a..b", ".a", "a."])
def test_type_patterns_with_an_empty_segment_are_invalid(pattern):
    with pytest.raises(PatternError, match="empty segment"):
        TypeFilter([pattern])


async def test_filters_apply_to_live_and_replayed_events(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    early = await publish(stub, "user.created")
    await publish(stub, "billing.paid")
    await publish(stub, "system.db.error")
    call = await subscribe(stub, event_types=["user.*", "**.error"], last_event_id=early.event_id)
    for event_type in ("user.deleted", "user", "error", "billing.refunded"):
        await publish(stub, event_type)
    done = await publish(stub, "user.done")
    got = await read_until_sequence(call, done.sequence)
    assert [e.type for e in got] == ["system.db.error", "user.deleted", "error", "user.done"]


# --- resume, the seam, retention, durability ---


async def test_resume_replays_after_the_id_then_continues_live(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    ids = [(await publish(stub)).event_id for _ in range(5)]
    call = await subscribe(stub, last_event_id=ids[1])
    live = await publish(stub)
    got = await read_until_sequence(call, live.sequence)
    assert [e.sequence for e in got] == [3, 4, 5, 6]
    assert got[0].id == ids[2]


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_no_gap_and_no_duplicate_at_the_seam_under_concurrent_publishing(start_server, open_channel, tmp_path, durable):
    server = await start_server(queue_size=10_000, history_size=10_000, data_dir=str(tmp_path) if durable else "")
    stub = connect(server, open_channel)
    per_publisher, publishers = 100, 4
    total = per_publisher * publishers
    ids: dict[int, str] = {}

    async def publisher():
        for _ in range(per_publisher):
            response = await publish(stub, "load")
            ids[response.sequence] = response.event_id

    async def reader(client_id: str, after: int | None, call) -> tuple[int | None, list[int]]:
        events = await read_until_sequence(call, total, timeout=30)
        call.cancel()
        return after, [e.sequence for e in events]

    tasks = [asyncio.create_task(publisher()) for _ in range(publishers)]
    readers = []
    # Subscribe again and again while the publishers run, so that some
    # subscriptions land in the middle of a publish.
    while len(ids) < total - 50 and len(readers) < 40:
        await eventually(lambda: len(ids) >= 10, what="first events")
        after = max(ids) - 5
        resumed = stub.Subscribe(pb.SubscribeRequest(client_id=f"r{len(readers)}", last_event_id=ids[after]))
        fresh = stub.Subscribe(pb.SubscribeRequest(client_id=f"f{len(readers)}"))
        readers.append(asyncio.create_task(reader("r", after, resumed)))
        readers.append(asyncio.create_task(reader("f", None, fresh)))
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    assert len(readers) >= 10
    for after, sequences in await asyncio.gather(*readers):
        first = after + 1 if after is not None else sequences[0]
        assert sequences == list(range(first, total + 1)), f"resumed after {after}"


async def test_unknown_or_expired_resume_point_sends_replay_gap_then_oldest_retained(start_server, open_channel):
    stub = connect(await start_server(history_size=3), open_channel)
    empty = await subscribe(stub, "e", last_event_id="nope")
    gap = await next_event(empty)
    assert (gap.type, gap.sequence, gap.id, gap.channel) == ("polystream.replay_gap", 0, "", "default")
    assert dict(gap.metadata) == {"requested_id": "nope", "oldest_retained_id": ""}

    ids = [(await publish(stub)).event_id for _ in range(5)]  # retains 3, 4, 5
    call = await subscribe(stub, last_event_id=ids[0])
    gap = await next_event(call)
    assert gap.type == "polystream.replay_gap"
    assert dict(gap.metadata) == {"requested_id": ids[0], "oldest_retained_id": ids[2]}
    assert [e.sequence for e in await read_until_sequence(call, 5)] == [3, 4, 5]

    # Ids older than retention are unknown, so publishing one again is new.
    again = await publish(stub, id=ids[0])
    assert (again.event_id, again.sequence) == (ids[0], 6)


async def test_durable_log_resumes_across_a_restart(start_server, open_channel, tmp_path):
    data_dir = str(tmp_path / "data")
    first = await start_server(data_dir=data_dir, history_size=4)
    stub = connect(first, open_channel)
    published = [await publish(stub, "kept", data=f'{{"i":{i}}}', metadata={"i": str(i)}, targets=["c"] if i == 5 else ()) for i in range(1, 7)]
    await first.stop()

    db = sqlite3.connect(tmp_path / "data" / "events.db")
    rows = db.execute("SELECT sequence, id, type, channels, data, metadata FROM events ORDER BY sequence").fetchall()
    db.close()
    assert [r[0] for r in rows] == [3, 4, 5, 6], "retention applies to the database"
    assert rows[2][3] == '["c"]' and rows[3][3] == "[]"

    second = await start_server(data_dir=data_dir, history_size=4)
    stub = connect(second, open_channel)
    call = await subscribe(stub, "c", channel="c", last_event_id=published[2].event_id)
    duplicate = await publish(stub, "kept", id=published[3].event_id)
    assert (duplicate.sequence, duplicate.recipients) == (4, 0), "idempotency survives the restart"
    live = await publish(stub, "after-restart")
    assert live.sequence == 7, "sequences continue where the log left off"
    got = await read_until_sequence(call, 7)
    assert [e.sequence for e in got] == [4, 5, 6, 7]
    assert got[0].id == published[3].event_id and got[0].data == '{"i":4}' and dict(got[0].metadata) == {"i": "4"}
    other = await subscribe(stub, "d", last_event_id=published[3].event_id)
    assert [e.sequence for e in await read_until_sequence(other, 7)] == [6, 7], "targets are kept"


# --- heartbeats ---


async def test_heartbeats_every_interval_outside_the_log(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    call = await subscribe(stub, heartbeat_interval=1, channel="hb")
    started = time.monotonic()
    beats = [await asyncio.wait_for(call.read(), 5) for _ in range(2)]
    assert time.monotonic() - started >= 1.5
    for count, beat in enumerate(beats, start=1):
        assert (beat.type, beat.sequence, beat.id, beat.channel) == ("heartbeat", 0, "", "hb")
        payload = pb.HeartbeatEvent()
        assert beat.payload.Unpack(payload)
        assert payload.sequence == count and payload.timestamp.seconds > 0


# --- backpressure with a stalled consumer ---


async def stalled_subscriber(server, open_channel, client_id="slow"):
    """A subscriber whose client never reads: its HTTP/2 window fills after a
    few BIG events, and then its server-side queue fills."""
    stub = connect(server, open_channel, NO_BDP)
    return await subscribe(stub, client_id)


def collect(call) -> tuple[list[pb.Event], asyncio.Task]:
    """Reads `call` in the background into a list (heartbeats left out)."""
    received: list[pb.Event] = []

    async def read():
        try:
            async for event in call:
                if event.type != "heartbeat":
                    received.append(event)
        except grpc.aio.AioRpcError:
            pass  # the server stopped at teardown

    return received, asyncio.create_task(read())


async def publish_until_it_waits(stub, recipients: int | None = None) -> asyncio.Task:
    """Publishes BIG events until one has to wait for room (behind a stalled
    subscriber, backpressure=block) and returns that pending publish; the
    ones that went through must each have reached `recipients`, if given."""
    for _ in range(200):
        attempt = asyncio.create_task(publish(stub, data=BIG))
        done, _ = await asyncio.wait({attempt}, timeout=1.0)
        if not done:
            return attempt
        if recipients is not None:
            assert attempt.result().recipients == recipients
    raise AssertionError("the publisher never had to wait")


async def fast_reader(stub, client_id="fast"):
    return collect(await subscribe(stub, client_id))


async def test_drop_newest_refuses_new_events_and_marks_the_gap(start_server, open_channel):
    server = await start_server(queue_size=4, backpressure="drop-newest")
    stub = connect(server, open_channel)
    slow = await stalled_subscriber(server, open_channel)
    fast, fast_task = await fast_reader(stub)
    dropped = []
    sequence = 0
    while len(dropped) < 3:
        response = await publish(stub, data=BIG)
        sequence = response.sequence
        assert response.recipients >= 1, "the fast subscriber always gets it"
        if response.recipients == 1:
            dropped.append(response)
        assert sequence < 200, "the stalled queue never filled"
    assert (await status(stub, "slow")).events_dropped == 3

    got = []
    while not got or got[-1].type != "polystream.dropped":
        got.append(await next_event(slow))
    last = await publish(stub, data=BIG)  # the queue has room again
    assert last.recipients == 2
    got += await read_until_sequence(slow, last.sequence)
    marker = got[-2]
    assert dict(marker.metadata) == {
        "count": "3",
        "first_dropped_id": dropped[0].event_id,
        "last_dropped_id": dropped[-1].event_id,
        "first_dropped_sequence": str(dropped[0].sequence),
        "last_dropped_sequence": str(dropped[-1].sequence),
    }
    assert (marker.sequence, marker.id, marker.channel) == (0, "", "default")
    assert got.index(marker) == dropped[0].sequence - 1, "the marker sits at the place of the gap"
    assert_nothing_lost(got, list(range(1, last.sequence + 1)))
    await eventually(lambda: len(fast) == last.sequence, what="fast subscriber has everything")
    assert [e.sequence for e in fast] == list(range(1, last.sequence + 1))
    fast_task.cancel()


async def test_drop_oldest_evicts_queued_events_and_marks_the_gap(start_server, open_channel):
    server = await start_server(queue_size=4, backpressure="drop-oldest")
    stub = connect(server, open_channel)
    slow = await stalled_subscriber(server, open_channel)
    fast, fast_task = await fast_reader(stub)
    published = []
    while (await status(stub, "slow")).events_dropped < 3:
        response = await publish(stub, data=BIG)
        assert response.recipients == 2, "drop-oldest always takes the new event"
        published.append(response.sequence)
        assert len(published) < 200, "the stalled queue never filled"

    got = []
    while not got or got[-1].sequence != published[-1]:
        got.append(await next_event(slow))
    markers = [e for e in got if e.type == "polystream.dropped"]
    assert len(markers) == 1 and markers[0].metadata["count"] == "3", "consecutive drops merge into one marker"
    assert [e.sequence for e in got[-4:]] == published[-4:], "the newest events survive"
    assert_nothing_lost(got, published)
    await eventually(lambda: len(fast) == len(published), what="fast subscriber has everything")
    fast_task.cancel()


async def test_disconnect_ends_the_slow_stream_with_resource_exhausted_and_resume_loses_nothing(start_server, open_channel):
    server = await start_server(queue_size=4, backpressure="disconnect")
    stub = connect(server, open_channel)
    slow = await stalled_subscriber(server, open_channel)
    fast, fast_task = await fast_reader(stub)
    while (response := await publish(stub, data=BIG)).recipients == 2:
        assert response.sequence < 200, "the stalled queue never filled"
    overflowed = response.sequence
    assert response.recipients == 1
    extra = await publish(stub, data=BIG)

    got, error = await drain_to_error(slow)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "subscriber queue full (4 events); resume from last_event_id"
    assert [e.sequence for e in got] == list(range(1, got[-1].sequence + 1))
    assert got[-1].sequence < overflowed
    resumed = await subscribe(stub, "slow", last_event_id=got[-1].id)
    rest = await read_until_sequence(resumed, extra.sequence)
    assert [e.sequence for e in rest] == list(range(got[-1].sequence + 1, extra.sequence + 1))
    await eventually(lambda: len(fast) == extra.sequence, what="fast subscriber has everything")
    fast_task.cancel()


async def test_block_waits_for_room_then_delivers(start_server, open_channel):
    server = await start_server(queue_size=4, backpressure="block", publish_timeout=30.0)
    stub = connect(server, open_channel)
    slow = await stalled_subscriber(server, open_channel)
    pending = await publish_until_it_waits(stub, recipients=1)
    got, reader = collect(slow)  # room again: the waiting publisher goes on
    response = await asyncio.wait_for(pending, 5)
    assert response.recipients == 1
    await eventually(lambda: got and got[-1].sequence == response.sequence, what="all events read")
    reader.cancel()
    assert [e.sequence for e in got] == list(range(1, response.sequence + 1))
    assert (await status(stub, "slow")).events_dropped == 0


async def test_block_disconnects_a_subscriber_still_full_after_the_publish_timeout(start_server, open_channel):
    server = await start_server(queue_size=4, backpressure="block", publish_timeout=0.3)
    stub = connect(server, open_channel)
    slow = await stalled_subscriber(server, open_channel)
    fast, fast_task = await fast_reader(stub)
    while True:
        started = time.monotonic()
        response = await publish(stub, data=BIG)
        if response.recipients == 1:
            break
        assert response.sequence < 200, "the stalled queue never filled"
    assert time.monotonic() - started >= 0.3, "the publisher waited for the timeout"
    got, error = await drain_to_error(slow)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "subscriber queue full (4 events); resume from last_event_id",
    )
    # What was still queued went with the stream; resuming brings it back.
    assert [e.sequence for e in got] == list(range(1, got[-1].sequence + 1))
    resumed = await subscribe(stub, "slow", last_event_id=got[-1].id)
    rest = await read_until_sequence(resumed, response.sequence)
    assert [e.sequence for e in rest] == list(range(got[-1].sequence + 1, response.sequence + 1))
    await eventually(lambda: len(fast) == response.sequence, what="fast subscriber has everything")
    fast_task.cancel()


# --- status, cancellation, resources ---


async def test_connection_status_reports_real_streams(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    unknown = await status(stub, "never-seen")
    assert unknown == pb.ConnectionStatus(client_id="never-seen")

    before = time.time()
    first = await subscribe(stub, "c")
    second = await subscribe(stub, "c", channel="other")
    for _ in range(3):
        await publish(stub)
    await read_until_sequence(first, 3)
    await read_until_sequence(second, 3)
    live = await status(stub, "c")
    assert (live.connected, live.active_streams, live.events_received, live.events_dropped) == (True, 2, 6, 0)
    assert before - 1 <= live.connected_at.ToNanoseconds() / 1e9 <= time.time()

    first.cancel()
    await eventually(lambda: _active(stub, "c", 1), what="one stream left")
    second.cancel()
    await eventually(lambda: _active(stub, "c", 0), what="no streams left")
    gone = await status(stub, "c")
    assert (gone.connected, gone.events_received, gone.HasField("connected_at")) == (False, 6, False)


async def _active(stub, client_id, n) -> bool:
    return (await status(stub, client_id)).active_streams == n


async def test_client_cancellation_releases_the_stream_and_its_tasks(start_server, open_channel):
    server = await start_server()
    stub = connect(server, open_channel)
    await status(stub)  # channel and server warmed up
    baseline = asyncio.all_tasks()
    calls = [await subscribe(stub, f"c{i}", heartbeat_interval=1) for i in range(5)]
    multiple = stub.SubscribeMultiple()
    await multiple.write(pb.SubscribeRequest(client_id="m"))
    await multiple.initial_metadata()
    assert server.events.active_streams == 6
    for call in calls:
        call.cancel()
    multiple.cancel()
    await eventually(lambda: server.events.active_streams == 0, what="subscriptions released")
    for i in range(5):
        assert not (await status(stub, f"c{i}")).connected

    def leftover():
        return {t for t in asyncio.all_tasks() - baseline if t is not asyncio.current_task() and not t.done()}

    await eventually(lambda: not leftover(), what="no leftover tasks")


async def test_deadline_ends_the_stream_and_releases_it(start_server, open_channel):
    server = await start_server()
    stub = connect(server, open_channel)
    call = stub.Subscribe(pb.SubscribeRequest(client_id="d"), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_event(call)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: server.events.active_streams == 0, what="subscription released")


# --- SubscribeMultiple ---


async def test_subscribe_multiple_replaces_filters_atomically_and_acknowledges(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    call = stub.SubscribeMultiple()
    await call.write(pb.SubscribeRequest(client_id="m", event_types=["a.*"]))
    await call.initial_metadata()
    await publish(stub, "b.one")
    await publish(stub, "a.one")
    first = await next_event(call)
    assert (first.type, first.channel) == ("a.one", "default")

    await call.write(pb.SubscribeRequest(client_id="m", event_types=["b.*", "c"], channel="two", last_event_id="ignored"))
    ack = await next_event(call)
    assert (ack.type, ack.sequence, ack.id, ack.channel) == ("polystream.subscription_updated", 0, "", "two")
    assert dict(ack.metadata) == {"channel": "two", "event_types": "b.*,c"}
    await publish(stub, "a.two")
    await publish(stub, "b.two", targets=["default"])
    last = await publish(stub, "b.three", targets=["two"])
    after = await next_event(call)
    assert (after.type, after.sequence, after.channel) == ("b.three", last.sequence, "two")

    await call.done_writing()  # half-close ends the stream normally
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_subscribe_multiple_resumes_with_its_first_request(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    ids = [(await publish(stub)).event_id for _ in range(3)]
    call = stub.SubscribeMultiple()
    await call.write(pb.SubscribeRequest(client_id="m", last_event_id=ids[0]))
    assert [e.sequence for e in await read_until_sequence(call, 3)] == [2, 3]
    call.cancel()


async def test_subscribe_multiple_half_close_delivers_what_is_queued_then_ends(start_server, open_channel):
    server = await start_server(queue_size=50)
    stub = connect(server, open_channel, NO_BDP)
    call = stub.SubscribeMultiple()
    await call.write(pb.SubscribeRequest(client_id="m"))
    await call.initial_metadata()
    publisher = connect(server, open_channel)
    published = [await publish(publisher, data=BIG) for _ in range(12)]  # more than the window holds: some stay queued
    await call.done_writing()
    await eventually(lambda: _active(publisher, "m", 1), what="stream still open")  # sanity: not ended by the half-close alone
    got = []
    async for event in call:
        got.append(event.sequence)
    assert got == [p.sequence for p in published]
    assert await call.code() == grpc.StatusCode.OK


async def test_subscribe_multiple_checks_later_requests_like_the_first(start_server, open_channel):
    stub = connect(await start_server(), open_channel)
    call = stub.SubscribeMultiple()
    await call.write(pb.SubscribeRequest(client_id="me"))
    await call.initial_metadata()
    await call.write(pb.SubscribeRequest(event_types=["a.*"]))
    await expect_error(next_event(call), grpc.StatusCode.INVALID_ARGUMENT, "client_id is required")


async def test_a_publisher_giving_up_does_not_leave_its_event_half_delivered(start_server, open_channel, tmp_path):
    server = await start_server(queue_size=4, backpressure="block", publish_timeout=30.0, data_dir=str(tmp_path))
    stub = connect(server, open_channel)
    slow = await stalled_subscriber(server, open_channel)
    pending = await publish_until_it_waits(stub)
    pending.cancel()  # the client gives up (RST_STREAM) while the server waits for room
    got, reader = collect(slow)
    after = await publish(stub, data=BIG)
    await eventually(lambda: got and got[-1].sequence == after.sequence, what="all events read")
    reader.cancel()
    assert [e.sequence for e in got] == list(range(1, after.sequence + 1)), "the abandoned publish still reached the subscriber"
