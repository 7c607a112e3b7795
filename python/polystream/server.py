"""Wires the services into one grpc.aio server: options (message sizes,
concurrent streams, keepalive and its enforcement), health, reflection, the
shutdown/stats interceptor, and the `python -m polystream serve` entry point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import signal
import sys
from typing import Any, AsyncIterator, Callable, Optional

import grpc

from polystream import config as config_module
from polystream import reflection, server_faults
from polystream.chat.v1 import chat_pb2  # noqa: F401  (loads the descriptors that reflection serves)
from polystream.config import ServerConfig
from polystream.events.v1 import events_pb2  # noqa: F401
from polystream.services.chat import ChatService
from polystream.services.events import EventService
from polystream.services.updates import UpdatesService
from polystream.updates.v1 import updates_pb2  # noqa: F401
from polystream.vendor import grpc_health_v1_pb2 as health_pb
from polystream.vendor import grpc_health_v1_pb2_grpc as health_grpc

SHUTTING_DOWN = "server is shutting down"
DEADLINE_SLACK = 0.1  # seconds
SERVICE_NAMES = (
    "polystream.events.v1.EventService",
    "polystream.updates.v1.StreamService",
    "polystream.chat.v1.ChatService",
)
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("polystream.server")


# --- the interceptor: shutdown of long-lived streams, stats, the "rpc" record ---


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _status_code(code: Any) -> grpc.StatusCode:
    """The context reports its final code as a StatusCode, a number or None (= OK)."""
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_NUMBER.get(code or 0, grpc.StatusCode.UNKNOWN)


@dataclasses.dataclass
class _Rpc:
    cancelled: bool = False  # the handler saw CancelledError / GeneratorExit
    finished: bool = False  # the handler ran to its end (returned, raised or aborted)


@dataclasses.dataclass(eq=False)
class _Stream:
    """A streaming RPC whose handler is an async generator, driven by `task`."""

    task: asyncio.Task
    in_handler: bool = False  # suspended inside the service's generator, not in a grpc write
    cancelled_for_shutdown: bool = False


class StreamGuard(grpc.aio.ServerInterceptor):
    """Ends every streaming RPC with UNAVAILABLE once graceful shutdown begins
    (the services know nothing about shutdown), counts requests and open
    streams, and logs one `rpc` record per finished RPC."""

    def __init__(self, logger: logging.Logger, fault: str = "") -> None:
        self._logger = logger
        self._fault = fault  # self-test only: wrong-status rewrites messages (server_faults.py)
        self._shutdown: Optional[asyncio.Future] = None  # resolved when shutdown begins
        self._streams: set[_Stream] = set()  # open generator streams
        self.requests = 0
        self.active_streams = 0

    def stats(self) -> tuple[int, int]:
        """(requests started since start, streaming RPCs open now), for StreamMetrics."""
        return self.requests, self.active_streams

    def begin_shutdown(self) -> None:
        if self._shutdown_future().done():
            return
        self._shutdown_future().set_result(None)
        # A stream parked inside its handler (waiting on its own queue) is
        # interrupted there; one parked in a grpc write notices after it.
        for stream in self._streams:
            if stream.in_handler:
                stream.cancelled_for_shutdown = True
                stream.task.cancel()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown is not None and self._shutdown.done()

    def _shutdown_future(self) -> asyncio.Future:
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_future()
        return self._shutdown

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._client_stream(handler.stream_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._server_stream(handler.unary_stream, method))
        return handler._replace(stream_stream=self._server_stream(handler.stream_stream, method))

    def _context(self, context: grpc.aio.ServicerContext) -> Any:
        """The context the service's handler gets (the wrong-status self-test fault's)."""
        return server_faults.context(self._fault, context)

    def _started(self, context: grpc.aio.ServicerContext, method: str, streaming: bool) -> "_Rpc":
        self.requests += 1
        if streaming:
            self.active_streams += 1
        rpc = _Rpc()

        def finished(ctx: grpc.aio.ServicerContext) -> None:
            if streaming:
                self.active_streams -= 1
            # A handler cancelled by grpc (client cancel, deadline, lost
            # connection) leaves the context's code unset, and in grpcio 1.51
            # `ctx.cancelled()` is False here. This callback may also run
            # before the handler learns of the cancel (e.g. a stream parked in
            # a write to a client that keeps its connection but cancelled):
            # a call that ended while its handler had not finished was cancelled.
            if rpc.cancelled or not rpc.finished or ctx.cancelled():
                # The client's deadline may cancel the call a moment before the server's copy expires.
                remaining = ctx.time_remaining()
                expired = remaining is not None and remaining < DEADLINE_SLACK
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            else:
                code = _status_code(ctx.code())
            self._logger.info("rpc", extra={"method": method, "code": code.name})

        context.add_done_callback(finished)
        return rpc

    def _unary(self, behavior: Callable, method: str) -> Callable:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rpc = self._started(context, method, streaming=False)
            try:
                result = await behavior(request, self._context(context))  # unary calls finish within the grace period
            except asyncio.CancelledError:
                rpc.cancelled = True
                raise
            except BaseException:
                rpc.finished = True
                raise
            rpc.finished = True
            return result

        return unary

    def _client_stream(self, behavior: Callable, method: str) -> Callable:
        async def client_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            rpc = self._started(context, method, streaming=True)
            return await self._until_shutdown(behavior(request_iterator, self._context(context)), context, rpc)

        return client_stream

    def _server_stream(self, behavior: Callable, method: str) -> Callable:
        if not inspect.isasyncgenfunction(behavior):  # a handler that writes with context.write

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                rpc = self._started(context, method, streaming=True)
                return await self._until_shutdown(behavior(request, self._context(context)), context, rpc)

            return writer

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rpc = self._started(context, method, streaming=True)
            if self.shutting_down:
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            stream = _Stream(asyncio.current_task())
            self._streams.add(stream)
            responses = behavior(request, self._context(context))
            # grpc may end the call while this generator is parked at `yield`
            # (a write failed: the client cancelled or its deadline passed) and
            # then leave the generator to the garbage collector: release the
            # stream and close the service's generator as soon as the call's task ends.
            stream.task.add_done_callback(lambda task: self._abandoned(task, stream, responses, rpc))
            try:
                while True:
                    stream.in_handler = True
                    try:
                        response = await responses.__anext__()
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        if not stream.cancelled_for_shutdown:
                            raise
                        stream.task.uncancel()
                        break
                    finally:
                        stream.in_handler = False
                    yield response
                    if self.shutting_down:  # it began while grpc was writing
                        break
            except (asyncio.CancelledError, GeneratorExit):
                rpc.cancelled = True
                raise
            finally:
                rpc.finished = not rpc.cancelled  # returned, raised or ends for shutdown below
                self._streams.discard(stream)
                await _close_unless_running(responses)
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

        return generator

    def _abandoned(self, task: asyncio.Task, stream: "_Stream", responses: Any, rpc: "_Rpc") -> None:
        """The call's task ended; if the generator never finished, grpc gave up
        on it (its write failed): the stream was cancelled."""
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        rpc.cancelled = True
        if not task.cancelled():
            task.exception()  # grpc's failed write to a cancelled call: expected, not "never retrieved"
        asyncio.ensure_future(_close_unless_running(responses))

    async def _until_shutdown(self, coroutine, context: grpc.aio.ServicerContext, rpc: "_Rpc") -> Any:
        if self.shutting_down:
            coroutine.close()
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        work = asyncio.ensure_future(coroutine)
        try:
            await asyncio.wait((work, self._shutdown_future()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            rpc.cancelled = True
            raise
        finally:
            if not work.done():
                work.cancel()
                await asyncio.wait((work,))
        rpc.finished = True
        if not work.cancelled():
            return work.result()
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


async def _close_unless_running(generator: Any) -> None:
    """Closes a service's generator unless another closer is already at it
    (grpc's finalizer of an abandoned stream and `_abandoned` may race)."""
    if generator.ag_running or generator.ag_frame is None:
        return
    await generator.aclose()


# --- health ---


class HealthService(health_grpc.HealthServicer):
    """grpc.health.v1: SERVING while up, NOT_SERVING once shutdown begins."""

    def __init__(self, service_names: tuple[str, ...]) -> None:
        self._statuses = {name: health_pb.HealthCheckResponse.SERVING for name in ("", *service_names)}
        self._watchers: set[asyncio.Queue] = set()

    def register(self, server: grpc.aio.Server) -> None:
        health_grpc.add_HealthServicer_to_server(self, server)

    def set_all(self, status: int) -> None:
        for name in self._statuses:
            self._statuses[name] = status
        for queue in self._watchers:
            queue.put_nowait(None)

    async def Check(self, request, context):
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb.HealthCheckResponse(status=status)

    async def List(self, request, context):
        response = health_pb.HealthListResponse()
        for name, status in self._statuses.items():
            response.statuses[name].status = status
        return response

    async def Watch(self, request, context):
        changed: asyncio.Queue = asyncio.Queue()
        self._watchers.add(changed)
        try:
            last = None
            while True:
                status = self._statuses.get(request.service, health_pb.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != last:
                    last = status
                    yield health_pb.HealthCheckResponse(status=status)
                await changed.get()
        finally:
            self._watchers.discard(changed)


# --- the server ---


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    # The strict-keepalive self-test fault: 60 s, and no pings without calls (server_faults.py).
    min_ping_ms, permit_without_calls = server_faults.keepalive_enforcement(config.fault, int(config.keepalive_min_time * 1000))
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", config.max_message_size),
        ("grpc.max_send_message_length", config.max_message_size),
        ("grpc.keepalive_time_ms", server_faults.keepalive_time_ms(config.fault, int(config.keepalive_time * 1000))),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        # Enforcement: clients may ping every keepalive-min-time, with or
        # without streams (grpcio's default of 5 min would answer Go clients'
        # 10 s pings with GOAWAY too_many_pings).
        ("grpc.keepalive_permit_without_calls", permit_without_calls),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),  # port 0 must mean a port nobody else holds
    ]
    if config.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", config.max_concurrent_streams))  # per connection, as in Go
    if config.initial_window_size > 0:
        # Fixed HTTP/2 flow control, so flow-control checks do not depend on
        # timing: no BDP probing (grpcio would otherwise grow its windows
        # with the measured bandwidth-delay product), and
        # `grpc.http2.lookahead_bytes` = the per-stream receive window this
        # server announces (SETTINGS_INITIAL_WINDOW_SIZE), i.e. how many
        # bytes a client may send on one stream (an upload) before the
        # handler reads them. grpcio has no option for the connection
        # window; what the server sends is bounded by the client's windows.
        options.append(("grpc.http2.bdp_probe", 0))
        options.append(("grpc.http2.lookahead_bytes", config.initial_window_size))
    return options


@dataclasses.dataclass
class RunningServer:
    address: str  # "HOST:PORT"
    port: int
    events: EventService
    updates: UpdatesService
    chat: ChatService
    config: ServerConfig
    _server: grpc.aio.Server
    _guard: StreamGuard
    _health: HealthService
    _log_handler: Optional[logging.Handler]
    _stopped: bool = False

    def stats(self) -> tuple[int, int]:
        return self._guard.stats()

    async def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING, streams end with UNAVAILABLE, unary
        calls get up to --shutdown-grace, then the services close."""
        if self._stopped:
            return
        self._stopped = True
        log.info("shutting down", extra={"grace": f"{self.config.shutdown_grace:g}s"})
        self._health.set_all(health_pb.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(0)  # let health watchers take NOT_SERVING before their stream ends
        self._guard.begin_shutdown()
        await self._server.stop(self.config.shutdown_grace)
        for service in (self.chat, self.updates, self.events):
            await service.close()
        log.info("stopped")
        if self._log_handler is not None:
            logging.getLogger("polystream").removeHandler(self._log_handler)


async def start_server(config: ServerConfig) -> RunningServer:
    config_module.validate(config)  # e.g. an unknown --fault is refused, as in Go
    root_logger = logging.getLogger("polystream")
    root_logger.setLevel(LOG_LEVELS[config.log_level])
    guard = StreamGuard(log, config.fault)
    events = EventService(config, logging.getLogger("polystream.events"))
    updates = UpdatesService(config, logging.getLogger("polystream.updates"))
    chat = ChatService(config, logging.getLogger("polystream.chat"), guard.stats)

    server = grpc.aio.server(interceptors=(guard,), options=server_options(config))
    health = HealthService(SERVICE_NAMES)
    services = [events, updates, chat]
    for service in services:
        service.register(server)
    health.register(server)
    reflection.ServerReflection((*SERVICE_NAMES, "grpc.health.v1.Health")).register(server)
    try:
        port = server.add_insecure_port(f"{_join_host(config.host)}:{config.port}")
    except RuntimeError:  # grpcio's way of saying the bind failed
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    log_handler = getattr(updates, "log_handler", None)
    if log_handler is not None:  # TailLogs reads the server's own records
        root_logger.addHandler(log_handler)
    started = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        await server.start()
    except BaseException:  # e.g. the event database cannot be opened: undo what was started
        await server.stop(None)
        for service in reversed(started):
            await service.close()
        if log_handler is not None:
            root_logger.removeHandler(log_handler)
        raise
    if server_faults.active(config.fault):  # after TailLogs' handler is in place, so it has it too
        log.warning("SELF-TEST FAULT ACTIVE: this server is deliberately defective", extra={"fault": config.fault})
    address = f"{_join_host(config.host)}:{port}"  # the host as given, as Go's net.JoinHostPort writes it
    log.info("listening", extra={"address": address})
    return RunningServer(address, port, events, updates, chat, config, server, guard, health, log_handler)


def _join_host(host: str) -> str:
    """An IPv6 literal in brackets (net.JoinHostPort's form), anything else as given."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --- `python -m polystream serve` ---


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("polystream")
    root.addHandler(handler)
    root.setLevel(LOG_LEVELS[level])


async def _serve(config: ServerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before the line: a script may signal right after it
        loop.add_signal_handler(signum, stop.set)
    running = await start_server(config)
    print(f"polystream listening on {running.address}", flush=True)
    await stop.wait()
    await running.stop()


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m polystream serve`: exit 0 after a graceful stop, 2 for a bad
    flag (one line `polystream: serve: <message>`, as the Go binary), 1 when
    the server cannot start."""
    try:
        config = config_module.parse_flags(list(sys.argv[1:] if argv is None else argv))
    except config_module.HelpRequested:
        print(config_module.usage())
        return 0
    except ValueError as exc:
        print(f"polystream: serve: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    try:
        asyncio.run(_serve(config))
    except Exception as exc:  # could not start (port taken, data dir unusable): say why, exit 1
        print(f"polystream: serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
