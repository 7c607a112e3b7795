"""Shared fixtures: real servers on 127.0.0.1 port 0 and real grpc.aio channels."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # python/, for `import polystream`

import asyncio  # noqa: E402
import logging  # noqa: E402
from typing import Awaitable, Callable  # noqa: E402

import grpc  # noqa: E402
import pytest  # noqa: E402

from polystream.config import ServerConfig  # noqa: E402
from polystream.server import RunningServer  # noqa: E402
from polystream.server import start_server as _start_server  # noqa: E402


@pytest.fixture
async def start_server() -> Callable[..., Awaitable[RunningServer]]:
    """`await start_server(**ServerConfig fields)` -> a running server on a free
    port; every server started is stopped at teardown."""
    servers: list[RunningServer] = []

    async def start(**overrides) -> RunningServer:
        config = ServerConfig(**{"host": "127.0.0.1", "port": 0, **overrides})
        running = await _start_server(config)
        servers.append(running)
        return running

    yield start
    for running in reversed(servers):
        await running.stop()


@pytest.fixture
async def open_channel() -> Callable[..., grpc.aio.Channel]:
    """`open_channel(address, options=...)` -> a grpc.aio channel closed at teardown."""
    channels: list[grpc.aio.Channel] = []

    def open_(address: str, options=()) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address, options=list(options))
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close()


async def eventually(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Awaits until `condition()` is true (polling a server-side state that has no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def expect_error(call, code: grpc.StatusCode, details: str) -> None:
    """Awaits a unary call (or any awaitable), or reads a stream to its end,
    and asserts it fails with exactly `code` and `details`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    assert (caught.value.code(), caught.value.details()) == (code, details)


async def take(call, count: int, timeout: float = 15.0) -> list:
    """The next `count` messages of a stream (fewer if it ends first); the
    timeout is a hang guard, never a speed assertion."""

    async def collect() -> list:
        got = []
        async for message in call:
            got.append(message)
            if len(got) == count:
                break
        return got

    return await asyncio.wait_for(collect(), timeout)


class Records(logging.Handler):
    """Collects the log records a handler receives."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def rpcs(self) -> list[tuple[str, str]]:
        """(method, code) of every `rpc` record."""
        return [(r.method, r.code) for r in self.records if r.getMessage() == "rpc"]

    def codes(self, method: str) -> list[str]:
        """The codes of the `rpc` records of one method."""
        return [r.code for r in self.records if r.getMessage() == "rpc" and r.method == method]


@pytest.fixture
def records() -> Records:
    """The records of the "polystream.server" logger during the test."""
    handler = Records()
    logging.getLogger("polystream.server").addHandler(handler)
    yield handler
    logging.getLogger("polystream.server").removeHandler(handler)


@pytest.fixture
async def serve_events():
    """`await serve_events(servicer, options=())` -> the address of an
    EventService fake (a scripted servicer) on 127.0.0.1; every one started
    is stopped at teardown."""
    from polystream.events.v1 import events_pb2_grpc

    servers: list[grpc.aio.Server] = []

    async def start(servicer, options=()) -> str:
        server = grpc.aio.server(options=list(options))
        events_pb2_grpc.add_EventServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)
