"""The server's wiring: reflection, health, graceful shutdown, keepalive,
message limits, the interceptor's stats and `rpc` records, and `main`."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2

from conftest import eventually
from polystream.config import ServerConfig
from polystream.events.v1 import events_pb2 as pb
from polystream.events.v1 import events_pb2_grpc as pb_grpc
from polystream.server import server_options
from polystream.stream_guard import StreamGuard
from polystream.vendor import grpc_health_v1_pb2 as health_pb
from polystream.vendor import grpc_health_v1_pb2_grpc as health_grpc
from polystream.vendor import grpc_reflection_v1_pb2 as refl_pb

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]
SERVICES = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "polystream.chat.v1.ChatService",
    "polystream.events.v1.EventService",
    "polystream.updates.v1.StreamService",
]


# --- reflection ---


async def reflect(channel, *requests: refl_pb.ServerReflectionRequest, version="v1") -> list[refl_pb.ServerReflectionResponse]:
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(
        method,
        request_serializer=refl_pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=refl_pb.ServerReflectionResponse.FromString,
    )(iter(requests))
    return [response async for response in call]


def files_of(response: refl_pb.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    return [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in response.file_descriptor_response.file_descriptor_proto]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_services_and_serves_descriptors(start_server, open_channel, version):
    channel = open_channel((await start_server()).address)
    listing, by_symbol, by_method, by_file, again, missing = await reflect(
        channel,
        refl_pb.ServerReflectionRequest(list_services=""),
        refl_pb.ServerReflectionRequest(file_containing_symbol="polystream.events.v1.EventService"),
        refl_pb.ServerReflectionRequest(file_containing_symbol="polystream.chat.v1.ChatService.Chat"),
        refl_pb.ServerReflectionRequest(file_by_filename="polystream/updates/v1/updates.proto"),
        refl_pb.ServerReflectionRequest(file_containing_symbol="polystream.events.v1.Event"),
        refl_pb.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        version=version,
    )
    assert sorted(s.name for s in listing.list_services_response.service) == SERVICES

    events_files = files_of(by_symbol)
    assert events_files[0].name == "polystream/events/v1/events.proto"
    assert {"google/protobuf/any.proto", "google/protobuf/timestamp.proto"} <= {f.name for f in events_files[1:]}
    assert "EventService" in [s.name for s in events_files[0].service]
    # json_name as protoc sets it, so grpcurl prints the same JSON names as against Go.
    json_names = {(m.name, f.name): f.json_name for m in events_files[0].message_type for f in m.field}
    assert json_names[("SubscribeRequest", "client_id")] == "clientId"
    assert json_names[("BroadcastResponse", "event_id")] == "eventId"
    assert files_of(by_method)[0].name == "polystream/chat/v1/chat.proto"
    assert files_of(by_file)[0].package == "polystream.updates.v1"
    assert [f.name for f in files_of(again)] == ["polystream/events/v1/events.proto"], "dependencies go once per stream"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.error_response.error_message == "symbol no.such.Symbol not found"
    assert missing.original_request.file_containing_symbol == "no.such.Symbol"


async def test_reflection_describes_itself_in_both_versions(start_server, open_channel):
    channel = open_channel((await start_server()).address)
    (v1alpha,) = await reflect(
        channel, refl_pb.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1alpha.ServerReflection")
    )
    (file,) = files_of(v1alpha)
    assert file.package == "grpc.reflection.v1alpha"
    assert file.service[0].method[0].input_type == ".grpc.reflection.v1alpha.ServerReflectionRequest"


@pytest.mark.skipif(shutil.which("grpcurl") is None and not os.path.exists(os.path.expanduser("~/go/bin/grpcurl")), reason="grpcurl not installed")
async def test_grpcurl_lists_and_describes(start_server):
    grpcurl = shutil.which("grpcurl") or os.path.expanduser("~/go/bin/grpcurl")
    server = await start_server()

    async def run(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            grpcurl, "-plaintext", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        return out.decode()

    assert sorted((await run(server.address, "list")).split()) == SERVICES
    described = await run(server.address, "describe", "polystream.events.v1.EventService")
    assert "rpc Subscribe ( .polystream.events.v1.SubscribeRequest ) returns ( stream .polystream.events.v1.Event );" in described
    published = await run("-d", '{"event": {"type": "via.grpcurl"}}', server.address, "polystream.events.v1.EventService/Broadcast")
    assert '"sequence": "1"' in published


# --- health ---


async def test_health_reports_serving_then_not_serving_on_shutdown(start_server, open_channel):
    server = await start_server()
    health = health_grpc.HealthStub(open_channel(server.address))
    for name in ("", "polystream.events.v1.EventService", "polystream.updates.v1.StreamService", "polystream.chat.v1.ChatService"):
        response = await health.Check(health_pb.HealthCheckRequest(service=name))
        assert response.status == health_pb.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb.HealthCheckRequest(service="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    unknown = health.Watch(health_pb.HealthCheckRequest(service="nope"))
    assert (await unknown.read()).status == health_pb.HealthCheckResponse.SERVICE_UNKNOWN
    watch = health.Watch(health_pb.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(server.stop())
    assert (await watch.read()).status == health_pb.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch.read()
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    await stopping


# --- graceful shutdown ---


async def test_graceful_shutdown_ends_streams_with_unavailable_and_lets_unary_calls_finish(start_server, open_channel):
    server = await start_server(backpressure="block", queue_size=1, publish_timeout=2.0, shutdown_grace=3.0)
    stub = pb_grpc.EventServiceStub(open_channel(server.address, [("grpc.http2.bdp_probe", 0)]))
    stalled = stub.Subscribe(pb.SubscribeRequest(client_id="stalled"))
    await stalled.initial_metadata()
    # Two streams parked on their queues (their filters match nothing published here).
    reading = stub.Subscribe(pb.SubscribeRequest(client_id="idle", event_types=["other"]))
    await reading.initial_metadata()
    multiple = stub.SubscribeMultiple()
    await multiple.write(pb.SubscribeRequest(client_id="multi", event_types=["other"]))
    await multiple.initial_metadata()
    # Fill the stalled stream until a Broadcast has to wait (policy block): a unary call in flight.
    in_flight = None
    for _ in range(100):
        attempt = asyncio.ensure_future(stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="t", data="x" * 16_000))))
        done, _ = await asyncio.wait({attempt}, timeout=0.5)
        if not done:
            in_flight = attempt
            break
    assert in_flight is not None
    assert server.stats()[1] == 3

    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 3.0 + 1.0, "stopped within --shutdown-grace plus one second"
    response = await in_flight
    assert response.sequence > 0, "the unary call finished normally"
    for call in (reading, multiple):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    # The stalled stream was parked in a write the client never reads, so the
    # grace period ran out and grpc cancelled it: also UNAVAILABLE.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stalled:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert server.stats()[1] == 0


# --- keepalive and limits ---


def test_server_options_follow_the_config():
    options = dict(server_options(ServerConfig(keepalive_time=30, keepalive_timeout=10, keepalive_min_time=5, max_concurrent_streams=7, max_message_size=1000)))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 5_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 5_000
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"] == 1000
    assert "grpc.max_concurrent_streams" not in dict(server_options(ServerConfig()))


FREQUENT_PINGS = [
    ("grpc.keepalive_time_ms", 100),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


async def hold_idle_stream(server, open_channel, seconds: float) -> grpc.aio.UnaryStreamCall:
    stub = pb_grpc.EventServiceStub(open_channel(server.address, FREQUENT_PINGS))
    call = stub.Subscribe(pb.SubscribeRequest(client_id="idle", heartbeat_interval=3600))
    await call.initial_metadata()
    await asyncio.sleep(seconds)  # the point is to stay idle for many ping periods
    return call


async def test_keepalive_pings_at_the_min_time_do_not_earn_goaway(start_server, open_channel):
    server = await start_server(keepalive_min_time=0.05)
    call = await hold_idle_stream(server, open_channel, 1.5)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="still.open")))
    assert (await asyncio.wait_for(call.read(), 5)).type == "still.open"


async def test_keepalive_pings_faster_than_the_min_time_earn_goaway(start_server, open_channel):
    """The control for the test above: the enforcement is real."""
    server = await start_server(keepalive_min_time=10.0)
    call = await hold_idle_stream(server, open_channel, 1.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_messages_over_the_max_size_are_refused(start_server, open_channel):
    server = await start_server(max_message_size=1024)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="big", data="x" * 2048)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- interceptor: stats and the "rpc" record ---


async def test_each_rpc_logs_method_and_code_and_is_counted(start_server, open_channel, records):
    server = await start_server()
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    requests_before = server.stats()[0]
    await stub.Broadcast(pb.BroadcastRequest(event=pb.Event(type="ok")))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Broadcast(pb.BroadcastRequest())
    call = stub.Subscribe(pb.SubscribeRequest(client_id="c"))
    await call.initial_metadata()
    assert server.stats() == (requests_before + 3, 1)
    call.cancel()
    await eventually(lambda: server.stats()[1] == 0, what="stream no longer counted")
    broadcast = "/polystream.events.v1.EventService/Broadcast"
    subscribe = "/polystream.events.v1.EventService/Subscribe"
    await eventually(lambda: len(records.rpcs()) >= 3, what="three rpc records")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Subscribe(pb.SubscribeRequest(client_id="d"), timeout=0.2).read()
    await eventually(lambda: len(records.rpcs()) >= 4, what="four rpc records")
    assert records.rpcs()[:4] == [
        (broadcast, "OK"),
        (broadcast, "INVALID_ARGUMENT"),
        (subscribe, "CANCELLED"),
        (subscribe, "DEADLINE_EXCEEDED"),
    ]
    assert all(r.levelno == logging.INFO and r.name == "polystream.server" for r in records.records if r.getMessage() == "rpc")


# --- python -m polystream serve ---


def test_main_prints_the_address_and_stops_gracefully_on_sigterm(tmp_path):
    code = "import sys; from polystream.server import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR), "POLYSTREAM_PORT": "50999"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--data-dir", str(tmp_path), "--shutdown-grace", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("polystream listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert port not in (0, 50999), "--port beats POLYSTREAM_PORT and 0 picks a free port"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 1 + 1
        assert (tmp_path / "events.db").exists()
    finally:
        process.kill()
        process.communicate()  # reaps it and closes the pipes


def test_main_rejects_bad_flags_with_exit_2():
    code = "import sys; from polystream.server import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}
    result = subprocess.run([sys.executable, "-c", code, "--backpressure", "sometimes"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2
    assert "--backpressure must be one of" in result.stderr


# --- the shutdown guard with every handler shape ---


async def test_shutdown_guard_ends_every_kind_of_stream_with_unavailable(open_channel):
    """Handlers of each shape (async generators, context.write, client
    streaming, bidi), parked on something of their own, all end with the
    contract's UNAVAILABLE once shutdown begins."""
    guard = StreamGuard(logging.getLogger("polystream.server"))
    server = grpc.aio.server(interceptors=(guard,))
    cleaned_up = []

    async def park(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(name)

    async def generator(request, context):
        yield b"first"
        await park("generator")

    async def writer(request, context):
        await context.write(b"first")
        await park("writer")

    async def upload(request_iterator, context):
        async for _ in request_iterator:
            pass
        return b"done"

    async def bidi(request_iterator, context):
        async for request in request_iterator:
            yield request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Shapes",
                {
                    "Generator": grpc.unary_stream_rpc_method_handler(generator),
                    "Writer": grpc.unary_stream_rpc_method_handler(writer),
                    "Upload": grpc.stream_unary_rpc_method_handler(upload),
                    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        channel = open_channel(f"127.0.0.1:{port}")
        generator_call = channel.unary_stream("/test.Shapes/Generator")(b"")
        writer_call = channel.unary_stream("/test.Shapes/Writer")(b"")
        assert await generator_call.read() == b"first" and await writer_call.read() == b"first"
        upload_call = channel.stream_unary("/test.Shapes/Upload")()
        await upload_call.write(b"a")
        bidi_call = channel.stream_stream("/test.Shapes/Bidi")()
        await bidi_call.write(b"b")
        assert await bidi_call.read() == b"b"
        await eventually(lambda: guard.stats()[1] == 4, what="four open streams")

        guard.begin_shutdown()
        for call in (generator_call, writer_call, bidi_call):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upload_call
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        await eventually(lambda: guard.stats()[1] == 0, what="no open streams")
        assert sorted(cleaned_up) == ["generator", "writer"], "handlers' cleanup ran"
        late = channel.unary_stream("/test.Shapes/Generator")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await late.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "no new stream once shutdown began"
    finally:
        await server.stop(None)


async def test_a_port_in_use_is_an_error(start_server):
    taken = await start_server()
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken.port}"):
        await start_server(port=taken.port)


async def test_an_unusable_data_dir_fails_the_start_cleanly(start_server, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    handlers = list(logging.getLogger("polystream").handlers)
    with pytest.raises(OSError):
        await start_server(data_dir=str(not_a_dir))
    assert logging.getLogger("polystream").handlers == handlers


async def test_graceful_shutdown_ends_the_long_lived_streams_of_every_service(start_server, open_channel):
    from polystream.chat.v1 import chat_pb2, chat_pb2_grpc
    from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

    server = await start_server(shutdown_grace=2.0)
    channel = open_channel(server.address)
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    updates = updates_pb2_grpc.StreamServiceStub(channel)
    events = pb_grpc.EventServiceStub(channel)

    messages = chat.SubscribeMessages(chat_pb2.SubscribeRequest(room="r", user="ann"))
    await messages.read()  # the welcome
    bidi = chat.Chat()
    await bidi.write(chat_pb2.Message(user="bob", content="hi", room="r"))
    await bidi.read()  # the echo
    upload = chat.UploadMessages()
    await upload.write(chat_pb2.Message(user="cid", content="one", room="r"))
    metrics = chat.StreamMetrics(chat_pb2.MetricsRequest(interval_seconds=60))
    await metrics.read()
    topics = updates.SubscribeToUpdates(updates_pb2.SubscribeRequest(topics=["t"], client_id="u"))
    await topics.initial_metadata()
    job = await updates.StartJob(updates_pb2.StartJobRequest(steps=1000, step_duration_ms=60_000))
    watch = updates.WatchJobProgress(updates_pb2.JobRequest(job_id=job.job_id))
    await watch.read()
    tail = updates.TailLogs(updates_pb2.LogRequest(follow=True))
    await tail.initial_metadata()
    subscribe = events.Subscribe(pb.SubscribeRequest(client_id="e"))
    await subscribe.initial_metadata()
    await eventually(lambda: server.stats()[1] == 8, what="eight open streams")

    await server.stop()
    for name, call in [("SubscribeMessages", messages), ("Chat", bidi), ("StreamMetrics", metrics), ("SubscribeToUpdates", topics),
                       ("WatchJobProgress", watch), ("TailLogs", tail), ("Subscribe", subscribe)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down"), name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")


async def test_max_concurrent_streams_makes_extra_calls_wait(start_server, open_channel):
    server = await start_server(max_concurrent_streams=1)
    stub = pb_grpc.EventServiceStub(open_channel(server.address))
    first = stub.Subscribe(pb.SubscribeRequest(client_id="one"))
    await first.initial_metadata()
    second = stub.Subscribe(pb.SubscribeRequest(client_id="two"))
    waiting = asyncio.ensure_future(second.initial_metadata())
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done, "a second stream on the connection started beyond the limit"
    first.cancel()
    await asyncio.wait_for(waiting, 5)  # admitted once the first ended
    second.cancel()
