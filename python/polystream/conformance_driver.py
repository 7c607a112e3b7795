"""The conformance ClientDriver for the Python client (docs/images.md).

`python3 -m polystream.conformance_driver --port 50052` serves
polystream.conformance.v1.ClientDriver: the harness sends one scenario per Run
call, the driver performs it against the target with grpc.aio (or the
resilient subscriber of polystream.client) and streams back what the client
observed, as it happens. The conventions shared with the Go driver
(go/conformancedriver) are in docs/images.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Optional

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory, symbol_database

from polystream import client as resilient
from polystream.chat.v1 import chat_pb2, chat_pb2_grpc
from polystream.conformance.v1 import driver_pb2, driver_pb2_grpc
from polystream.events.v1 import events_pb2, events_pb2_grpc
from polystream.updates.v1 import updates_pb2, updates_pb2_grpc
from polystream.vendor import grpc_health_v1_pb2 as health_pb, grpc_health_v1_pb2_grpc as health_grpc

OK = grpc.StatusCode.OK.name
WINDOW_SIZE = 64 * 1024  # the client's fixed HTTP/2 receive window

# Self-test faults (docs/contract.md, "Driver faults"): each makes the driver
# deliberately defective, so the self-test can prove a client-side check
# fails against a bad client. Same names, order and refusal as the Go driver.
FAULTS = ("no-deadline", "retry-all", "no-backoff", "blind")
FAULT_BANNER = "SELF-TEST FAULT ACTIVE: this driver is deliberately defective"


def check_fault(name: str) -> str:
    """A --fault value ("" = no fault); ValueError with the exact refusal."""
    if name and name not in FAULTS:
        raise ValueError(f'--fault must be one of {", ".join(FAULTS)}; got "{name}"')
    return name


class _Stopped(Exception):
    """The client ended the call on purpose (stop_after): finished is OK."""


def to_json(message) -> str:
    """Protobuf JSON with proto field names, compact."""
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True),
        separators=(",", ":"),
        ensure_ascii=False,
    )


def flatten(metadata) -> dict[str, str]:
    """Metadata as a map; several values of a key joined with ", " in order.
    content-type and grpc-* keys belong to gRPC itself and are left out, so
    both drivers report the same application headers."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if key == "content-type" or key.startswith("grpc-"):
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _describe_event(e):
    return e.sequence, e.id, e.type


def _describe_plain(m):
    return m.sequence, "", ""


def _describe_job(p):
    return p.sequence, p.job_id, updates_pb2.JobStatus.Name(p.status)


def _describe_message(m):
    return m.sequence, m.id, chat_pb2.MessageType.Name(m.type)


_ids = 0
_RUN_ID = secrets.token_hex(6)


def new_id(i: int) -> str:
    """A message id unique across runs of this process."""
    global _ids
    _ids += 1
    return f"py-{_RUN_ID}-{_ids}-{i}"


class Run:
    """One Run call: its request, its output stream and the client's calls."""

    def __init__(self, request: driver_pb2.RunRequest, context: grpc.aio.ServicerContext, fault: str = "") -> None:
        self.req = request
        self.context = context
        self.fault = fault
        self.metadata = tuple(request.metadata.items())
        self.deadline = None
        if request.deadline_ms > 0 and fault != "no-deadline":
            self.deadline = time.monotonic() + request.deadline_ms / 1000
        self.lock = asyncio.Lock()  # context.write from several tasks
        self.received = 0
        self.cancelled = False  # cancel_after fired
        self.header = None
        self.connected = False  # connected{attempt 0} reported
        self.channel: Optional[grpc.aio.Channel] = None

    # -- plumbing -------------------------------------------------------------

    def channel_options(self) -> list[tuple[str, Any]]:
        # Fixed flow-control windows (no BDP growth), as in the Go driver: how
        # far a server can run ahead of a slow or cancelling client does not
        # depend on timing.
        options = [
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", WINDOW_SIZE),
        ]
        if self.fault == "blind":
            return options  # grpc core's client default: no keepalive pings
        options += resilient.KEEPALIVE_OPTIONS
        if self.req.keepalive_time_ms > 0:
            options = [o for o in options if o[0] != "grpc.keepalive_time_ms"]
            options.append(("grpc.keepalive_time_ms", int(self.req.keepalive_time_ms)))
        return options

    def timeout(self) -> Optional[float]:
        """What is left of deadline_ms for the next call (None = no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def call_kwargs(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": self.timeout()}

    async def emit(self, **kind) -> None:
        obs = driver_pb2.Observation(at_unix_nanos=time.time_ns(), **kind)
        async with self.lock:
            await self.context.write(obs)

    async def emit_received(self, message, describe) -> None:
        seq, id_, type_ = describe(message)
        await self.emit(received=driver_pb2.Received(sequence=seq, id=id_, type=type_, json=to_json(message)))

    async def emit_sent(self, count: int) -> None:
        await self.emit(sent=driver_pb2.Sent(count=count))

    async def emit_connected(self, attempt: int, last_event_id: str = "") -> None:
        await self.emit(connected=driver_pb2.Connected(attempt=attempt, last_event_id=last_event_id))

    async def emit_finished(self, code: str, message: str = "", headers=None, trailers=None, response=None) -> None:
        finished = driver_pb2.Finished(code=code, message=message)
        finished.headers.update(flatten(headers))
        finished.trailers.update(flatten(trailers))
        if response is not None and code == OK:
            finished.response_json = to_json(response)
        await self.emit(finished=finished)

    async def delay_read(self) -> None:
        if self.req.read_delay_ms > 0 and not self.cancelled:
            await asyncio.sleep(self.req.read_delay_ms / 1000)

    async def watch_header(self, call) -> None:
        """connected{attempt 0} when the response headers arrive on a live call."""
        try:
            self.header = await call.initial_metadata()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return
        if not call.done():
            await self.emit_connected_once()

    async def emit_connected_once(self) -> None:
        if not self.connected:
            self.connected = True
            await self.emit_connected(0)

    async def recv_loop(self, call, describe, on_message: Optional[Callable[[Any], Awaitable[bool]]] = None) -> None:
        """Reads a server stream until it ends: read_delay_ms before each read,
        a received observation per message, cancel_after. on_message returning
        True stops the call (raises _Stopped)."""
        header_task = asyncio.ensure_future(self.watch_header(call))
        try:
            while True:
                await self.delay_read()
                try:
                    message = await call.read()
                except asyncio.CancelledError:
                    if self.cancelled:  # our own cancel_after
                        return
                    raise
                except grpc.aio.AioRpcError:
                    return  # finish_call reports the status
                if message is grpc.aio.EOF:
                    return
                if self.cancelled:
                    continue
                await header_task
                await self.emit_connected_once()
                await self.emit_received(message, describe)
                self.received += 1
                if 0 < self.req.cancel_after <= self.received:
                    self.cancelled = True
                    call.cancel()
                    continue
                if on_message is not None and await on_message(message):
                    call.cancel()
                    raise _Stopped()
        finally:
            if not header_task.done():
                header_task.cancel()
            await asyncio.gather(header_task, return_exceptions=True)

    async def finish_call(self, call, response=None, stopped: bool = False) -> None:
        """Reports how a call ended, with its headers and trailers."""
        if stopped:
            await self.emit_finished(OK, headers=self.header)
            return
        code = await call.code()
        details = await call.details() or ""
        headers = self.header if self.header is not None else await call.initial_metadata()
        trailers = await call.trailing_metadata()
        await self.emit_finished(code.name, details if code != grpc.StatusCode.OK else "", headers, trailers, response)

    async def stream(self, call, describe, on_message=None) -> None:
        """A server stream read to its end and reported."""
        try:
            await self.recv_loop(call, describe, on_message)
        except _Stopped:
            await self.finish_call(call, stopped=True)
            return
        await self.finish_call(call)

    # -- scenarios (driver.proto), one per method -----------------------------

    async def subscribe(self, s: driver_pb2.Subscribe) -> None:
        """One plain EventService.Subscribe call: no retry, control events too."""
        call = events_pb2_grpc.EventServiceStub(self.channel).Subscribe(s.request, **self.call_kwargs())
        await self.stream(call, _describe_event, _stop_after_log_events(s.stop_after))

    async def subscribe_multiple(self, s: driver_pb2.SubscribeMultiple) -> None:
        """steps[0] at once, each later step once its `after` log events arrived
        since the previous step; at stop_after log events the client
        half-closes and reads until the server ends the stream."""
        call = events_pb2_grpc.EventServiceStub(self.channel).SubscribeMultiple(**self.call_kwargs())
        steps = list(s.steps)
        counts = {"since_step": 0, "total": 0, "closed": False}

        async def send_due() -> None:
            """Sends every step whose `after` is reached (an `after` of 0 goes
            with the step before it)."""
            while steps and counts["since_step"] >= steps[0].after:
                request = steps.pop(0).request
                counts["since_step"] = 0
                try:
                    await call.write(request)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    return  # the read that follows reports why

        if steps:
            steps[0] = driver_pb2.SubscribeMultiple.Step(request=steps[0].request)  # the first goes at once
            await send_due()

        async def on_event(e) -> bool:
            if e.sequence == 0:
                return False
            counts["since_step"] += 1
            counts["total"] += 1
            await send_due()
            if 0 < s.stop_after <= counts["total"] and not counts["closed"]:
                counts["closed"] = True
                await call.done_writing()
            return False

        await self.stream(call, _describe_event, on_event)

    async def updates(self, s: driver_pb2.Updates) -> None:
        """One StreamService.SubscribeToUpdates call."""
        call = updates_pb2_grpc.StreamServiceStub(self.channel).SubscribeToUpdates(s.request, **self.call_kwargs())
        seen = 0

        async def on_update(_u) -> bool:
            nonlocal seen
            seen += 1
            return 0 < s.stop_after <= seen

        await self.stream(call, _describe_plain, on_update)

    async def query(self, s: driver_pb2.Query) -> None:
        """One StreamService.StreamQueryResults call."""
        call = updates_pb2_grpc.StreamServiceStub(self.channel).StreamQueryResults(s.request, **self.call_kwargs())
        await self.stream(call, _describe_plain)

    async def watch_job(self, s: driver_pb2.WatchJob) -> None:
        """Starts a job first when job_id is empty, then WatchJobProgress."""
        stub = updates_pb2_grpc.StreamServiceStub(self.channel)
        job_id = s.job_id
        if not job_id:
            start = stub.StartJob(s.start, **self.call_kwargs())
            try:
                job_id = (await start).job_id
            except grpc.aio.AioRpcError:
                await self.finish_call(start)
                return
        call = stub.WatchJobProgress(updates_pb2.JobRequest(job_id=job_id), **self.call_kwargs())
        await self.stream(call, _describe_job)

    async def upload(self, s: driver_pb2.Upload) -> None:
        """ChatService.UploadMessages: count messages of content_bytes each, a
        sent observation after each write returned (writes wait for flow
        control). cancel_after counts sent messages here."""
        call = chat_pb2_grpc.ChatServiceStub(self.channel).UploadMessages(**self.call_kwargs())
        content = "x" * s.content_bytes
        response = None
        try:
            for i in range(1, s.count + 1):
                msg = chat_pb2.Message(id=new_id(i), user=s.user, room=s.room, content=content,
                                       type=chat_pb2.MESSAGE_TYPE_CHAT)
                await call.write(msg)
                await self.emit_sent(i)
                if 0 < self.req.cancel_after <= i:
                    self.cancelled = True
                    call.cancel()
                    break
            if not self.cancelled:
                await call.done_writing()
            response = await call
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the status says why
        except asyncio.CancelledError:
            if not self.cancelled:
                raise
        await self.finish_call(call, response)

    async def chat(self, s: driver_pb2.Chat) -> None:
        """ChatService.Chat. Ping-pong: message i+1 is sent once the echo of
        message i (same id) arrived; then the client half-closes and reads until
        the server ends the stream. send_all_then_close: all messages are sent
        while reading, then the client half-closes."""
        call = chat_pb2_grpc.ChatServiceStub(self.channel).Chat(**self.call_kwargs())

        def message(i: int):
            return chat_pb2.Message(id=new_id(i), user=s.user, room=s.room, content=str(i),
                                    type=chat_pb2.MESSAGE_TYPE_CHAT)

        if s.send_all_then_close:
            async def send_all() -> None:
                try:
                    for i in range(1, s.count + 1):
                        await call.write(message(i))
                        await self.emit_sent(i)
                    await call.done_writing()
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass

            sender = asyncio.ensure_future(send_all())
            try:
                await self.stream(call, _describe_message)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            return

        state = {"next": 1, "waiting": ""}

        async def send_next() -> None:
            i = state["next"]
            if i > s.count:
                state["waiting"] = ""
                try:
                    await call.done_writing()
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass
                return
            m = message(i)
            state["waiting"], state["next"] = m.id, i + 1
            try:
                await call.write(m)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return
            await self.emit_sent(i)

        async def on_message(m) -> bool:
            if state["waiting"] and m.id == state["waiting"]:
                await send_next()
            return False

        await send_next()
        await self.stream(call, _describe_message, on_message)

    async def unary(self, s: driver_pb2.Unary) -> None:
        """Any unary method by full name, the request in protobuf JSON; the
        response is reported in finished."""
        method = find_method(s.method)
        request = message_class(method.input_type)()
        try:
            json_format.Parse(s.request_json or "{}", request)
        except json_format.ParseError as exc:
            raise _BadRequest(f"request_json for {method.input_type.full_name}: {exc}") from None
        response_class = message_class(method.output_type)
        call = self.channel.unary_unary(
            s.method, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )(request, **self.call_kwargs())
        response = None
        try:
            response = await call
        except grpc.aio.AioRpcError:
            pass
        await self.finish_call(call, response)

    async def subscribe_resilient(self, s: driver_pb2.Subscribe) -> None:
        """polystream.client.ResilientSubscriber: connected/disconnected for
        each attempt, control events reported, log events deduplicated.
        Request headers and what is left of deadline_ms go on every attempt."""
        b = s.backoff
        defaults = resilient.Backoff()
        constant = self.fault == "no-backoff"  # every delay exactly base: no growth, no jitter
        backoff = resilient.Backoff(
            base=b.base_ms / 1000 if b.base_ms > 0 else defaults.base,
            max=b.max_ms / 1000 if b.max_ms > 0 else max(defaults.max, b.base_ms / 1000),
            multiplier=1 if constant else b.multiplier if b.multiplier >= 1 else defaults.multiplier,
            max_retries=b.max_retries if s.HasField("backoff") else defaults.max_retries,
            jitter=0 if constant else defaults.jitter,
        )

        def retry_all(_error: BaseException) -> bool:
            # Every status; only the run's own deadline still ends it (as in Go).
            return self.timeout() != 0.0

        options = self.channel_options() + [
            ("grpc.initial_reconnect_backoff_ms", int(backoff.base * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(backoff.base * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(backoff.max * 1000)),
        ]
        channel = grpc.aio.insecure_channel(self.req.target, options=options,
                                            interceptors=[_CallOptions(self)])
        connects = 0

        async def on_connect() -> None:
            nonlocal connects
            await self.emit_connected(connects, subscriber.last_event_id)
            connects += 1

        async def on_disconnect(error: BaseException, _attempt: int, delay: Optional[float]) -> None:
            code, message = _error_code(error)
            await self.emit(disconnected=driver_pb2.Disconnected(
                code=code, message=message, will_retry=delay is not None,
                delay_ms=int(round(delay * 1000)) if delay is not None else 0))

        req = s.request
        subscriber = resilient.ResilientSubscriber(
            channel, req.client_id, event_types=list(req.event_types), channel=req.channel,
            last_event_id=req.last_event_id, heartbeat_interval=req.heartbeat_interval,
            backoff=backoff, include_control_events=True,
            on_connect=on_connect, on_disconnect=on_disconnect,
            retryable=retry_all if self.fault == "retry-all" else None,
            watchdog=self.fault != "blind",
        )
        log_events = 0
        try:
            events = subscriber.events()
            while True:
                await self.delay_read()
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
                await self.emit_received(event, _describe_event)
                self.received += 1
                if event.sequence > 0:
                    log_events += 1
                if 0 < self.req.cancel_after <= self.received:
                    self.cancelled = True
                    await subscriber.close()
                    await events.aclose()
                    await self.emit_finished(grpc.StatusCode.CANCELLED.name, "cancelled by the client")
                    return
                if 0 < s.stop_after <= log_events:
                    await subscriber.close()
                    await events.aclose()
                    await self.emit_finished(OK)
                    return
            await self.emit_finished(OK)
        except grpc.aio.AioRpcError as exc:
            await self.emit_finished(exc.code().name, exc.details() or "",
                                     exc.initial_metadata(), exc.trailing_metadata())
        except (resilient.StreamSilentError, resilient.StreamEndedError) as exc:
            code, message = _error_code(exc)
            await self.emit_finished(code, message)
        finally:
            await subscriber.close()
            await channel.close()


def _stop_after_log_events(n: int):
    if n <= 0:
        return None
    seen = 0

    async def stop(e) -> bool:
        nonlocal seen
        if e.sequence > 0:
            seen += 1
        return seen >= n

    return stop


def _error_code(error: BaseException) -> tuple[str, str]:
    """A failure as (canonical code name, message) for the observations. The
    resilient client's own verdicts: a server that ended the stream with OK is
    "OK", a silent stream (heartbeat watchdog) is "UNAVAILABLE"."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name, error.details() or ""
    if isinstance(error, resilient.StreamEndedError):
        return OK, str(error)
    return grpc.StatusCode.UNAVAILABLE.name, str(error)


class _CallOptions(grpc.aio.UnaryStreamClientInterceptor):
    """Adds the run's request headers and what is left of its deadline to
    every call the resilient subscriber makes."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=self.run.timeout(),
            metadata=grpc.aio.Metadata(*self.run.metadata, *(client_call_details.metadata or ())),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


class _BadRequest(Exception):
    """A malformed RunRequest: Run itself ends with INVALID_ARGUMENT."""


def find_method(name: str):
    """"/pkg.Service/Method" to a unary method descriptor."""
    service, _, method = name.lstrip("/").partition("/")
    if not service or not method:
        raise _BadRequest(f'method "{name}": want /package.Service/Method')
    try:
        sd = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        raise _BadRequest(f'method "{name}": unknown service {service}') from None
    md = sd.methods_by_name.get(method)
    if md is None:
        raise _BadRequest(f'method "{name}": {service} has no method {method}')
    if md.client_streaming or md.server_streaming:
        raise _BadRequest(f'method "{name}" is streaming; unary takes unary methods only')
    return md


def message_class(descriptor):
    """The generated class when registered, else one made from the descriptor."""
    try:
        return symbol_database.Default().GetSymbol(descriptor.full_name)
    except KeyError:
        return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)


class Driver(driver_pb2_grpc.ClientDriverServicer):
    def __init__(self, fault: str = "") -> None:
        self.fault = check_fault(fault)  # self-test only: deliberately defective

    async def Run(self, request: driver_pb2.RunRequest, context: grpc.aio.ServicerContext) -> None:
        if not request.target:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target is required")
        scenario = request.WhichOneof("scenario")
        if scenario is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a scenario is required")
        run = Run(request, context, self.fault)
        if scenario == "subscribe" and request.subscribe.resilient:
            perform = run.subscribe_resilient
        else:
            perform = getattr(run, scenario)
        # Cancelling Run cancels this task, and closing the channel cancels the
        # client's call.
        run.channel = grpc.aio.insecure_channel(request.target, options=run.channel_options())
        try:
            await perform(getattr(request, scenario))
        except _BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            await run.channel.close()


class _Health(health_grpc.HealthServicer):
    """grpc.health.v1: SERVING while the driver is up (the harness waits on it)."""

    async def Check(self, request, context):
        return health_pb.HealthCheckResponse(status=health_pb.HealthCheckResponse.SERVING)


async def serve(host: str, port: int, fault: str = "") -> None:
    server = grpc.aio.server()
    driver_pb2_grpc.add_ClientDriverServicer_to_server(Driver(fault), server)
    health_grpc.add_HealthServicer_to_server(_Health(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"polystream driver: cannot listen on {host}:{port}")
    await server.start()
    print(f"polystream driver listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polystream.conformance_driver",
                                     description="Serves the conformance ClientDriver for the Python client.")
    parser.add_argument("--host", default=os.environ.get("POLYSTREAM_DRIVER_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("POLYSTREAM_DRIVER_PORT", "50052")))
    parser.add_argument("--fault", default=os.environ.get("POLYSTREAM_DRIVER_FAULT", ""),
                        help="self-test only: make the driver deliberately defective (" + ", ".join(FAULTS) + ")")
    args = parser.parse_args(argv)
    try:
        fault = check_fault(args.fault)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if fault:
        print(f"{FAULT_BANNER} (fault={fault})", file=sys.stderr, flush=True)
    asyncio.run(serve(args.host, args.port, fault))
    return 0


if __name__ == "__main__":
    sys.exit(main())
