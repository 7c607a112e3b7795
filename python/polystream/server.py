"""Wires the services into one grpc.aio server: options (message sizes,
concurrent streams, keepalive and its enforcement), health (health.py),
reflection, the interceptor (stream_guard.py), and the `python -m polystream
serve` entry point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from typing import Any, Optional

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
from polystream.health import HealthService
from polystream.stream_guard import StreamGuard
from polystream.vendor import grpc_health_v1_pb2 as health_pb

SERVICE_NAMES = (
    "polystream.events.v1.EventService",
    "polystream.updates.v1.StreamService",
    "polystream.chat.v1.ChatService",
)
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("polystream.server")


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
    # The unbounded-window self-test fault fixes 16 MiB windows whatever --initial-window-size says.
    window_size = server_faults.window_size(config.fault, config.initial_window_size)
    if window_size > 0:
        # Fixed HTTP/2 flow control, so flow-control checks do not depend on
        # timing: no BDP probing (grpcio would otherwise grow its windows
        # with the measured bandwidth-delay product), and
        # `grpc.http2.lookahead_bytes` = the per-stream receive window this
        # server announces (SETTINGS_INITIAL_WINDOW_SIZE), i.e. how many
        # bytes a client may send on one stream (an upload) before the
        # handler reads them. grpcio has no option for the connection
        # window; what the server sends is bounded by the client's windows.
        options.append(("grpc.http2.bdp_probe", 0))
        options.append(("grpc.http2.lookahead_bytes", window_size))
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
        if server_faults.graceful_shutdown(self.config.fault):
            log.info("shutting down", extra={"grace": f"{self.config.shutdown_grace:g}s"})
            self._health.set_all(health_pb.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(0)  # let health watchers take NOT_SERVING before their stream ends
            self._guard.begin_shutdown()
            await self._server.stop(self.config.shutdown_grace)
        else:  # the abrupt-shutdown self-test fault: grpc cuts every call at once
            log.info("shutting down abruptly")
            await self._server.stop(None)
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
