"""The Python conformance driver (polystream.conformance_driver).

The driver runs in-process on 127.0.0.1 port 0 and is called over gRPC like
the harness does. Scenarios run against the real servers, each where it
exists: the Python server (`python3 -m polystream serve`) and the Go server
($POLYSTREAM_GO_BIN, as `make test-python` sets it). Headers, trailers,
retries and cancellation run against a small scripted EventService.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # python/, for `import polystream`

import grpc  # noqa: E402
import pytest  # noqa: E402

from polystream import conformance_driver  # noqa: E402
from polystream.conformance.v1 import driver_pb2 as d  # noqa: E402
from polystream.conformance.v1 import driver_pb2_grpc  # noqa: E402
from polystream.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from polystream.updates.v1 import updates_pb2  # noqa: E402

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]


def _start_process(argv: list[str], cwd: pathlib.Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("polystream listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not print its address")


def _stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module", params=["python", "go"])
def server(request) -> str:
    """A real server's address (module-wide: tests use their own channels and ids)."""
    if request.param == "python":
        argv = [sys.executable, "-m", "polystream", "serve", "--host", "127.0.0.1", "--port", "0"]
    else:
        binary = os.environ.get("POLYSTREAM_GO_BIN", "")
        if not binary or not os.access(binary, os.X_OK):
            pytest.skip("no Go server binary (set POLYSTREAM_GO_BIN)")
        argv = [binary, "serve", "--host", "127.0.0.1", "--port", "0"]
    proc, address = _start_process(argv, PYTHON_DIR)
    yield address
    _stop_process(proc)


@pytest.fixture
async def driver():
    """A ClientDriver stub for an in-process driver."""
    srv = grpc.aio.server()
    driver_pb2_grpc.add_ClientDriverServicer_to_server(conformance_driver.Driver(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield driver_pb2_grpc.ClientDriverStub(channel)
    await channel.close()
    await srv.stop(None)


async def run_all(stub, request: d.RunRequest) -> list[d.Observation]:
    observations = [o async for o in stub.Run(request, timeout=30)]
    assert observations and observations[-1].HasField("finished"), observations
    stamps = [o.at_unix_nanos for o in observations]
    assert stamps == sorted(stamps)
    return observations


def finished(obs) -> d.Finished:
    return obs[-1].finished


def received(obs) -> list[d.Received]:
    return [o.received for o in obs if o.HasField("received")]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def broadcast(stub, target: str, channel: str, type_: str) -> str:
    body = {"event": {"type": type_, "data": "{}"}, "target_channels": [channel]}
    obs = await run_all(stub, d.RunRequest(target=target, unary=d.Unary(
        method="/polystream.events.v1.EventService/Broadcast", request_json=json.dumps(body))))
    assert finished(obs).code == "OK", obs
    return json.loads(finished(obs).response_json)["event_id"]


async def published(stub, target: str) -> tuple[str, list[str]]:
    """Three events on a fresh channel: resuming after the first replays the
    other two, so no test races the publisher."""
    channel = unique("ch")
    ids = [await broadcast(stub, target, channel, t) for t in ("user.created", "user.updated", "user.deleted")]
    return channel, ids


def skip_unimplemented(obs) -> None:
    if finished(obs).code == "UNIMPLEMENTED":
        pytest.skip("server does not implement this service yet")


# ---------------------------------------------------------------- real servers


async def test_subscribe_stop_after(driver, server):
    channel, ids = await published(driver, server)
    obs = await run_all(driver, d.RunRequest(target=server, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id=unique("c"), channel=channel, last_event_id=ids[0]),
        stop_after=2)))
    assert finished(obs).code == "OK"
    assert obs[0].HasField("connected")
    assert [r.id for r in received(obs) if r.sequence > 0] == ids[1:]
    first = received(obs)[0]
    assert json.loads(first.json)["channel"] == channel and first.type == "user.updated"


async def test_subscribe_cancel_after(driver, server):
    channel, ids = await published(driver, server)
    obs = await run_all(driver, d.RunRequest(target=server, cancel_after=1, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id=unique("c"), channel=channel, last_event_id=ids[0]))))
    assert finished(obs).code == "CANCELLED"
    assert len(received(obs)) == 1


async def test_subscribe_deadline(driver, server):
    start = time.monotonic()
    obs = await run_all(driver, d.RunRequest(target=server, deadline_ms=300, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id=unique("c"), channel=unique("quiet")))))
    assert finished(obs).code == "DEADLINE_EXCEEDED"
    assert 0.3 <= time.monotonic() - start < 5


async def test_subscribe_bad_request(driver, server):
    obs = await run_all(driver, d.RunRequest(target=server, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest())))
    assert (finished(obs).code, finished(obs).message) == ("INVALID_ARGUMENT", "client_id is required")


async def test_resilient_subscribe(driver, server):
    channel, ids = await published(driver, server)
    obs = await run_all(driver, d.RunRequest(target=server, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id=unique("c"), channel=channel, last_event_id=ids[0]),
        resilient=True, stop_after=2)))
    assert finished(obs).code == "OK"
    assert obs[0].connected == d.Connected(attempt=0, last_event_id=ids[0])
    assert [r.id for r in received(obs)] == ids[1:]


async def test_subscribe_multiple_half_close(driver, server):
    channel, ids = await published(driver, server)
    client = unique("c")
    obs = await run_all(driver, d.RunRequest(target=server, deadline_ms=10_000, subscribe_multiple=d.SubscribeMultiple(
        steps=[
            d.SubscribeMultiple.Step(request=events_pb2.SubscribeRequest(
                client_id=client, channel=channel, last_event_id=ids[0])),
            d.SubscribeMultiple.Step(request=events_pb2.SubscribeRequest(
                client_id=client, channel=channel, event_types=["order.*"]), after=2),
        ],
        stop_after=2)))
    assert finished(obs).code == "OK"  # half-closed at stop_after, then the server ended the stream
    assert [r.id for r in received(obs) if r.sequence > 0] == ids[1:]
    # The acknowledgement of step 2 may or may not beat the half-close: not checked here.


async def test_query(driver, server):
    obs = await run_all(driver, d.RunRequest(target=server, query=d.Query(
        request=updates_pb2.QueryRequest(query="SELECT * FROM large_table WHERE id <= 5", batch_size=2))))
    assert finished(obs).code == "OK"
    results = received(obs)
    assert [r.sequence for r in results] == [1, 2, 3]
    assert json.loads(results[-1].json)["is_last"] is True


async def test_query_read_delay_and_cancel_after(driver, server):
    start = time.monotonic()
    obs = await run_all(driver, d.RunRequest(target=server, read_delay_ms=100, cancel_after=3, query=d.Query(
        request=updates_pb2.QueryRequest(query="SELECT * FROM large_table", batch_size=10))))
    assert finished(obs).code == "CANCELLED"
    assert len(received(obs)) == 3
    assert time.monotonic() - start >= 0.3


async def test_watch_job(driver, server):
    obs = await run_all(driver, d.RunRequest(target=server, watch_job=d.WatchJob(
        start=updates_pb2.StartJobRequest(name="t", steps=3, step_duration_ms=20))))
    assert finished(obs).code == "OK"
    progress = received(obs)
    assert progress[-1].type == "JOB_STATUS_COMPLETED" and progress[0].id.startswith("job-")


async def test_watch_unknown_job(driver, server):
    obs = await run_all(driver, d.RunRequest(target=server, watch_job=d.WatchJob(job_id="nope")))
    assert finished(obs).code == "NOT_FOUND"


async def test_updates_stop_after(driver, server):
    topic = unique("topic")

    async def publish_until_cancelled() -> None:
        while True:
            await run_all(driver, d.RunRequest(target=server, unary=d.Unary(
                method="/polystream.updates.v1.StreamService/PublishUpdate",
                request_json=json.dumps({"topic": topic, "message": "hi"}))))
            await asyncio.sleep(0.05)

    publisher = asyncio.ensure_future(publish_until_cancelled())
    try:
        obs = await run_all(driver, d.RunRequest(target=server, deadline_ms=10_000, updates=d.Updates(
            request=updates_pb2.SubscribeRequest(topics=[topic], client_id=unique("c")), stop_after=1)))
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
    assert finished(obs).code == "OK"
    assert [r.sequence for r in received(obs)] == [1]


async def test_upload(driver, server):
    obs = await run_all(driver, d.RunRequest(target=server, upload=d.Upload(
        count=5, content_bytes=100, user="u", room=unique("room"))))
    skip_unimplemented(obs)
    assert finished(obs).code == "OK"
    assert [o.sent.count for o in obs if o.HasField("sent")] == [1, 2, 3, 4, 5]
    assert json.loads(finished(obs).response_json)["message_count"] == 5


@pytest.mark.parametrize("send_all", [False, True])
async def test_chat(driver, server, send_all):
    obs = await run_all(driver, d.RunRequest(target=server, deadline_ms=10_000, chat=d.Chat(
        count=3, user="u", room=unique("room"), send_all_then_close=send_all)))
    skip_unimplemented(obs)
    assert finished(obs).code == "OK"
    echoes = [json.loads(r.json)["content"] for r in received(obs) if r.type == "MESSAGE_TYPE_CHAT"]
    assert echoes == ["1", "2", "3"]


async def test_unary_error(driver, server):
    obs = await run_all(driver, d.RunRequest(target=server, unary=d.Unary(
        method="/polystream.events.v1.EventService/Broadcast", request_json="{}")))
    assert (finished(obs).code, finished(obs).message) == ("INVALID_ARGUMENT", "event is required")


# ---------------------------------------------------------------- malformed requests


@pytest.mark.parametrize("request_", [
    d.RunRequest(query=d.Query()),
    d.RunRequest(target="127.0.0.1:1"),
    d.RunRequest(target="127.0.0.1:1", unary=d.Unary(method="/x.Y/Z")),
    d.RunRequest(target="127.0.0.1:1", unary=d.Unary(method="/polystream.events.v1.EventService/Subscribe")),
    d.RunRequest(target="127.0.0.1:1", unary=d.Unary(
        method="/polystream.events.v1.EventService/Broadcast", request_json="{nope")),
], ids=["no target", "no scenario", "unknown method", "streaming", "bad json"])
async def test_malformed_run_request(driver, request_):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [o async for o in driver.Run(request_, timeout=10)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_flatten_drops_transport_headers():
    md = (("content-type", "application/grpc"), ("grpc-accept-encoding", "gzip"), ("x-a", "1"), ("x-a", "2"))
    assert conformance_driver.flatten(md) == {"x-a": "1, 2"}


# ---------------------------------------------------------------- scripted server


class ScriptedEvents(events_pb2_grpc.EventServiceServicer):
    """Subscribe plays one script (an async function) per call."""

    def __init__(self, *scripts) -> None:
        self.scripts = list(scripts)
        self.calls = 0

    async def Subscribe(self, request, context):
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        async for event in script(request, context):
            yield event


@pytest.fixture
def fake(serve_events):
    """`await fake(*scripts)` -> the address of a ScriptedEvents server."""
    return lambda *scripts: serve_events(ScriptedEvents(*scripts))


def event(seq: int, id_: str) -> events_pb2.Event:
    return events_pb2.Event(sequence=seq, id=id_, type="user.created")


async def test_headers_trailers_and_request_metadata(driver, fake):
    async def script(request, context):
        incoming = dict(context.invocation_metadata())
        await context.send_initial_metadata((("x-echo", incoming["x-test"]),))
        context.set_trailing_metadata((("x-trailer", "t"),))
        yield event(1, "e1")

    target = await fake(script)
    obs = await run_all(driver, d.RunRequest(target=target, metadata={"x-test": "v"}, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"))))
    assert finished(obs).code == "OK"
    assert dict(finished(obs).headers) == {"x-echo": "v"}
    assert dict(finished(obs).trailers) == {"x-trailer": "t"}
    assert obs[0].HasField("connected") and obs[1].received.id == "e1"


async def test_resilient_reconnects_with_backoff(driver, fake):
    resumed_from = []

    async def first(request, context):
        yield event(1, "e1")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")

    async def second(request, context):
        resumed_from.append(request.last_event_id)
        yield event(1, "e1")  # a duplicate: dropped by the client
        yield event(2, "e2")

    target = await fake(first, second)
    obs = await run_all(driver, d.RunRequest(target=target, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"), resilient=True, stop_after=2,
        backoff=d.Backoff(base_ms=20, max_ms=100, multiplier=2, max_retries=3))))
    kinds = [o.WhichOneof("kind") if not o.HasField("received") else o.received.id for o in obs]
    assert kinds == ["connected", "e1", "disconnected", "connected", "e2", "finished"], obs
    gone = obs[2].disconnected
    assert (gone.code, gone.message, gone.will_retry) == ("UNAVAILABLE", "server is shutting down", True)
    assert 0 < gone.delay_ms <= 30  # base 20 ms with jitter
    assert obs[3].connected == d.Connected(attempt=1, last_event_id="e1") and resumed_from == ["e1"]
    assert finished(obs).code == "OK"


async def test_resilient_gives_up_on_final_error(driver, fake):
    async def denied(request, context):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        yield  # pragma: no cover

    target = await fake(denied)
    obs = await run_all(driver, d.RunRequest(target=target, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"), resilient=True)))
    assert finished(obs).code == "PERMISSION_DENIED"
    gone = obs[-2].disconnected
    assert (gone.code, gone.will_retry) == ("PERMISSION_DENIED", False)


@pytest.mark.parametrize("resilient_", [False, True])
async def test_cancelling_run_cancels_the_call(driver, fake, resilient_):
    server_saw_cancel = asyncio.Event()

    async def script(request, context):
        context.add_done_callback(lambda _ctx: server_saw_cancel.set())
        yield event(1, "e1")
        await asyncio.sleep(30)

    target = await fake(script)
    call = driver.Run(d.RunRequest(target=target, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"), resilient=resilient_)))
    async for o in call:
        if o.HasField("received"):
            break
    call.cancel()
    await asyncio.wait_for(server_saw_cancel.wait(), 5)


async def test_resilient_deadline(driver, fake):
    async def script(request, context):
        yield event(1, "e1")
        await asyncio.sleep(30)

    target = await fake(script)
    obs = await run_all(driver, d.RunRequest(target=target, deadline_ms=300, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"), resilient=True)))
    assert [o.WhichOneof("kind") for o in obs] == ["connected", "received", "disconnected", "finished"]
    assert finished(obs).code == "DEADLINE_EXCEEDED"
    gone = obs[2].disconnected
    assert (gone.code, gone.will_retry) == ("DEADLINE_EXCEEDED", False)



async def test_a_cancelled_upload_is_never_a_half_close(driver, tmp_path):
    """The Go driver once half-closed after cancelling, and the half-close
    could reach the server first, which then ended the upload OK
    (docs/images.md); this is the Python twin of its test, repeated because
    such an end is a race. It runs against the Go server, whose `rpc` log
    records tell the two ends apart (grpcio ends a handler's request iterator
    alike on both, so a grpcio server cannot)."""
    binary = os.environ.get("POLYSTREAM_GO_BIN", "")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("no Go server binary (set POLYSTREAM_GO_BIN)")
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        address = proc.stdout.readline().split()[-1]
        runs = 20
        for _ in range(runs):
            obs = await run_all(driver, d.RunRequest(target=address, cancel_after=3, upload=d.Upload(
                count=1000, content_bytes=10, user="u", room="r")))
            assert finished(obs).code == "CANCELLED", obs
        method = "method=/polystream.chat.v1.ChatService/UploadMessages"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ends = [line.split("code=")[-1].strip() for line in log.read_text().splitlines()
                    if "msg=rpc" in line and method in line]
            if len(ends) == runs:
                break
            await asyncio.sleep(0.05)
        assert ends == ["CANCELLED"] * runs
    finally:
        _stop_process(proc)
