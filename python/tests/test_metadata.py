"""Metadata echo (docs/contract.md, "Metadata"): every RPC of every service,
health and reflection included, echoes `x-request-id` into its response
headers and `x-echo-trailer` into its trailers, whatever way it ends; the
first value of a repeated header; nothing when absent or under the
no-metadata self-test fault."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from polystream.chat.v1 import chat_pb2, chat_pb2_grpc
from polystream.events.v1 import events_pb2 as pb
from polystream.events.v1 import events_pb2_grpc as pb_grpc
from polystream.updates.v1 import updates_pb2, updates_pb2_grpc
from polystream.vendor import grpc_health_v1_pb2 as health_pb
from polystream.vendor import grpc_health_v1_pb2_grpc as health_grpc
from polystream.vendor import grpc_reflection_v1_pb2 as reflection_pb2
from polystream.vendor import grpc_reflection_v1_pb2_grpc as reflection_pb2_grpc

ECHO = (("x-request-id", "req-1"), ("x-echo-trailer", "trail-1"))


def _value(metadata, key: str):
    values = [v for k, v in (metadata or ()) if k == key]
    assert len(values) <= 1, (key, values)
    return values[0] if values else None


async def _outcome(call) -> tuple[grpc.StatusCode, object, object]:
    """(code, response headers, trailers) of a finished call (unary or stream)."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.initial_metadata(), error.trailing_metadata()
    return await call.code(), await call.initial_metadata(), await call.trailing_metadata()


def _calls(channel: grpc.aio.Channel, metadata) -> dict[str, tuple[object, grpc.StatusCode]]:
    """One call of each kind, OK and error, with the code it must end with."""
    events = pb_grpc.EventServiceStub(channel)
    updates = updates_pb2_grpc.StreamServiceStub(channel)
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    health = health_grpc.HealthStub(channel)
    ok, invalid = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT

    async def one_subscription():  # then half-close: ends with OK
        yield pb.SubscribeRequest(client_id="m")

    async def messages(*contents: str):
        for content in contents:
            yield chat_pb2.Message(user="u", room="m", content=content)

    return {
        "unary ok": (events.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t")), metadata=metadata), ok),
        "unary error": (events.Broadcast(pb.BroadcastRequest(), metadata=metadata), invalid),
        "server stream ok": (updates.TailLogs(updates_pb2.LogRequest(lines=3), metadata=metadata), ok),
        "server stream error": (events.Subscribe(pb.SubscribeRequest(), metadata=metadata), invalid),
        "subscribe (headers sent by the service) error": (
            updates.WatchJobProgress(updates_pb2.JobRequest(job_id="nope"), metadata=metadata),
            grpc.StatusCode.NOT_FOUND,
        ),
        "bidi ok": (events.SubscribeMultiple(one_subscription(), metadata=metadata), ok),
        "bidi error": (chat.Chat(messages(""), metadata=metadata), invalid),
        "client stream ok": (chat.UploadMessages(messages("a", "b"), metadata=metadata), ok),
        "client stream error": (chat.UploadMessages(messages("a", ""), metadata=metadata), invalid),
        "health ok": (health.Check(health_pb.HealthCheckRequest(), metadata=metadata), ok),
        "health error": (health.Check(health_pb.HealthCheckRequest(service="nope"), metadata=metadata), grpc.StatusCode.NOT_FOUND),
    }


@pytest.mark.parametrize("fault", ["", "wrong-status"])  # wrong-status: aborts through its context wrapper
async def test_every_rpc_echoes_request_id_and_trailer_whatever_way_it_ends(start_server, open_channel, fault):
    server = await start_server(fault=fault)
    channel = open_channel(server.address)
    for name, (call, code) in _calls(channel, ECHO).items():
        got_code, headers, trailers = await asyncio.wait_for(_outcome(call), 10)
        assert got_code == code, name
        assert _value(headers, "x-request-id") == "req-1", name
        assert _value(trailers, "x-echo-trailer") == "trail-1", name
        assert _value(headers, "x-echo-trailer") is None and _value(trailers, "x-request-id") is None, name


async def test_reflection_echoes_too(start_server, open_channel):
    server = await start_server()
    stub = reflection_pb2_grpc.ServerReflectionStub(open_channel(server.address))

    async def one():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    call = stub.ServerReflectionInfo(one(), metadata=ECHO)
    code, headers, trailers = await asyncio.wait_for(_outcome(call), 10)
    assert (code, _value(headers, "x-request-id"), _value(trailers, "x-echo-trailer")) == (grpc.StatusCode.OK, "req-1", "trail-1")


async def test_streams_carry_the_request_id_in_the_headers_they_send_before_any_message(start_server, open_channel):
    # Subscribe sends its headers itself once registered: the echo goes with them.
    server = await start_server()
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    call = stub.Subscribe(pb.SubscribeRequest(client_id="h"), metadata=ECHO)
    headers = await asyncio.wait_for(call.initial_metadata(), 5)
    assert _value(headers, "x-request-id") == "req-1"
    call.cancel()


async def test_a_repeated_header_is_echoed_with_its_first_value(start_server, open_channel):
    server = await start_server()
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    metadata = (("x-request-id", "first"), ("x-echo-trailer", "t1"), ("x-request-id", "second"), ("x-echo-trailer", "t2"))
    call = stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t")), metadata=metadata)
    await call
    assert _value(await call.initial_metadata(), "x-request-id") == "first"
    assert _value(await call.trailing_metadata(), "x-echo-trailer") == "t1"


@pytest.mark.parametrize("fault,metadata", [("", ()), ("no-metadata", ECHO)])
async def test_nothing_is_echoed_without_the_headers_or_under_no_metadata(start_server, open_channel, fault, metadata):
    server = await start_server(fault=fault)
    channel = open_channel(server.address)
    for name, (call, code) in _calls(channel, metadata).items():
        got_code, headers, trailers = await asyncio.wait_for(_outcome(call), 10)
        assert got_code == code, name
        for key in ("x-request-id", "x-echo-trailer"):
            assert _value(headers, key) is None and _value(trailers, key) is None, (name, key)
