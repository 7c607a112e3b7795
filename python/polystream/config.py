"""Server settings: the same flags, environment variables, defaults and error
messages as the Go server (go/server/config.go, docs/contract.md). A flag
beats its POLYSTREAM_* variable.

Flags are parsed the way Go's `flag` package does (`-port 1`, `--port=1`,
parsing stops at the first non-flag argument), so a bad flag gets the same
one-line message in both languages: `polystream: serve: <message>`, exit 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Mapping, Optional

from polystream.server_faults import FAULTS as SERVER_FAULTS

POLICIES = ("drop-newest", "drop-oldest", "block", "disconnect")
LOG_LEVELS = ("debug", "info", "warn", "error")
# Self-test faults (conformance/selftest.yaml, docs/contract.md), in the
# contract's order: the events service's act in
# polystream/services/events_faults.py, the whole server's (wrong-status to
# unbounded-window) in polystream/server_faults.py.
EVENTS_FAULTS = (
    "reorder",
    "drop",
    "ignore-cancel",
    "forget-history",
    "no-heartbeat",
    "unknown-client-not-found",
    "duplicate-broadcast",
    "no-replay-gap",
    "miscount-drops",
    "unbounded-queue",
)
FAULTS = (*EVENTS_FAULTS, *SERVER_FAULTS)
# --initial-window-size when not 0: HTTP/2's default (smallest useful) window
# up to HTTP/2's largest, as in Go.
MIN_WINDOW_SIZE, MAX_WINDOW_SIZE = 65535, 2**31 - 1
# --upload-read-delay: 0 (none) up to a minute, as in Go.
MAX_UPLOAD_READ_DELAY = 60.0  # seconds

_DURATION = re.compile(r"((?:\d+(?:\.\d*)?)|(?:\.\d+))(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class HelpRequested(Exception):
    """-h / --help was given: print `usage()` and exit 0."""


def parse_duration(text: str) -> float:
    """Parses Go's duration form ("500ms", "5s", "1m30s", "-1s") into seconds;
    the error text is Go's `time.ParseDuration`'s."""
    original = text
    sign = 1.0
    if text[:1] in ("-", "+"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if not match:
            if re.match(r"[\d.]+$", text[pos:]) and re.match(r"(\d+(\.\d*)?|\.\d+)$", text[pos:]):
                raise ValueError(f'time: missing unit in duration "{original}"')
            raise ValueError(f'time: invalid duration "{original}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Go's `time.Duration.String()`: "0s", "500ms", "1.5s", "1m30s", "-1s"."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:  # below a second: the largest unit that fits
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return sign + _trim(nanos, size) + unit
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _trim(rest, 10**9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


def _parse_int(text: str) -> int:
    """Go's strconv.ParseInt(text, 0, 64) as the flag package uses it."""
    sign, body = ("-", text[1:]) if text[:1] == "-" else ("", text[1:] if text[:1] == "+" else text)
    try:
        if re.fullmatch(r"0[0-7_]+", body):  # Go reads a leading 0 as octal
            value = int(sign + "0o" + body[1:], 0)
        else:
            value = int(sign + body, 0)
    except ValueError:
        raise ValueError("parse error") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError("value out of range")
    return value


def _parse_go_duration(text: str) -> float:
    """As Go's flag package: any bad duration is a "parse error"."""
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError("parse error") from None


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
    # HTTP/2 flow control: 0 = grpcio's dynamic windows (BDP probing); > 0 =
    # fixed windows of this many bytes (see server.server_options).
    initial_window_size: int = 0
    # Seconds UploadMessages waits before reading each message (and before
    # noticing the half-close); 0 = none. A testing knob (the conformance
    # harness's steady slow reader), not a production setting.
    upload_read_delay: float = 0.0
    fault: str = ""  # harness self-test only; see services/events_faults.py


# flag name -> (parser, help)
_FLAGS: dict[str, tuple[Callable[[str], object], str]] = {
    "host": (str, "address to listen on"),
    "port": (_parse_int, "port to listen on; 0 = a free port"),
    "data-dir": (str, 'directory for the durable event log; "" = in memory'),
    "history-size": (_parse_int, "events retained in the log"),
    "queue-size": (_parse_int, "per-subscriber queue size"),
    "backpressure": (str, "slow subscriber policy: " + ", ".join(POLICIES)),
    "publish-timeout": (_parse_go_duration, "how long a publisher waits under the block policy"),
    "max-message-size": (_parse_int, "largest message received or sent, bytes"),
    "max-concurrent-streams": (_parse_int, "streams per connection; 0 = unlimited"),
    "keepalive-time": (_parse_go_duration, "ping an idle connection after this long"),
    "keepalive-timeout": (_parse_go_duration, "close a connection whose ping is not answered in this long"),
    "keepalive-min-time": (_parse_go_duration, "clients may ping this often, also without streams"),
    "shutdown-grace": (_parse_go_duration, "how long graceful shutdown may take"),
    "chat-keepalive": (_parse_go_duration, "interval of keep-alive messages in Chat"),
    "log-level": (str, "minimum log level: " + ", ".join(LOG_LEVELS)),
    "initial-window-size": (_parse_int, "fixed HTTP/2 stream and connection windows, bytes; 0 = dynamic (BDP probing)"),
    "upload-read-delay": (_parse_go_duration, "testing only: UploadMessages waits this long before reading each message; 0 = none"),
    "fault": (str, "conformance self-test only: a deliberate defect, one of " + ", ".join(FAULTS)),
}


def env_name(flag: str) -> str:
    """data-dir -> POLYSTREAM_DATA_DIR."""
    return "POLYSTREAM_" + flag.upper().replace("-", "_")


def usage() -> str:
    defaults = ServerConfig()
    lines = ["usage: polystream serve [flags]; each flag has a POLYSTREAM_* variable (--data-dir: POLYSTREAM_DATA_DIR)"]
    for flag, (_, text) in _FLAGS.items():
        default = getattr(defaults, flag.replace("-", "_"))
        if default in ("", 0):  # as Go: a zero default is not shown
            lines.append(f"  -{flag}\n    \t{text}")
            continue
        if isinstance(default, float):
            default = format_duration(default)
        lines.append(f"  -{flag}\n    \t{text} (default {default!r})")
    return "\n".join(lines)


def _parse_flag_args(args: list[str]) -> dict[str, str]:
    """Go's flag package rules: -name value, -name=value, --name, `--` ends the flags."""
    given: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            raise ValueError(f'unexpected argument "{arg}"')
        if arg == "--":
            if i + 1 < len(args):
                raise ValueError(f'unexpected argument "{args[i + 1]}"')
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise ValueError(f"bad flag syntax: {arg}")
        name, has_value, value = name.partition("=")
        if name in ("h", "help"):
            raise HelpRequested()
        if name not in _FLAGS:
            raise ValueError(f"flag provided but not defined: -{name}")
        if not has_value:
            if i + 1 >= len(args):
                raise ValueError(f"flag needs an argument: -{name}")
            i += 1
            value = args[i]
        given[name] = value
        i += 1
    return given


def parse_flags(args: list[str], environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """Builds a config from args, then POLYSTREAM_* variables, then defaults,
    and validates it. Raises ValueError with Go's message, or HelpRequested."""
    config = ServerConfig()
    given = _parse_flag_args(args)
    for flag, (parse, _) in _FLAGS.items():
        field = flag.replace("-", "_")
        if flag in given:
            raw = given[flag]
            try:
                setattr(config, field, parse(raw))
            except ValueError as exc:
                raise ValueError(f'invalid value "{raw}" for flag -{flag}: {exc}') from None
            continue
        raw = environ.get(env_name(flag), "")
        if raw == "":  # as in Go: an empty variable is unset
            continue
        try:
            setattr(config, field, parse(raw))
        except ValueError as exc:
            raise ValueError(f'{env_name(flag)}: invalid value "{raw}": {exc}') from None
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    """The first setting that cannot work, naming its flag (Go's Config.Validate)."""
    error = _first_error(config)
    if error:
        raise ValueError(error)


def _first_error(c: ServerConfig) -> Optional[str]:
    if c.backpressure not in POLICIES:
        return f'--backpressure must be one of {", ".join(POLICIES)}; got "{c.backpressure}"'
    if c.history_size < 1:
        return f"--history-size must be >= 1, got {c.history_size}"
    if c.queue_size < 1:
        return f"--queue-size must be >= 1, got {c.queue_size}"
    if c.log_level not in LOG_LEVELS:
        return f'--log-level must be one of {", ".join(LOG_LEVELS)}; got "{c.log_level}"'
    if not 0 <= c.port <= 65535:
        return f"--port must be between 0 and 65535, got {c.port}"
    if c.max_message_size < 1:
        return f"--max-message-size must be >= 1, got {c.max_message_size}"
    if c.max_concurrent_streams < 0:
        return f"--max-concurrent-streams must be >= 0, got {c.max_concurrent_streams}"
    if c.initial_window_size != 0 and not MIN_WINDOW_SIZE <= c.initial_window_size <= MAX_WINDOW_SIZE:
        return (
            f"--initial-window-size must be 0 or between {MIN_WINDOW_SIZE} and {MAX_WINDOW_SIZE}, "
            f"got {c.initial_window_size}"
        )
    if not 0 <= c.upload_read_delay <= MAX_UPLOAD_READ_DELAY:
        return (
            f"--upload-read-delay must be between {format_duration(0)} and {format_duration(MAX_UPLOAD_READ_DELAY)}, "
            f"got {format_duration(c.upload_read_delay)}"
        )
    if c.fault and c.fault not in FAULTS:
        return f'--fault must be one of {", ".join(FAULTS)}; got "{c.fault}"'
    for flag in ("publish-timeout", "keepalive-time", "keepalive-timeout", "keepalive-min-time", "shutdown-grace", "chat-keepalive"):
        value = getattr(c, flag.replace("-", "_"))
        if value <= 0:
            return f"--{flag} must be > 0, got {format_duration(value)}"
    return None
