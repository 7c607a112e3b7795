"""StreamQueryResults: one read-only SELECT over a real, seeded SQLite file.

The event loop never touches SQLite: every call runs in a small dedicated
thread pool, one batch (`fetchmany`) at a time, so no more than two batches
of a result are ever in memory. Cancelling the RPC interrupts the statement
that is running (`Connection.interrupt`) and stops fetching.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import sqlite3
import tempfile
import threading
from typing import Any

SEED_ROWS = 10_000
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 10_000
DB_FILE_NAME = "query.db"  # the Go server's name too

NOT_A_SINGLE_SELECT = "only a single SELECT statement is allowed"


class QueryRejected(ValueError):
    """The text is not one SELECT statement (the message is the client's status text)."""


def seed_database(path: str) -> None:
    """(Re)builds the file with the contract's rows, aside then renamed into place,
    so the data is always exactly the contract's and never half-seeded."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, aside = tempfile.mkstemp(prefix=os.path.basename(path) + ".seed-", dir=directory)
    os.close(fd)
    try:
        _seed(aside)
        os.replace(aside, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(aside)


def _seed(path: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        with conn:  # one transaction
            conn.execute("DROP TABLE IF EXISTS large_table")
            conn.execute(
                "CREATE TABLE large_table ("
                "id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)"
            )
            conn.executemany(
                "INSERT INTO large_table (id, name, value) VALUES (?, ?, ?)",
                ((i, f"item-{i:05d}", (i * 7919) % 10007) for i in range(1, SEED_ROWS + 1)),
            )


def batch_size_or_default(batch_size: int) -> int:
    if batch_size < 0 or batch_size > MAX_BATCH_SIZE:
        raise QueryRejected(f"batch_size must be between 0 and {MAX_BATCH_SIZE}, got {batch_size}")
    return batch_size or DEFAULT_BATCH_SIZE


def total_batches(row_count: int, batch_size: int) -> int:
    # An empty result still sends one (empty, last) batch.
    return max(1, math.ceil(row_count / batch_size))


# --- the single-SELECT check -------------------------------------------------
#
# A tokenizer, not a parser, with exactly the Go server's rules
# (go/updates/query_check.go):
# - ASCII whitespace, `-- line` and `/* block */` comments separate tokens
#   (an unterminated block comment runs to the end, as SQLite allows);
# - '...', "...", `...` and [...] are one token (a doubled quote character
#   stays inside; [...] has no escapes); unterminated, it runs to the end and
#   SQLite reports the error;
# - words are runs of ASCII letters, digits, `_`, `$` and non-ASCII characters;
#   any other character is a token of its own;
# - one statement: a `;` may end it, and only whitespace and comments may follow;
# - the first token is SELECT or WITH (case-insensitive).
# The read-only connection, not this check, is what keeps the data safe.

_WHITESPACE = frozenset(" \t\n\r\f\v")
_CLOSERS = {"'": "'", '"': '"', "`": "`", "[": "]"}


def _is_word_char(ch: str) -> bool:
    return ch == "_" or ch == "$" or ("0" <= ch <= "9") or ("a" <= ch.lower() <= "z") or ord(ch) >= 0x80


def _skip_quoted(sql: str, i: int) -> int:
    """Index just past the quoted token starting at i."""
    closer = _CLOSERS[sql[i]]
    j = i + 1
    while j < len(sql):
        if sql[j] == closer:
            if closer != "]" and j + 1 < len(sql) and sql[j + 1] == closer:
                j += 2  # escaped quote
                continue
            return j + 1
        j += 1
    return len(sql)


def single_select(sql: str) -> str:
    """The statement without its `;` and trailing comments (ready to be wrapped in
    SELECT COUNT(*) FROM (...)), or QueryRejected."""
    first: str | None = None
    last_end = 0
    ended = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in _WHITESPACE:
            i += 1
            continue
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close < 0 else close + 2
            continue
        if ch == ";":
            if ended:  # ";;" is a second (empty) statement
                raise QueryRejected(NOT_A_SINGLE_SELECT)
            ended = True
            i += 1
            continue
        if ch in _CLOSERS:
            end = _skip_quoted(sql, i)
        elif _is_word_char(ch):
            end = i + 1
            while end < n and _is_word_char(sql[end]):
                end += 1
        else:  # operators, parentheses, punctuation
            end = i + 1
        if ended:  # something after the ";": a second statement
            raise QueryRejected(NOT_A_SINGLE_SELECT)
        if first is None:
            first = sql[i:end].upper()
        last_end, i = end, end
    if first not in ("SELECT", "WITH"):
        raise QueryRejected(NOT_A_SINGLE_SELECT)
    return sql[:last_end]


# --- values as text ----------------------------------------------------------


def value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest round-trip; the contract's REAL format
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --- one running query -------------------------------------------------------


class QueryRun:
    """A read-only connection and cursor for one RPC.

    `start`, `fetch` and `close` block and run in a worker thread, one at a
    time (the lock); `stop` may be called from any thread at any moment.
    """

    def __init__(self, db_path: str, statement: str, batch_size: int) -> None:
        self._uri = pathlib.Path(db_path).absolute().as_uri() + "?mode=ro"
        self._statement = statement
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self.columns: list[str] = []
        self.stopped = False
        self.closed = threading.Event()

    def start(self) -> int:
        """Opens the connection, counts the statement's rows, then runs it."""
        with self._lock:
            self._check_running()
            self._conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._conn.execute("PRAGMA query_only = ON")
            self._check_running()
            # A newline before ")" keeps a trailing `-- comment` from eating it.
            (count,) = self._conn.execute(f"SELECT COUNT(*) FROM (\n{self._statement}\n)").fetchone()
            self._check_running()
            self._cursor = self._conn.execute(self._statement)
            self.columns = [d[0] for d in self._cursor.description or ()]
            return int(count)

    def fetch(self) -> list[dict[str, str]]:
        """The next batch (fewer rows than the batch size only at the end)."""
        with self._lock:
            self._check_running()
            assert self._cursor is not None
            rows = self._cursor.fetchmany(self._batch_size)
            return [{name: value_text(v) for name, v in zip(self.columns, row)} for row in rows]

    def stop(self) -> None:
        """Stops the statement that is running and any further fetch."""
        self.stopped = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.interrupt()

    def close(self) -> None:
        with self._lock:  # waits for an interrupted fetch to return
            if self._conn is not None:
                self._conn.close()
                self._conn = self._cursor = None
        self.closed.set()

    def _check_running(self) -> None:
        if self.stopped:
            raise sqlite3.OperationalError("interrupted")
