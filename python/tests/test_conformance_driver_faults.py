"""The Python driver's self-test faults (docs/contract.md, "Driver faults").

Each fault is shown to change what the driver does: the same Run against the
same small scripted server, with and without the fault. The driver runs
in-process and is called over gRPC like the harness does; the flag itself is
checked on a real `python3 -m polystream.conformance_driver` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # python/, for `import polystream`

import grpc  # noqa: E402
import pytest  # noqa: E402

from polystream import conformance_driver  # noqa: E402
from polystream.conformance.v1 import driver_pb2 as d  # noqa: E402
from polystream.conformance.v1 import driver_pb2_grpc  # noqa: E402
from polystream.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]
REFUSAL = 'must be one of no-deadline, retry-all, no-backoff, blind; got "x"'
BANNER = "SELF-TEST FAULT ACTIVE: this driver is deliberately defective"


@pytest.fixture
async def driver():
    """driver(fault) -> a ClientDriver stub for an in-process driver with that fault."""
    servers, channels = [], []

    async def start(fault: str = ""):
        srv = grpc.aio.server()
        driver_pb2_grpc.add_ClientDriverServicer_to_server(conformance_driver.Driver(fault), srv)
        port = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        servers.append(srv)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return driver_pb2_grpc.ClientDriverStub(channel)

    yield start
    for channel in channels:
        await channel.close()
    for srv in servers:
        await srv.stop(None)


class Scripted(events_pb2_grpc.EventServiceServicer):
    """Subscribe plays `subscribe` on every call (counted); Broadcast answers
    after `broadcast_delay` seconds."""

    def __init__(self, subscribe=None, broadcast_delay: float = 0.0) -> None:
        self.subscribe = subscribe
        self.broadcast_delay = broadcast_delay
        self.calls = 0

    async def Subscribe(self, request, context):
        self.calls += 1
        async for event in self.subscribe(request, context):
            yield event

    async def Broadcast(self, request, context):
        await asyncio.sleep(self.broadcast_delay)
        return events_pb2.BroadcastResponse(event_id="e1")


@pytest.fixture
def fake(serve_events):
    """`await fake(servicer, options=())` -> the address of a scripted EventService."""
    return serve_events


async def run_all(stub, request: d.RunRequest) -> list[d.Observation]:
    observations = [o async for o in stub.Run(request, timeout=30)]
    assert observations and observations[-1].HasField("finished"), observations
    return observations


def disconnects(obs) -> list[d.Disconnected]:
    return [o.disconnected for o in obs if o.HasField("disconnected")]


def refusing(code: grpc.StatusCode):
    async def script(request, context):
        await context.abort(code, "refused")
        yield  # pragma: no cover

    return script


async def silent(request, context):
    await asyncio.sleep(60)
    yield  # pragma: no cover


# ---------------------------------------------------------------- the flag


def _driver_process(args, env_fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "POLYSTREAM_DRIVER_FAULT": env_fault}
    return subprocess.Popen([sys.executable, "-m", "polystream.conformance_driver", *args], cwd=PYTHON_DIR,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("args,env_fault", [(["--fault", "x"], ""), ([], "x")])
def test_unknown_fault_is_refused(args, env_fault):
    proc = _driver_process(["--port", "0", *args], env_fault)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert stderr == f"--fault {REFUSAL}\n"


@pytest.mark.parametrize("args,env_fault,fault", [(["--fault", "blind"], "", "blind"), ([], "retry-all", "retry-all")])
def test_fault_banner(args, env_fault, fault):
    proc = _driver_process(["--host", "127.0.0.1", "--port", "0", *args], env_fault)
    try:
        assert proc.stderr.readline() == f"{BANNER} (fault={fault})\n"
    finally:
        proc.terminate()
        proc.wait(10)


def test_check_fault():
    assert [conformance_driver.check_fault(f) for f in conformance_driver.FAULTS] == list(conformance_driver.FAULTS)
    assert conformance_driver.check_fault("") == ""
    with pytest.raises(ValueError) as caught:
        conformance_driver.check_fault("x")
    assert str(caught.value) == f"--fault {REFUSAL}"


# ---------------------------------------------------------------- no-deadline


@pytest.mark.parametrize("fault,want", [("", "DEADLINE_EXCEEDED"), ("no-deadline", "OK")])
async def test_no_deadline(driver, fake, fault, want):
    async def late_event(request, context):
        await asyncio.sleep(0.3)
        yield events_pb2.Event(sequence=1, id="e1", type="t")

    target = await fake(Scripted(late_event, broadcast_delay=0.3))
    stub = await driver(fault)
    requests = {
        "unary": d.RunRequest(target=target, deadline_ms=1, unary=d.Unary(
            method="/polystream.events.v1.EventService/Broadcast", request_json="{}")),
        "subscribe": d.RunRequest(target=target, deadline_ms=50, subscribe=d.Subscribe(
            request=events_pb2.SubscribeRequest(client_id="c"))),
        "resilient": d.RunRequest(target=target, deadline_ms=50, subscribe=d.Subscribe(
            request=events_pb2.SubscribeRequest(client_id="c"), resilient=True, stop_after=1)),
    }
    got = {name: (await run_all(stub, req))[-1].finished.code for name, req in requests.items()}
    assert got == {name: want for name in requests}


async def test_no_deadline_against_a_real_server(driver, start_server):
    """A unary call with deadline_ms 1 succeeds only because it has no deadline."""
    running = await start_server()
    body = {"event": {"type": "t", "data": "{}"}, "target_channels": ["no-deadline"]}
    obs = await run_all(await driver("no-deadline"), d.RunRequest(target=running.address, deadline_ms=1, unary=d.Unary(
        method="/polystream.events.v1.EventService/Broadcast", request_json=json.dumps(body))))
    assert obs[-1].finished.code == "OK", obs
    assert json.loads(obs[-1].finished.response_json)["event_id"]


# ---------------------------------------------------------------- retry-all


@pytest.mark.parametrize("fault,calls", [("", 1), ("retry-all", 3)])
async def test_retry_all(driver, fake, fault, calls):
    servicer = Scripted(refusing(grpc.StatusCode.INVALID_ARGUMENT))
    target = await fake(servicer)
    obs = await run_all(await driver(fault), d.RunRequest(target=target, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"), resilient=True,
        backoff=d.Backoff(base_ms=10, max_ms=50, multiplier=2, max_retries=2))))
    assert obs[-1].finished.code == "INVALID_ARGUMENT"
    gone = disconnects(obs)
    assert servicer.calls == calls and len(gone) == calls, obs
    assert [(g.code, g.will_retry) for g in gone] == [("INVALID_ARGUMENT", i < calls - 1) for i in range(calls)]


# ---------------------------------------------------------------- no-backoff


@pytest.mark.parametrize("fault", ["", "no-backoff"])
async def test_no_backoff(driver, fake, fault):
    target = await fake(Scripted(refusing(grpc.StatusCode.UNAVAILABLE)))
    obs = await run_all(await driver(fault), d.RunRequest(target=target, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c"), resilient=True,
        backoff=d.Backoff(base_ms=20, max_ms=2000, multiplier=3, max_retries=4))))
    assert obs[-1].finished.code == "UNAVAILABLE"
    delays = [g.delay_ms for g in disconnects(obs) if g.will_retry]
    assert len(delays) == 4, obs
    if fault:
        assert delays == [20, 20, 20, 20]
    else:  # retry 4 waits 20 * 3**3 = 540 ms +-20 % jitter
        assert delays[3] >= 400, delays


# ---------------------------------------------------------------- blind


@pytest.mark.parametrize("fault,stalled", [("", True), ("blind", False)])
async def test_blind_has_no_watchdog(driver, fake, fault, stalled):
    """A silent stream (heartbeat 1 s) is given up after 2 s by the watchdog;
    blind waits on it until the deadline."""
    target = await fake(Scripted(silent))
    obs = await run_all(await driver(fault), d.RunRequest(target=target, deadline_ms=3500, subscribe=d.Subscribe(
        request=events_pb2.SubscribeRequest(client_id="c", heartbeat_interval=1), resilient=True,
        backoff=d.Backoff(base_ms=10, max_retries=-1))))
    assert obs[-1].finished.code == "DEADLINE_EXCEEDED", obs
    assert any(g.code == "UNAVAILABLE" and g.will_retry for g in disconnects(obs)) == stalled, obs


class PingCounter:
    """A TCP proxy that counts the HTTP/2 PING frames (not ACKs) its clients send."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.pings = 0
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader, writer) -> None:
        host, port = self.upstream.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self.tasks += [asyncio.ensure_future(self._pump(reader, up_writer, count=True)),
                       asyncio.ensure_future(self._pump(up_reader, writer, count=False))]

    async def _pump(self, reader, writer, count: bool) -> None:
        buffer, preface = b"", 24
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if not count:
                    continue
                buffer += data
                if preface:
                    skipped = min(preface, len(buffer))
                    buffer, preface = buffer[skipped:], preface - skipped
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    if buffer[3] == 0x6 and not buffer[4] & 0x1:  # PING without ACK
                        self.pings += 1
                    buffer = buffer[9 + length:]
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("fault,pings", [("", True), ("blind", False)])
async def test_blind_sends_no_keepalive_pings(driver, fake, fault, pings):
    # The server accepts frequent pings, so only the client decides.
    target = await fake(Scripted(silent), options=[
        ("grpc.http2.min_ping_interval_without_data_ms", 10),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    proxy = PingCounter(target)
    address = await proxy.start()
    try:
        obs = await run_all(await driver(fault), d.RunRequest(
            target=address, deadline_ms=1500, keepalive_time_ms=200,
            subscribe=d.Subscribe(request=events_pb2.SubscribeRequest(client_id="c"))))
    finally:
        await proxy.close()
    assert obs[-1].finished.code == "DEADLINE_EXCEEDED", obs
    assert (proxy.pings > 0) == pings, f"fault {fault!r}: the client sent {proxy.pings} pings in 1.5 idle seconds"
