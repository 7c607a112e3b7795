"""ChatService against the real server on 127.0.0.1 (docs/contract.md).

The server comes from conftest's start_server; tests read the service's room
membership only to await what a client cannot see.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from typing import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from conftest import eventually, expect_error, take
from polystream.chat.v1 import chat_pb2 as pb
from polystream.chat.v1 import chat_pb2_grpc
from polystream.server import RunningServer
from polystream.services.chat import ChatService

WAIT = 15.0  # upper bound for awaited conditions; never a speed assertion

CHAT, JOIN, LEAVE, SYSTEM = pb.MESSAGE_TYPE_CHAT, pb.MESSAGE_TYPE_JOIN, pb.MESSAGE_TYPE_LEAVE, pb.MESSAGE_TYPE_SYSTEM


@dataclasses.dataclass
class Running:
    service: ChatService
    stub: chat_pb2_grpc.ChatServiceStub
    server: RunningServer


@pytest.fixture
async def start_chat(start_server, open_channel) -> Callable[..., Awaitable[Running]]:
    """The whole server (conftest's start_server) with a channel to its ChatService;
    config fields as keywords."""

    async def start(**overrides: object) -> Running:
        server = await start_server(**overrides)
        return Running(server.chat, chat_pb2_grpc.ChatServiceStub(open_channel(server.address)), server)

    return start


@pytest.fixture
async def running(start_chat) -> Running:
    return await start_chat()


def is_uuid4(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4
    except ValueError:
        return False


async def subscribe(running: Running, user: str, room: str = ""):
    """Opens SubscribeMessages and returns it once the welcome (= joined) is in."""
    call = running.stub.SubscribeMessages(pb.SubscribeRequest(user=user, room=room))
    (welcome,) = await take(call, 1)
    assert (welcome.type, welcome.user, welcome.sequence) == (SYSTEM, "system", 1)
    assert welcome.content == f"welcome to {room or 'general'}, {user}"
    assert welcome.room == (room or "general") and is_uuid4(welcome.id)
    return call


# --- unary --------------------------------------------------------------------------


async def test_send_message_reaches_the_room(running: Running) -> None:
    alice = await subscribe(running, "alice")
    other_room = await subscribe(running, "carol", room="other")
    response = await running.stub.SendMessage(pb.SendMessageRequest(user="bob", content="hi"))
    assert is_uuid4(response.message_id) and response.timestamp.seconds > 0
    (message,) = await take(alice, 1)
    assert (message.id, message.user, message.content, message.room, message.type, message.sequence) == (
        response.message_id,
        "bob",
        "hi",
        "general",
        CHAT,
        2,
    )
    assert message.timestamp == response.timestamp
    # carol's room gets only what is sent there.
    await running.stub.SendMessage(pb.SendMessageRequest(user="bob", content="there", room="other"))
    (message,) = await take(other_room, 1)
    assert (message.content, message.room, message.sequence) == ("there", "other", 2)
    alice.cancel()
    other_room.cancel()


@pytest.mark.parametrize(
    "request_, message",
    [
        (pb.SendMessageRequest(content="hi"), "user is required"),
        (pb.SendMessageRequest(), "user is required"),
        (pb.SendMessageRequest(user="bob"), "content is required"),
    ],
)
async def test_send_message_rejects_bad_input(running: Running, request_, message: str) -> None:
    await expect_error(running.stub.SendMessage(request_), grpc.StatusCode.INVALID_ARGUMENT, message)


# --- server streaming -----------------------------------------------------------------


async def test_subscribe_requires_a_user(running: Running) -> None:
    await expect_error(
        running.stub.SubscribeMessages(pb.SubscribeRequest(room="r")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user is required",
    )


async def test_join_and_leave_are_seen_by_others_never_by_oneself(running: Running) -> None:
    alice = await subscribe(running, "alice", room="r")
    bob = await subscribe(running, "bob", room="r")
    (joined,) = await take(alice, 1)
    assert (joined.type, joined.user, joined.room, joined.sequence) == (JOIN, "bob", "r", 2)
    assert is_uuid4(joined.id)

    # bob's next message is alice's chat, not his own JOIN.
    await running.stub.SendMessage(pb.SendMessageRequest(user="alice", content="hello bob", room="r"))
    (first_for_bob,) = await take(bob, 1)
    assert (first_for_bob.type, first_for_bob.content, first_for_bob.sequence) == (CHAT, "hello bob", 2)
    (own_chat,) = await take(alice, 1)
    assert own_chat.content == "hello bob"

    bob.cancel()
    (left,) = await take(alice, 1)
    assert (left.type, left.user, left.room, left.sequence) == (LEAVE, "bob", "r", 4)
    await eventually(lambda: running.service.members("r") == 1, WAIT, "bob to leave the room")
    alice.cancel()
    await eventually(lambda: running.service.members("r") == 0, WAIT, "the room to empty")


async def test_a_stalled_subscriber_does_not_hold_up_the_room(start_server, open_channel) -> None:
    server = await start_server()
    # The stalled reader has its own connection with fixed windows, so its
    # transport fills after a few messages and its queue (256) after that.
    stalled_stub = chat_pb2_grpc.ChatServiceStub(open_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]))
    stub = chat_pb2_grpc.ChatServiceStub(open_channel(server.address))
    running = Running(server.chat, stub, server)
    stalled = stalled_stub.SubscribeMessages(pb.SubscribeRequest(user="stalled", room="busy"))
    await take(stalled, 1)  # the welcome; then it stops reading
    live = await subscribe(running, "live", room="busy")

    total = 400
    body = "x" * 20_000
    for i in range(total):  # never waits for the stalled reader
        await stub.SendMessage(pb.SendMessageRequest(user="bob", content=f"{i}:{body}", room="busy"))
    got = await take(live, total)
    assert [m.content.split(":")[0] for m in got] == [str(i) for i in range(total)]

    # The stalled stream lost messages (counted by the server) but numbers what it got without gaps.
    dropped = server.chat.dropped("busy")  # the live member dropped nothing: it got every message
    assert dropped > 0
    received = 1 + total - dropped  # live's JOIN and the chats the stalled queue took
    stalled_got = await take(stalled, received)
    assert [m.sequence for m in stalled_got] == list(range(2, received + 2))
    assert (stalled_got[0].type, stalled_got[0].user) == (JOIN, "live")
    indexes = [int(m.content.split(":")[0]) for m in stalled_got[1:]]
    assert indexes == sorted(indexes) and len(indexes) < total
    stalled.cancel()
    live.cancel()


# --- client streaming --------------------------------------------------------------------


async def test_upload_counts_and_delivers_to_each_room(running: Running) -> None:
    general = await subscribe(running, "watcher")
    elsewhere = await subscribe(running, "watcher", room="r2")

    async def messages() -> AsyncIterator[pb.Message]:
        yield pb.Message(user="u", content="one")
        yield pb.Message(user="u", content="two", room="r2", id="client-id")
        yield pb.Message(user="u", type=JOIN)  # content is only required of CHAT
        yield pb.Message(user="u", content="three", room="general")

    response = await running.stub.UploadMessages(messages())
    assert (response.message_count, response.success) == (4, True)
    got = await take(general, 3)
    assert [(m.content, m.type, m.room) for m in got] == [("one", CHAT, "general"), ("", JOIN, "general"), ("three", CHAT, "general")]
    assert [m.sequence for m in got] == [2, 3, 4]
    (two,) = await take(elsewhere, 1)
    assert (two.id, two.content, two.room) == ("client-id", "two", "r2")
    general.cancel()
    elsewhere.cancel()


async def test_upload_of_nothing_counts_zero(running: Running) -> None:
    async def nothing() -> AsyncIterator[pb.Message]:
        return
        yield

    response = await running.stub.UploadMessages(nothing())
    assert (response.message_count, response.success) == (0, True)


@pytest.mark.parametrize(
    "bad, message",
    [(pb.Message(content="x"), "user is required"), (pb.Message(user="u", type=CHAT), "content is required")],
)
async def test_upload_rejects_a_bad_message(running: Running, bad: pb.Message, message: str) -> None:
    async def messages() -> AsyncIterator[pb.Message]:
        yield pb.Message(user="u", content="fine")
        yield bad

    await expect_error(running.stub.UploadMessages(messages()), grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize("delay", [0.0, 0.15])
async def test_upload_read_delay_paces_uploads(start_chat, delay: float) -> None:
    running = await start_chat(upload_read_delay=delay)

    async def messages() -> AsyncIterator[pb.Message]:
        for i in range(6):
            yield pb.Message(user="u", content=str(i), room="slow")

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await running.stub.UploadMessages(messages(), timeout=10)
    elapsed = loop.time() - started
    assert (response.message_count, response.success) == (6, True)
    if delay:
        # A wait before each of the 6 reads and before the half-close is noticed.
        assert elapsed >= 7 * delay - 0.05, elapsed
    else:
        assert elapsed < 0.6, elapsed


async def test_upload_read_delay_comes_before_the_first_read_and_the_half_close(start_chat) -> None:
    running = await start_chat(upload_read_delay=0.2)

    async def nothing() -> AsyncIterator[pb.Message]:
        return
        yield

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await running.stub.UploadMessages(nothing(), timeout=10)
    assert (response.message_count, response.success) == (0, True)
    assert loop.time() - started >= 0.2 - 0.05


async def test_a_cancelled_upload_ends_the_read_delay_at_once(start_chat) -> None:
    running = await start_chat(upload_read_delay=60.0)  # the largest allowed
    outgoing: asyncio.Queue[pb.Message] = asyncio.Queue()

    async def messages() -> AsyncIterator[pb.Message]:
        while True:
            yield await outgoing.get()

    call = running.stub.UploadMessages(messages())
    await outgoing.put(pb.Message(user="u", content="one"))
    await eventually(lambda: running.server.stats()[1] == 1, what="the upload open on the server")
    call.cancel()
    # Far sooner than the minute the handler would otherwise sleep.
    await eventually(lambda: running.server.stats()[1] == 0, timeout=5, what="the cancelled upload released")
    with pytest.raises(asyncio.CancelledError):
        await call


# --- bidirectional streaming ----------------------------------------------------------------


async def test_chat_echoes_in_order_and_broadcasts_to_the_room(running: Running) -> None:
    listener = await subscribe(running, "listener", room="lobby")
    outgoing: asyncio.Queue[pb.Message | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.Message]:
        while (message := await outgoing.get()) is not None:
            yield message

    chat = running.stub.Chat(requests())
    count = 50
    for i in range(count):
        # The first message's room is the stream's room; later ones go there too.
        room = "lobby" if i == 0 else "ignored"
        await outgoing.put(pb.Message(user="ann", content=f"m{i}", room=room, id="mine" if i == 1 else ""))
    await outgoing.put(None)  # half-close

    echoes = [m async for m in chat]  # ends when the server ends the stream (OK)
    chats = [m for m in echoes if m.type == CHAT]
    assert [m.content for m in chats] == [f"m{i}" for i in range(count)]
    assert [m.sequence for m in echoes] == list(range(1, len(echoes) + 1))
    assert all(m.room == "lobby" and m.user == "ann" and m.timestamp.seconds > 0 for m in chats)
    assert chats[1].id == "mine" and is_uuid4(chats[0].id)
    assert await chat.code() == grpc.StatusCode.OK

    # The listener sees ann join, every message in order, then ann leave.
    seen = await take(listener, count + 2)
    assert (seen[0].type, seen[0].user) == (JOIN, "ann")
    assert [m.content for m in seen[1:-1]] == [f"m{i}" for i in range(count)]
    assert [m.id for m in seen[1:-1]] == [m.id for m in chats]
    assert (seen[-1].type, seen[-1].user) == (LEAVE, "ann")
    listener.cancel()


async def test_two_chat_streams_see_each_other_not_themselves(running: Running) -> None:
    queues = {name: asyncio.Queue() for name in ("ann", "ben")}

    def requests(name: str):
        async def gen() -> AsyncIterator[pb.Message]:
            while (message := await queues[name].get()) is not None:
                yield message

        return gen()

    ann = running.stub.Chat(requests("ann"))
    await queues["ann"].put(pb.Message(user="ann", content="first", room="duo"))
    (echo,) = await take(ann, 1)
    assert (echo.content, echo.sequence) == ("first", 1)

    ben = running.stub.Chat(requests("ben"))
    await queues["ben"].put(pb.Message(user="ben", content="hello", room="duo"))
    (ben_echo,) = await take(ben, 1)
    assert (ben_echo.type, ben_echo.content, ben_echo.sequence) == (CHAT, "hello", 1)
    got = await take(ann, 2)
    assert [(m.type, m.user, m.content) for m in got] == [(JOIN, "ben", "ben joined"), (CHAT, "ben", "hello")]
    assert [m.sequence for m in got] == [2, 3]

    ben.cancel()
    (left,) = await take(ann, 1)
    assert (left.type, left.user) == (LEAVE, "ben")
    await queues["ann"].put(None)
    assert [m async for m in ann] == []
    await eventually(lambda: running.service.members("duo") == 0, WAIT, "the room to empty")


@pytest.mark.parametrize(
    "bad, message",
    [(pb.Message(content="x"), "user is required"), (pb.Message(user="u"), "content is required")],
)
async def test_chat_ends_with_the_rule_a_message_broke(running: Running, bad: pb.Message, message: str) -> None:
    async def requests() -> AsyncIterator[pb.Message]:
        yield pb.Message(user="u", content="ok")
        yield bad

    call = running.stub.Chat(requests())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for echo in call:
            assert echo.content == "ok"
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


async def test_chat_sends_keepalives(start_chat) -> None:
    running = await start_chat(chat_keepalive=0.2)
    outgoing: asyncio.Queue[pb.Message | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.Message]:
        while (message := await outgoing.get()) is not None:
            yield message

    chat = running.stub.Chat(requests())
    (before_joining,) = await take(chat, 1)  # nothing sent yet: only a keep-alive can come
    assert (before_joining.type, before_joining.user, before_joining.content, before_joining.sequence) == (
        SYSTEM,
        "system",
        "keep-alive",
        1,
    )
    await outgoing.put(pb.Message(user="kim", content="here", room="k"))
    got = await take(chat, 3)
    assert [m.sequence for m in got] == [2, 3, 4]
    keepalives = [m for m in got if m.type == SYSTEM]
    assert keepalives and all(m.content == "keep-alive" and m.room == "k" for m in keepalives)
    assert [m.content for m in got if m.type == CHAT] == ["here"]
    await outgoing.put(None)
    async for _ in chat:
        pass
    assert await chat.code() == grpc.StatusCode.OK


# --- metrics --------------------------------------------------------------------------------

NAMES = [
    "process_cpu_percent",
    "process_resident_memory_bytes",
    "process_threads",
    "server_requests_per_second",
    "server_active_streams",
]


async def test_metrics_are_real_figures_of_the_process(running: Running) -> None:
    call = running.stub.StreamMetrics(pb.MetricsRequest(instance_id="i-1", interval_seconds=1))
    first = await take(call, 5)
    for i in range(30):  # requests between the two samples
        await running.stub.SendMessage(pb.SendMessageRequest(user="load", content=str(i)))
    second = await take(call, 5)
    requests, active = running.server.stats()
    call.cancel()

    for burst in (first, second):
        assert [m.name for m in burst] == NAMES
        assert len({(m.timestamp.seconds, m.timestamp.nanos) for m in burst}) == 1
        for metric in burst:
            expected = {"instance_id": "i-1", "language": "python"}
            if metric.name == "process_threads":
                expected["kind"] = "threads"
            assert dict(metric.labels) == expected
    assert [m.sequence for m in first + second] == list(range(1, 11))
    values = {m.name: m.value for m in second}
    assert values["process_resident_memory_bytes"] > 1_000_000
    assert values["process_threads"] >= 1
    assert values["process_cpu_percent"] >= 0
    assert 1 <= values["server_active_streams"] <= active  # this stream at least
    assert values["server_requests_per_second"] > 0  # 30 requests since the first sample
    assert requests >= 31
    assert second[0].timestamp.ToNanoseconds() > first[0].timestamp.ToNanoseconds()


async def test_metrics_default_instance_is_the_hostname(running: Running) -> None:
    call = running.stub.StreamMetrics(pb.MetricsRequest())
    burst = await take(call, 5)
    call.cancel()
    assert {m.labels["instance_id"] for m in burst} == {socket.gethostname()}


async def test_metrics_reject_a_negative_interval(running: Running) -> None:
    await expect_error(
        running.stub.StreamMetrics(pb.MetricsRequest(interval_seconds=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "interval_seconds must be >= 0, got -1",
    )


async def test_server_shutdown_ends_every_chat_stream(running: Running) -> None:
    listener = await subscribe(running, "listener", room="s")
    outgoing: asyncio.Queue[pb.Message | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.Message]:
        while (message := await outgoing.get()) is not None:
            yield message

    chat = running.stub.Chat(requests())
    await outgoing.put(pb.Message(user="ann", content="hi", room="s"))
    await take(chat, 1)
    metrics = running.stub.StreamMetrics(pb.MetricsRequest())
    await take(metrics, 5)

    await running.server.stop()
    for call in (listener, chat, metrics):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    await outgoing.put(None)  # lets the client's request iterator finish
    assert running.service.members("s") == 0
