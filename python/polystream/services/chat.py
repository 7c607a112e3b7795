"""ChatService (polystream.chat.v1): all four RPC modes, plus StreamMetrics.

Rooms and delivery live in chat_rooms, process figures in chat_metrics; this
module holds the handlers and the rules of docs/contract.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import AsyncIterator, Callable

import grpc

from polystream.chat.v1 import chat_pb2, chat_pb2_grpc
from polystream.config import ServerConfig
from polystream.services import chat_metrics
from polystream.services.chat_rooms import (
    JOIN,
    LEAVE,
    SYSTEM,
    ChatRejected,
    Member,
    RoomHub,
    StreamEnd,
    StreamFailure,
    accept,
    now_timestamp,
    room_name,
    stamped,
    system_message,
)

Stats = Callable[[], "tuple[int, int]"]

METRIC_NAMES = (
    "process_cpu_percent",
    "process_resident_memory_bytes",
    "process_threads",
    "server_requests_per_second",
    "server_active_streams",
)


class ChatService(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, config: ServerConfig, logger: logging.Logger, stats: Stats) -> None:
        self._keepalive = config.chat_keepalive if config.chat_keepalive > 0 else 15.0
        self._log = logger
        self._stats = stats
        self._instance = socket.gethostname()
        self._rooms = RoomHub()
        # Seconds to wait before each upload read (--upload-read-delay); 0 = none.
        self._upload_read_delay = config.upload_read_delay

    def register(self, server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(self, server)

    async def start(self) -> None:
        pass  # nothing to prepare: rooms exist while someone is in them

    async def close(self) -> None:
        pass  # open streams are ended by the server's shutdown interceptor

    def members(self, room: str) -> int:
        """How many streams are in the room now (observable by tests)."""
        return self._rooms.count(room_name(room))

    def dropped(self, room: str) -> int:
        """How many room messages the room's current members have missed (observable by tests)."""
        return self._rooms.dropped(room_name(room))

    # --- unary and client streaming ---------------------------------------------

    async def SendMessage(
        self, request: chat_pb2.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.SendMessageResponse:
        room = room_name(request.room)
        message = await _accepted(chat_pb2.Message(user=request.user, content=request.content), room, context)
        self._rooms.deliver(room, message)
        return chat_pb2.SendMessageResponse(message_id=message.id, timestamp=message.timestamp)

    async def UploadMessages(
        self, request_iterator: AsyncIterator[chat_pb2.Message], context: grpc.aio.ServicerContext
    ) -> chat_pb2.UploadResponse:
        # Each message is delivered as it arrives; nothing is buffered here, so
        # gRPC flow control paces a fast uploader. With --upload-read-delay each
        # read (the first, and the one that finds the half-close, included)
        # waits that long first; a cancelled upload cancels the wait at once.
        count = 0
        requests = aiter(request_iterator)
        while True:
            if self._upload_read_delay > 0:
                await asyncio.sleep(self._upload_read_delay)
            incoming = await anext(requests, None)
            if incoming is None:
                break
            room = room_name(incoming.room)
            message = await _accepted(incoming, room, context)
            count += 1
            self._rooms.deliver(room, message)
        return chat_pb2.UploadResponse(message_count=count, success=True)

    # --- server streaming ----------------------------------------------------------

    async def SubscribeMessages(
        self, request: chat_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.Message]:
        if not request.user:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user is required")
        room = room_name(request.room)
        member = Member(request.user)
        # Join before the welcome: once the client has the welcome, every later
        # room message reaches it.
        self._rooms.join(room, member)
        # Others hear of the join before this stream can end, so a LEAVE always follows a JOIN.
        self._rooms.deliver(room, system_message(JOIN, member.user, room, f"{member.user} joined"), member)
        try:
            # Headers now (the welcome follows): the client learns that it is subscribed.
            await context.send_initial_metadata(())
            welcome = system_message(SYSTEM, "system", room, f"welcome to {room}, {member.user}")
            yield stamped(welcome, 1)
            sequence = 1
            while True:
                message = await member.queue.get()
                sequence += 1
                yield stamped(message, sequence)  # type: ignore[arg-type]
        finally:
            self._leave(room, member)

    # --- bidirectional streaming ---------------------------------------------------

    async def Chat(
        self, request_iterator: AsyncIterator[chat_pb2.Message], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.Message]:
        # This generator is the stream's only sender: echoes, others' room
        # messages and keep-alives all pass through one member queue, each
        # stamped with the next sequence. A receiver task reads the client;
        # it waits for room in the queue before reading on, so a client that
        # stops reading its echoes is paced by flow control, not buffered.
        member = Member()
        stream = _ChatStream()
        receiver = asyncio.create_task(self._chat_receive(request_iterator, member, stream))
        keepalive = asyncio.create_task(self._chat_keepalive(member, stream))
        try:
            sequence = 0
            while True:
                item = await member.queue.get()
                if isinstance(item, StreamEnd):
                    return  # half-closed and every echo sent
                if isinstance(item, StreamFailure):
                    await context.abort(item.code, item.message)
                sequence += 1
                yield stamped(item, sequence)  # type: ignore[arg-type]
        finally:
            keepalive.cancel()
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(keepalive, receiver, return_exceptions=True)

    async def _chat_receive(
        self, request_iterator: AsyncIterator[chat_pb2.Message], member: Member, stream: _ChatStream
    ) -> None:
        try:
            async for incoming in request_iterator:
                # The stream's room is its first message's room; later messages go there too.
                room = stream.room or room_name(incoming.room)
                try:
                    echo = accept(incoming, room)
                except ChatRejected as exc:
                    await member.queue.put(StreamFailure(str(exc)))
                    return
                if not stream.room:
                    stream.room, member.user = room, incoming.user
                    self._rooms.join(room, member)
                    self._rooms.deliver(room, system_message(JOIN, member.user, room, f"{member.user} joined"), member)
                self._rooms.deliver(room, echo, member)
                await member.queue.put(echo)  # waits for room: the echo is never dropped
            await member.queue.put(StreamEnd())
        except Exception as exc:  # the sender must not wait for a receiver that died
            self._log.warning("chat receive failed", extra={"error": repr(exc)})
            await member.queue.put(StreamFailure(f"receive failed: {exc}", grpc.StatusCode.INTERNAL))
        finally:
            if stream.room:
                self._leave(stream.room, member)

    async def _chat_keepalive(self, member: Member, stream: _ChatStream) -> None:
        while True:
            await asyncio.sleep(self._keepalive)
            # Skipped, not queued, when the stream is behind: it is not silent then.
            member.offer(system_message(SYSTEM, "system", stream.room, "keep-alive"))

    def _leave(self, room: str, member: Member) -> None:
        self._rooms.leave(room, member)
        self._rooms.deliver(room, system_message(LEAVE, member.user, room, f"{member.user} left"), member)

    # --- metrics --------------------------------------------------------------------

    async def StreamMetrics(
        self, request: chat_pb2.MetricsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.Metric]:
        if request.interval_seconds < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"interval_seconds must be >= 0, got {request.interval_seconds}"
            )
        interval = max(1, request.interval_seconds)
        labels = {"instance_id": request.instance_id or self._instance, "language": "python"}
        sampler = chat_metrics.Sampler(self._stats)
        loop = asyncio.get_running_loop()
        next_burst = loop.time()
        sequence = 0
        while True:
            try:
                sample = sampler.take()
            except (OSError, ValueError, IndexError) as exc:
                await context.abort(grpc.StatusCode.INTERNAL, f"read process metrics: {exc}")
            stamp = now_timestamp()
            values = (
                sample.cpu_percent,
                sample.rss_bytes,
                sample.threads,
                sample.requests_per_second,
                sample.active_streams,
            )
            for name, value in zip(METRIC_NAMES, values):
                sequence += 1
                metric_labels = dict(labels, kind="threads") if name == "process_threads" else labels
                yield chat_pb2.Metric(name=name, value=value, timestamp=stamp, labels=metric_labels, sequence=sequence)
            # A fixed rate, not "interval after the last send"; after a stall
            # (a slow reader) it resumes the rate instead of catching up.
            next_burst = max(next_burst + interval, loop.time())
            await asyncio.sleep(max(0.0, next_burst - loop.time()))


class _ChatStream:
    """What a Chat stream's receiver has learned: its room ("" until the first message)."""

    room: str = ""


async def _accepted(incoming: chat_pb2.Message, room: str, context: grpc.aio.ServicerContext) -> chat_pb2.Message:
    try:
        return accept(incoming, room)
    except ChatRejected as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise  # abort always raises; this keeps type checkers honest
