"""Server settings: the same flags, environment variables and defaults as the
Go server (docs/contract.md). A flag beats its POLYSTREAM_* variable."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

POLICIES = ("drop-newest", "drop-oldest", "block", "disconnect")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parses Go's duration form ("500ms", "5s", "1m30s") into seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if not match:
            raise ValueError(f'invalid duration "{text}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f'invalid duration "{text}"')
    return total


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: str = ""
    history_size: int = 1000
    queue_size: int = 256
    backpressure: str = "disconnect"
    publish_timeout: float = 5.0  # seconds
    max_message_size: int = 4 * 1024 * 1024
    max_concurrent_streams: int = 0  # 0 = unlimited
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    keepalive_min_time: float = 5.0
    shutdown_grace: float = 5.0
    chat_keepalive: float = 15.0
    log_level: str = "info"
    fault: str = ""  # harness self-test only; see docs/conformance.md


# flag name -> (field, parser)
_FLAGS = {
    "host": str,
    "port": int,
    "data-dir": str,
    "history-size": int,
    "queue-size": int,
    "backpressure": str,
    "publish-timeout": parse_duration,
    "max-message-size": int,
    "max-concurrent-streams": int,
    "keepalive-time": parse_duration,
    "keepalive-timeout": parse_duration,
    "keepalive-min-time": parse_duration,
    "shutdown-grace": parse_duration,
    "chat-keepalive": parse_duration,
    "log-level": str,
    "fault": str,
}


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    for flag in _FLAGS:
        parser.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=None)


def from_args(args: argparse.Namespace, environ=os.environ) -> ServerConfig:
    """Builds a config from parsed flags, then POLYSTREAM_* variables, then defaults."""
    config = ServerConfig()
    for flag, parse in _FLAGS.items():
        field = flag.replace("-", "_")
        raw = getattr(args, field, None)
        if raw is None:
            raw = environ.get("POLYSTREAM_" + field.upper())
        if raw is None:
            continue
        try:
            setattr(config, field, parse(raw))
        except ValueError as exc:
            raise ValueError(f"--{flag}: {exc}") from None
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    if config.backpressure not in POLICIES:
        raise ValueError(f'--backpressure must be one of {", ".join(POLICIES)}; got "{config.backpressure}"')
    if config.history_size < 1:
        raise ValueError(f"--history-size must be >= 1, got {config.history_size}")
    if config.queue_size < 1:
        raise ValueError(f"--queue-size must be >= 1, got {config.queue_size}")
    if config.log_level not in ("debug", "info", "warn", "error"):
        raise ValueError(f'--log-level must be one of debug, info, warn, error; got "{config.log_level}"')
