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
"""

from __future__ import annotations

from typing import Any

import grpc

WRONG_STATUS = "wrong-status"
STRICT_KEEPALIVE = "strict-keepalive"
FAULTS = (WRONG_STATUS, STRICT_KEEPALIVE)
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
