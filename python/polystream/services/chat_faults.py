"""SELF-TEST / CONFORMANCE FAULT of the chat service, for the harness only
(docs/contract.md, "Fault modes (self-test only)"; the Go server's
go/chat/faults.go). Not active unless `--fault slow-reader=<ms>` names it;
every use of it by the chat service goes through this module.

  slow-reader=<ms>  UploadMessages waits that many milliseconds before
                    reading each message, so an uploader is held back by
                    HTTP/2 flow control at a steady rate.
"""

from __future__ import annotations

import asyncio
import re
from typing import Optional

SLOW_READER = "slow-reader"
MAX_SLOW_READER_MS = 60_000


def parse_slow_reader(fault: str) -> tuple[Optional[float], Optional[str]]:
    """(delay in seconds, error): (None, None) when `fault` is not a
    slow-reader fault at all; an error says what is wrong with one that is."""
    if fault != SLOW_READER and not fault.startswith(SLOW_READER + "="):
        return None, None
    arg = fault[len(SLOW_READER) + 1 :]
    error = f'--fault {SLOW_READER}=<ms> needs milliseconds between 1 and {MAX_SLOW_READER_MS}, got "{fault}"'
    if fault == SLOW_READER or not re.fullmatch(r"[+-]?\d+", arg):
        return None, error
    ms = int(arg)
    if not 1 <= ms <= MAX_SLOW_READER_MS:
        return None, error
    return ms / 1000, None


def slow_reader_delay(fault: str) -> float:
    """Seconds to wait before each upload read; 0 = no fault."""
    delay, error = parse_slow_reader(fault)
    return delay if delay is not None and error is None else 0.0


async def slow_read(delay: float) -> None:
    """Waits before an upload's next read under slow-reader (not at all otherwise)."""
    if delay > 0:
        await asyncio.sleep(delay)
