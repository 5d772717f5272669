"""The writer's connection: plain sqlite3 run on the event loop, fsync in a thread.

Invariants:
- Only the group-commit writer (relay.storage.sqlite.store) uses it, one
  statement at a time; nothing else touches the sqlite3 connection, so it
  may move between the loop's thread and the one writer thread.
- A statement runs inline: a direct sqlite3 call costs 1.5-5 µs, a hop to a
  thread and back (what aiosqlite does for every statement) 20-180 µs of CPU
  and a wake-up of the event loop. Only COMMIT, which waits for fdatasync,
  runs in the one writer thread, so the loop serves requests meanwhile.
  Large executemany calls stay inline too: store jobs shaped like an
  origin's (submit 100, settle, apply a receipt) cost 61-65 µs of CPU per
  message this way, 74-84 with executemany of 50+ rows in the thread and
  74-85 through aiosqlite (same sitting, three runs each).
- The awaitable surface mirrors the part of aiosqlite's Connection that the
  write transaction and the tests use (`execute`, `executemany`, cursors with
  `fetchone`/`fetchall`/`rowcount`/`close`, `in_transaction`), so the same
  row helpers (relay.storage.sqlite.rows) serve both connections.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class InlineCursor:
    """A finished statement's cursor behind aiosqlite's awaitable cursor methods."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    async def fetchone(self) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._cur.fetchone()
        return row

    async def fetchall(self) -> list[sqlite3.Row]:
        return list(self._cur.fetchall())

    async def close(self) -> None:
        self._cur.close()


class InlineConnection:
    """A sqlite3 connection for the writer task; see the module invariants."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        """Run one statement on the loop's thread."""
        return InlineCursor(self._conn.execute(sql, params))

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> InlineCursor:
        """Run a statement once per row of `params`, on the loop's thread."""
        return InlineCursor(self._conn.executemany(sql, params))

    async def commit(self) -> None:
        """COMMIT in the writer thread: it waits for fdatasync."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._commit)

    async def close(self) -> None:
        """Close the connection and stop the writer thread."""
        self._thread.shutdown(wait=True)
        self._conn.close()

    def _commit(self) -> None:
        self._conn.execute("COMMIT")


def open_writer_sqlite(path: str) -> sqlite3.Connection:
    """The writer's sqlite3 connection to `path`, autocommit (explicit transactions)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn
