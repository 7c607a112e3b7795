"""The event log's records and their durable home: one SQLite file,
DATA_DIR/events.db, with the same table layout as the Go server.

sqlite3 blocks, so every call runs on one dedicated thread (a connection is
used by the thread that made it); the event loop only awaits the results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import sqlite3
from typing import Optional

from google.protobuf import any_pb2, timestamp_pb2

from polystream.events.v1 import events_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    sequence  INTEGER PRIMARY KEY,
    id        TEXT UNIQUE NOT NULL,
    type      TEXT NOT NULL,
    channels  TEXT NOT NULL,  -- JSON array of target channels; [] = every channel
    timestamp INTEGER NOT NULL, -- publish time, Unix nanoseconds
    data      TEXT NOT NULL,
    payload   BLOB,           -- serialized google.protobuf.Any, NULL when absent
    metadata  JSON NOT NULL   -- JSON object of string -> string
)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of the log, as published; `channels` empty = every channel."""

    sequence: int
    id: str
    type: str
    channels: tuple[str, ...]
    timestamp_ns: int
    data: str
    payload: Optional[bytes]
    metadata: dict[str, str]
    # Built once per channel and shared by every stream that delivers it (never mutated).
    _protos: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def reaches(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def to_proto(self, channel: str) -> events_pb2.Event:
        event = self._protos.get(channel)
        if event is None:
            event = self._protos[channel] = self._build_proto(channel)
        return event

    def _build_proto(self, channel: str) -> events_pb2.Event:
        seconds, nanos = divmod(self.timestamp_ns, 1_000_000_000)
        event = events_pb2.Event(
            id=self.id,
            type=self.type,
            timestamp=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
            data=self.data,
            metadata=self.metadata,
            sequence=self.sequence,
            channel=channel,
        )
        if self.payload is not None:
            event.payload.CopyFrom(any_pb2.Any.FromString(self.payload))
        return event


class SqliteEventStore:
    """Durable retained window of the log. Use `await open()` before anything else."""

    def __init__(self, data_dir: str, history_size: int) -> None:
        self._path = os.path.join(data_dir, "events.db")
        self._history_size = history_size
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-db")
        self._db: Optional[sqlite3.Connection] = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> list[StoredEvent]:
        """Opens (creating) the database and returns the retained events, oldest first."""
        return await self._run(self._open)

    async def append(self, events: list[StoredEvent]) -> None:
        """Stores `events` (in sequence order) and forgets what falls out of the
        retention window, in one transaction."""
        await self._run(self._append, events)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # --- on the database thread only ---

    def _open(self) -> list[StoredEvent]:
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        db.execute(SCHEMA)
        self._db = db
        (newest,) = db.execute("SELECT MAX(sequence) FROM events").fetchone()
        if newest is not None:
            db.execute("DELETE FROM events WHERE sequence <= ?", (newest - self._history_size,))
        rows = db.execute(
            "SELECT sequence, id, type, channels, timestamp, data, payload, metadata"
            " FROM events ORDER BY sequence"
        ).fetchall()
        return [
            StoredEvent(
                sequence=seq,
                id=event_id,
                type=event_type,
                channels=tuple(json.loads(channels) or ()),  # Go writes null for none
                timestamp_ns=timestamp,
                data=data,
                payload=payload,
                metadata=json.loads(metadata) or {},
            )
            for seq, event_id, event_type, channels, timestamp, data, payload, metadata in rows
        ]

    def _append(self, events: list[StoredEvent]) -> None:
        db = self._db
        assert db is not None, "store not open"
        with db:  # one transaction
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO events (sequence, id, type, channels, timestamp, data, payload, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        event.sequence,
                        event.id,
                        event.type,
                        json.dumps(list(event.channels)),
                        event.timestamp_ns,
                        event.data,
                        event.payload,
                        json.dumps(event.metadata, sort_keys=True),
                    )
                    for event in events
                ],
            )
            db.execute("DELETE FROM events WHERE sequence <= ?", (events[-1].sequence - self._history_size,))
