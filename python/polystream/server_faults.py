"""SELF-TEST FAULTS of the whole server, for the conformance harness only
(docs/contract.md, "Fault modes (self-test only)"; the Go server's own).
Not active unless `--fault` names one; every use of them goes through this
module (the events service's faults are in services/events_faults.py):

  wrong-status      every INVALID_ARGUMENT or NOT_FOUND status an RPC ends
                    with (any service) gets the message `wrong-status fault`;
                    the code is unchanged
  strict-keepalive  keepalive enforcement is strict: clients may ping only
                    every 60 s and only while a call is open, so a client
                    pinging every second gets GOAWAY too_many_pings; the
                    server sends no keepalive pings of its own (as grpcio's
                    defaults), so an idle client has to ping itself
  skip-sequence     on every response stream, the 5th message whose
                    `sequence` is not 0 is sent (as a copy) with sequence + 1
  lose-request      on every request stream, the 5th request is discarded
                    before the handler sees it
  no-metadata       no x-request-id / x-echo-trailer echo (server.py)
  abrupt-shutdown   SIGINT/SIGTERM stops the server at once: no grace, no
                    `server is shutting down` for open streams
  unbounded-window  --initial-window-size is ignored: fixed 16 MiB windows

ignore-cancel is an events fault (services/events_faults.py) that also
touches the server's `rpc` log record: CANCELLED / DEADLINE_EXCEEDED are
logged as OK (`logged_code`).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Optional

import grpc

WRONG_STATUS = "wrong-status"
STRICT_KEEPALIVE = "strict-keepalive"
SKIP_SEQUENCE = "skip-sequence"
LOSE_REQUEST = "lose-request"
NO_METADATA = "no-metadata"
ABRUPT_SHUTDOWN = "abrupt-shutdown"
UNBOUNDED_WINDOW = "unbounded-window"
FAULTS = (WRONG_STATUS, STRICT_KEEPALIVE, SKIP_SEQUENCE, LOSE_REQUEST, NO_METADATA, ABRUPT_SHUTDOWN, UNBOUNDED_WINDOW)
IGNORE_CANCEL = "ignore-cancel"  # an events fault (config.EVENTS_FAULTS), also in the rpc log record
FAULT_AT = 5  # skip-sequence and lose-request act on a stream's 5th message
UNBOUNDED_WINDOW_BYTES = 16 * 1024 * 1024
WRONG_STATUS_MESSAGE = "wrong-status fault"
_REWRITTEN = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
STRICT_MIN_PING_MS = 60_000


def active(fault: str) -> bool:
    """Whether `fault` is one of the server's own (announced by server.py)."""
    return fault in FAULTS


NO_SERVER_PINGS_MS = 2**31 - 1  # grpcio's "never"


def keepalive_time_ms(fault: str, keepalive_time_ms: int) -> int:
    """The server's own keepalive ping interval."""
    return NO_SERVER_PINGS_MS if fault == STRICT_KEEPALIVE else keepalive_time_ms


def keepalive_enforcement(fault: str, min_ping_ms: int) -> tuple[int, int]:
    """(min_recv_ping_interval_without_data_ms, keepalive_permit_without_calls)."""
    if fault == STRICT_KEEPALIVE:
        return STRICT_MIN_PING_MS, 0
    return min_ping_ms, 1


def context(fault: str, ctx: grpc.aio.ServicerContext) -> Any:
    """The context a handler gets: under wrong-status, one whose abort /
    set_code / set_details give INVALID_ARGUMENT and NOT_FOUND the fault's message."""
    return _WrongStatusContext(ctx) if fault == WRONG_STATUS else ctx


def _is_rewritten(code: Any) -> bool:
    return code in _REWRITTEN or code in (c.value[0] for c in _REWRITTEN)


class _WrongStatusContext:
    """Delegates everything to the real context but the status message."""

    def __init__(self, ctx: grpc.aio.ServicerContext) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", *args: Any, **kwargs: Any) -> Any:
        if _is_rewritten(code):
            details = WRONG_STATUS_MESSAGE
        return await self._ctx.abort(code, details, *args, **kwargs)

    def set_code(self, code: Any) -> None:
        self._ctx.set_code(code)
        if _is_rewritten(code):
            self._ctx.set_details(WRONG_STATUS_MESSAGE)

    def set_details(self, details: str) -> None:
        self._ctx.set_details(WRONG_STATUS_MESSAGE if _is_rewritten(self._ctx.code()) else details)


# --- skip-sequence ---


def sequence_skipper(fault: str) -> Optional[Callable[[Any], Any]]:
    """A response stream's message filter under skip-sequence (None otherwise):
    one per stream, it counts the messages with a non-zero `sequence`."""
    if fault != SKIP_SEQUENCE:
        return None
    count = 0

    def skip(message: Any) -> Any:
        nonlocal count
        if not getattr(message, "sequence", 0):  # a message without the field, or a control event
            return message
        count += 1
        if count != FAULT_AT:
            return message
        # A copy: the message may be shared (the event log, other subscribers).
        skipped = type(message)()
        skipped.CopyFrom(message)
        skipped.sequence += 1
        return skipped

    return skip


# --- lose-request ---


def requests(fault: str, request_iterator: Any) -> Any:
    """The request stream a client-streaming or bidi handler reads (every
    handler reads its iterator; none uses context.read)."""
    return _lose_fifth(request_iterator) if fault == LOSE_REQUEST else request_iterator


async def _lose_fifth(request_iterator: Any) -> AsyncIterator[Any]:
    count = 0
    async for request in request_iterator:
        count += 1
        if count != FAULT_AT:
            yield request


# --- no-metadata, abrupt-shutdown, unbounded-window, ignore-cancel ---


def echo_metadata(fault: str) -> bool:
    """Whether the server echoes x-request-id / x-echo-trailer (not under no-metadata)."""
    return fault != NO_METADATA


def graceful_shutdown(fault: str) -> bool:
    """Whether SIGINT/SIGTERM shut down gracefully (not under abrupt-shutdown)."""
    return fault != ABRUPT_SHUTDOWN


def window_size(fault: str, initial_window_size: int) -> int:
    """The fixed HTTP/2 window size; 0 = grpcio's dynamic windows."""
    return UNBOUNDED_WINDOW_BYTES if fault == UNBOUNDED_WINDOW else initial_window_size


def logged_code(fault: str, code: grpc.StatusCode) -> grpc.StatusCode:
    """The code of the server's `rpc` log record: under ignore-cancel, the
    server claims it never saw a cancellation."""
    if fault == IGNORE_CANCEL and code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return grpc.StatusCode.OK
    return code
