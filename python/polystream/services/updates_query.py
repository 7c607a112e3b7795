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
# Memory bounds whatever the SQL (as in Go): one value (string or blob, also an
# intermediate one such as zeroblob(1e9)) and one batch's text.
MAX_VALUE_BYTES = 1 << 20
MAX_BATCH_BYTES = 8 << 20
CREATE_TABLE = "CREATE TABLE large_table (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)"

NOT_A_SINGLE_SELECT = "only a single SELECT statement is allowed"


class QueryRejected(ValueError):
    """The text is not one SELECT statement (the message is the client's status text)."""


class BatchTooLarge(Exception):
    def __str__(self) -> str:
        return f"query batch larger than {MAX_BATCH_BYTES} bytes; use a smaller batch_size"


def seed_database(path: str) -> None:
    """Makes sure the file holds exactly the contract's table, rebuilding it if not:
    aside, then renamed into place, so a reader never sees a half-seeded file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if is_seeded(path):
        return
    fd, aside = tempfile.mkstemp(prefix=os.path.basename(path) + ".seed-", dir=directory)
    os.close(fd)
    try:
        _seed(aside)
        os.replace(aside, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(aside)


def is_seeded(path: str) -> bool:
    """True when the file holds the contract's table and nothing else, checked row by row in SQLite."""
    if not os.path.exists(path):
        return False
    try:
        uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            objects, schema = conn.execute("SELECT COUNT(*), COALESCE(MAX(sql), '') FROM sqlite_master").fetchone()
            if objects != 1 or schema != CREATE_TABLE:
                return False
            checks = conn.execute(
                "SELECT COUNT(*), SUM(id BETWEEN 1 AND ?1), SUM(name = printf('item-%05d', id)),"
                " SUM(value = (id * 7919) % 10007) FROM large_table",
                (SEED_ROWS,),
            ).fetchone()
            return all(check == SEED_ROWS for check in checks)
    except sqlite3.Error:
        return False


def _seed(path: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        with conn:  # one transaction
            conn.execute("DROP TABLE IF EXISTS large_table")
            conn.execute(CREATE_TABLE)
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
        self._ahead: tuple | None = None  # the row read ahead of the current batch
        self.columns: list[str] = []
        self.stopped = False
        self.closed = threading.Event()

    def start(self) -> int:
        """Opens the connection, counts the statement's rows, then runs it."""
        with self._lock:
            self._check_running()
            self._conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._conn.execute("PRAGMA query_only = ON")
            self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            # interrupt() is lost when it lands between statements (SQLite
            # resets it when a statement starts): a stop just before the
            # COUNT left an endless query running. The handler sees `stopped`
            # whenever it lands.
            self._conn.set_progress_handler(lambda: 1 if self.stopped else 0, 1000)
            self._check_running()
            # A newline before ")" keeps a trailing `-- comment` from eating it.
            (count,) = self._conn.execute(f"SELECT COUNT(*) FROM (\n{self._statement}\n)").fetchone()
            self._check_running()
            self._cursor = self._conn.execute(self._statement)
            self.columns = [d[0] for d in self._cursor.description or ()]
            self._ahead = self._cursor.fetchone()
            return int(count)

    def fetch(self) -> tuple[list[dict[str, str]], bool]:
        """The next batch and whether it is the last. Rows are read one at a time
        and one row ahead, so `is_last` is the cursor's truth and no more than a
        batch plus one row (and at most MAX_BATCH_BYTES of text) is in memory."""
        with self._lock:
            self._check_running()
            assert self._cursor is not None
            batch: list[dict[str, str]] = []
            size = 0
            while self._ahead is not None and len(batch) < self._batch_size:
                row = {name: value_text(v) for name, v in zip(self.columns, self._ahead)}
                size += sum(len(name.encode()) + len(text.encode()) for name, text in row.items())
                batch.append(row)
                if size > MAX_BATCH_BYTES:
                    raise BatchTooLarge()
                self._ahead = self._cursor.fetchone()
            return batch, self._ahead is None

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
