"""Read-only looks into a node's SQLite database from another process (`relay bench`).

Invariants:
- Every connection is read-only (`mode=ro`, through `backup.connect_read_only`):
  nothing here writes, and reading beside a running node is safe under WAL.
- Callers get ints, bytes and strings, never a sqlite3 or aiosqlite object, so
  the SQL and the drivers stay inside relay.storage.
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path
from typing import Any

from relay.storage.sqlite.backup import connect_read_only

# The function aiosqlite runs in its one thread per connection; a profile of a
# node names the lines of it that `worker_thread_lines` describes.
WORKER_THREAD_FUNCTION = "_connection_worker_thread"


class DatabaseView:
    """A read-only connection to one node's database and the questions the bench asks."""

    def __init__(self, path: Path) -> None:
        self._db = connect_read_only(path)

    def close(self) -> None:
        """Close the connection (the view is unusable afterwards)."""
        self._db.close()

    def _one(self, sql: str) -> tuple[Any, ...]:
        row = self._db.execute(sql).fetchone()
        return tuple(row) if row is not None else ()

    def max_inbox_seq(self) -> int:
        """The highest inbox.seq committed so far, 0 for an empty inbox."""
        row = self._one("SELECT max(seq) FROM inbox")
        return int(row[0]) if row and row[0] is not None else 0

    def inbox_count(self) -> int:
        """Rows in the inbox."""
        return int(self._one("SELECT count(*) FROM inbox")[0])

    def inbox_rows(self, with_ids: bool) -> list[tuple[bytes, int, int, int]]:
        """(envelope id, inbox.delivered, envelope.created, inbox.seq) of every inbox row.

        Without `with_ids` the id is b"" (reading ids costs time on large runs).
        """
        cols = "e.id" if with_ids else "x''"
        return [
            (bytes(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for r in self._db.execute(
                f"SELECT {cols}, i.delivered, e.created, i.seq FROM inbox i JOIN envelopes e"
                " ON e.rid = i.rid"
            )
        ]

    def message_envelopes(self) -> tuple[int, int]:
        """(message envelopes stored, those not received directly from their origin)."""
        row = self._one(
            "SELECT count(*), sum(from_peer IS NULL OR from_peer != origin) FROM envelopes"
            " WHERE kind = 'message'"
        )
        return int(row[0] or 0), int(row[1] or 0)

    def journal_mode(self) -> str:
        """The database's journal mode (`wal` for a node's database)."""
        return str(self._one("PRAGMA journal_mode")[0])


def sqlite_version() -> str:
    """The version of the SQLite library this process (and a node on this machine) runs."""
    return sqlite3.sqlite_version


def worker_thread_lines() -> dict[int, str]:
    """Line numbers of aiosqlite's worker thread loop, named by what the thread does there."""
    try:
        import aiosqlite.core as core

        lines, first = inspect.getsourcelines(getattr(core, WORKER_THREAD_FUNCTION))
    except (ImportError, AttributeError, OSError, TypeError):
        return {}
    names: dict[int, str] = {}
    for i, text in enumerate(lines, start=first):
        if "tx.get()" in text:
            names[i] = "idle: aiosqlite thread waiting for the next statement"
        elif "result = function()" in text:
            names[i] = "aiosqlite thread: one sqlite call (SQL, WAL I/O, fsync)"
        elif "call_soon_threadsafe" in text:
            names[i] = "aiosqlite thread: waking the event loop (call_soon_threadsafe)"
    return names
