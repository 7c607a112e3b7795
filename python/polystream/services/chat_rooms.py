"""Chat rooms: who is in which room, and delivery to them.

Each stream in a room (SubscribeMessages or Chat) is a `Member` with a bounded
queue. Delivery never waits: a member whose queue is full misses the message
(counted), so one slow reader never holds up the room. The Go server does the
same (go/chat/rooms.go).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from typing import Union

import grpc
from google.protobuf import timestamp_pb2

from polystream.chat.v1 import chat_pb2

QUEUE_SIZE = 256  # per member, as in Go
DEFAULT_ROOM = "general"

CHAT = chat_pb2.MESSAGE_TYPE_CHAT
JOIN = chat_pb2.MESSAGE_TYPE_JOIN
LEAVE = chat_pb2.MESSAGE_TYPE_LEAVE
SYSTEM = chat_pb2.MESSAGE_TYPE_SYSTEM


class ChatRejected(ValueError):
    """A client's message breaks a rule (the message is the client's status text)."""


class StreamEnd:
    """Queued behind a Chat stream's last echo: the client half-closed."""


class StreamFailure:
    """Queued by a Chat stream's receiver: end the stream with this error."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        self.message = message
        self.code = code


Item = Union[chat_pb2.Message, StreamEnd, StreamFailure]


class Member:
    def __init__(self, user: str = "") -> None:
        self.user = user
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.dropped = 0

    def offer(self, message: chat_pb2.Message) -> bool:
        """Queues without waiting; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            return False


class RoomHub:
    def __init__(self) -> None:
        self._rooms: dict[str, set[Member]] = collections.defaultdict(set)

    def join(self, room: str, member: Member) -> None:
        self._rooms[room].add(member)

    def leave(self, room: str, member: Member) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(member)
            if not members:
                del self._rooms[room]  # no empty rooms left behind

    def deliver(self, room: str, message: chat_pb2.Message, except_member: Member | None = None) -> int:
        """Queues the message for every member of the room but one (the sender, who
        gets its echo, or the member a JOIN/LEAVE is about); returns how many took it."""
        return sum(
            1 for member in list(self._rooms.get(room, ())) if member is not except_member and member.offer(message)
        )

    def count(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def dropped(self, room: str) -> int:
        """How many messages the room's current members have missed so far."""
        return sum(member.dropped for member in self._rooms.get(room, ()))


def room_name(room: str) -> str:
    return room or DEFAULT_ROOM


def now_timestamp() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def new_id() -> str:
    return str(uuid.uuid4())


def system_message(kind: int, user: str, room: str, content: str) -> chat_pb2.Message:
    """A server-made message about a room (welcome, keep-alive, JOIN, LEAVE)."""
    return chat_pb2.Message(id=new_id(), user=user, content=content, room=room, timestamp=now_timestamp(), type=kind)


def accept(incoming: chat_pb2.Message, room: str) -> chat_pb2.Message:
    """Checks a client's message and completes it as the server delivers it: its
    id (or a new one), the server's timestamp, the given room, CHAT when unset."""
    if not incoming.user:
        raise ChatRejected("user is required")
    kind = incoming.type or CHAT
    if kind == CHAT and not incoming.content:
        raise ChatRejected("content is required")
    return chat_pb2.Message(
        id=incoming.id or new_id(),
        user=incoming.user,
        content=incoming.content,
        room=room,
        timestamp=now_timestamp(),
        type=kind,
    )


def stamped(message: chat_pb2.Message, sequence: int) -> chat_pb2.Message:
    """The shared message as one stream sends it: a copy with that stream's sequence."""
    copy = chat_pb2.Message()
    copy.CopyFrom(message)
    copy.sequence = sequence
    return copy
