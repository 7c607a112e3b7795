"""SELF-TEST FAULTS: deliberate defects for the conformance harness's
self-test only (conformance/selftest.yaml; semantics in docs/contract.md,
"Fault modes (self-test only)"). Each one proves that a check notices the
defect. None is active unless `--fault` (POLYSTREAM_FAULT) names it; every
use of a fault by the events service goes through this module, and the
semantics are the Go server's (go/events/faults.go):

  reorder         a stream's 100th, 200th, ... log event (replay included)
                  is held and sent right after the next one; a held event
                  with no successor within 1 s is sent alone (late, not lost)
  drop            a stream's 100th, 200th, ... log event is skipped, no marker
  ignore-cancel   a stream whose client cancelled (or whose deadline passed)
                  stays counted in GetConnectionStatus (it gets no more events)
  forget-history  the event log ignores --data-dir: memory store, nothing
                  kept across restarts
  no-heartbeat    streams send no heartbeat events at all
  unknown-client-not-found
                  GetConnectionStatus of a client with no open stream is
                  NOT_FOUND `client "<id>" not found`
  duplicate-broadcast
                  a publisher-supplied id already in the log is appended
                  again, as a new event with a fresh id
  no-replay-gap   a resume from an unknown id sends no replay_gap event
  miscount-drops  a dropped marker's `count` is one less than it stands for
  unbounded-queue subscriber queues ignore --queue-size: never full
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, Optional

import grpc

from polystream.config import EVENTS_FAULTS
from polystream.services.events_store import StoredEvent

(
    REORDER,
    DROP,
    IGNORE_CANCEL,
    FORGET_HISTORY,
    NO_HEARTBEAT,
    UNKNOWN_CLIENT_NOT_FOUND,
    DUPLICATE_BROADCAST,
    NO_REPLAY_GAP,
    MISCOUNT_DROPS,
    UNBOUNDED_QUEUE,
) = EVENTS_FAULTS
FAULT_EVERY = 100  # reorder and drop act on a stream's 100th, 200th, ... log event
REORDER_HOLD_MAX = 1.0  # seconds a held event waits for its successor


def active(fault: str) -> bool:
    """Whether `fault` is one of the events service's."""
    return fault in EVENTS_FAULTS


def heartbeats(fault: str) -> bool:
    """Whether streams send heartbeat events (not under no-heartbeat)."""
    return fault != NO_HEARTBEAT


def store_data_dir(fault: str, data_dir: str) -> str:
    """The data directory the event log really uses."""
    return "" if fault == FORGET_HISTORY else data_dir


def unknown_client_not_found(fault: str) -> bool:
    """Whether GetConnectionStatus of a client without open streams is NOT_FOUND."""
    return fault == UNKNOWN_CLIENT_NOT_FOUND


def idempotent_ids(fault: str) -> bool:
    """Whether a publisher-supplied id already in the log is a retry (not under duplicate-broadcast)."""
    return fault != DUPLICATE_BROADCAST


def replay_gap(fault: str) -> bool:
    """Whether a resume from an id not in the log sends polystream.replay_gap."""
    return fault != NO_REPLAY_GAP


def dropped_count(fault: str, count: int) -> int:
    """The `count` a polystream.dropped marker says for `count` dropped events."""
    return count - 1 if fault == MISCOUNT_DROPS else count


def queue_size(fault: str, queue_size: int) -> int:
    """A subscriber queue's capacity: unbounded (never full) under unbounded-queue."""
    return sys.maxsize if fault == UNBOUNDED_QUEUE else queue_size


def ignore_cancel(fault: str, unsubscribe: Callable[[bool], None]) -> Optional["IgnoreCancel"]:
    """A stream's ignore-cancel state, or None when the fault is not active."""
    return IgnoreCancel(unsubscribe) if fault == IGNORE_CANCEL else None


class IgnoreCancel:
    """ignore-cancel: once both the handler and the call have ended, the
    stream is unsubscribed, and stays counted if its client ended it (the
    handler was interrupted and the server set no status: cancel, deadline,
    lost connection). Streams the server ends (queue overflow, half-close,
    a bad update, shutdown's UNAVAILABLE) are released as usual."""

    def __init__(self, unsubscribe: Callable[[bool], None]) -> None:
        self._unsubscribe = unsubscribe  # unsubscribe(keep_counted)
        self._interrupted: Optional[bool] = None  # set when the handler ended
        self._client_ended: Optional[bool] = None  # set when the call ended

    def handler_ended(self, interrupted: bool) -> None:
        self._interrupted = interrupted
        self._settle()

    def call_ended(self, code: Any) -> None:
        self._client_ended = code in (None, 0, grpc.StatusCode.OK)  # no status of the server's
        self._settle()

    def _settle(self) -> None:
        if self._interrupted is None or self._client_ended is None:
            return
        self._unsubscribe(self._interrupted and self._client_ended)


def delivery(fault: str) -> Optional["FaultDelivery"]:
    """A stream's reorder/drop state, or None when neither fault is active."""
    if fault in (REORDER, DROP):
        return FaultDelivery(fault)
    return None


class FaultDelivery:
    """Counts one stream's log events on their way to the client and applies
    reorder or drop."""

    def __init__(self, fault: str) -> None:
        self._fault = fault
        self._count = 0
        self._held: Optional[StoredEvent] = None
        self._held_until = 0.0

    def pass_(self, event: StoredEvent) -> list[StoredEvent]:
        """The events to send now, in order, for the stream's next log event."""
        self._count += 1
        if self._fault == DROP:
            return [] if self._count % FAULT_EVERY == 0 else [event]
        if self._held is not None:
            held = self.release()
            return [event, held]
        if self._count % FAULT_EVERY == 0:
            self._held = event
            self._held_until = asyncio.get_running_loop().time() + REORDER_HOLD_MAX
            return []
        return [event]

    def release(self) -> Optional[StoredEvent]:
        """Takes the held event (None if none)."""
        held, self._held = self._held, None
        return held

    def hold_remaining(self) -> Optional[float]:
        """Seconds until a held event is sent alone; None when nothing is held."""
        if self._held is None:
            return None
        return max(0.0, self._held_until - asyncio.get_running_loop().time())
