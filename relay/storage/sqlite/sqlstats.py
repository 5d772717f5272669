"""CPU per SQL statement of the writer, for `relay bench --sql-stats` (docs/performance.md).

Invariants:
- Off unless the environment names a file in `RELAY_SQL_STATS`: then the
  writer's connection (relay.storage.sqlite.inline) is a `TimedConnection`,
  and nothing else changes in how the node runs.
- Each call's cost is the calling thread's CPU (`time.thread_time`), not wall
  time: statements run inline on the loop's thread, COMMIT in the writer
  thread, and only their own thread's CPU is theirs. Fetching a cursor's rows
  counts to its statement.
- Grouped by SQL text (whitespace folded), with the number of calls and rows
  (executemany: parameter rows; execute: 1).
- On close the figures are added to the file (JSON), so a process that opens
  its store twice, or a node run twice, accumulates them; a file that is not
  such a document is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from relay.storage.sqlite.inline import InlineConnection, InlineCursor, open_writer_sqlite

STATS_ENV = "RELAY_SQL_STATS"
COMMIT = "COMMIT (in the writer thread, with fdatasync)"


class StatementStats:
    """Calls, rows and thread CPU seconds per SQL text."""

    def __init__(self) -> None:
        self.by_sql: dict[str, list[float]] = {}  # sql -> [calls, rows, seconds]

    def add(self, sql: str, rows: int, seconds: float, calls: int = 1) -> None:
        entry = self.by_sql.get(sql)
        if entry is None:
            entry = self.by_sql[sql] = [0, 0, 0.0]
        entry[0] += calls
        entry[1] += rows
        entry[2] += seconds

    def as_rows(self) -> list[dict[str, Any]]:
        """One dict per statement, dearest first."""
        rows = [
            {"sql": sql, "calls": int(c), "rows": int(r), "cpu_s": s}
            for sql, (c, r, s) in self.by_sql.items()
        ]
        return sorted(rows, key=lambda row: -float(row["cpu_s"]))

    def merge_into(self, path: Path) -> None:
        """Add these figures to the JSON document at `path` (created if missing)."""
        total = StatementStats()
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            for row in json.loads(path.read_text(encoding="utf-8"))["statements"]:
                total.add(str(row["sql"]), int(row["rows"]), float(row["cpu_s"]), int(row["calls"]))
        for sql, (c, r, s) in self.by_sql.items():
            total.add(sql, int(r), s, int(c))
        doc = {"pid": os.getpid(), "statements": total.as_rows()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def _key(sql: str) -> str:
    return " ".join(sql.split())


class TimedCursor(InlineCursor):
    """A cursor whose fetches count to its statement."""

    def __init__(self, cur: sqlite3.Cursor, stats: StatementStats, sql: str) -> None:
        super().__init__(cur)
        self._stats = stats
        self._sql = sql

    async def fetchone(self) -> sqlite3.Row | None:
        t = time.thread_time()
        row = await super().fetchone()
        self._stats.add(self._sql, 0, time.thread_time() - t, calls=0)
        return row

    async def fetchall(self) -> list[sqlite3.Row]:
        t = time.thread_time()
        rows = await super().fetchall()
        self._stats.add(self._sql, 0, time.thread_time() - t, calls=0)
        return rows


class TimedConnection(InlineConnection):
    """The writer's connection, timing each statement; written to `path` on close."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn)
        self.stats = StatementStats()
        self._path = path

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        t = time.thread_time()
        cur = self._conn.execute(sql, params)
        key = _key(sql)
        self.stats.add(key, 1, time.thread_time() - t)
        return TimedCursor(cur, self.stats, key)

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> InlineCursor:
        rows = params if isinstance(params, list | tuple) else list(params)
        t = time.thread_time()
        cur = self._conn.executemany(sql, rows)
        self.stats.add(_key(sql), len(rows), time.thread_time() - t)
        return InlineCursor(cur)

    async def close(self) -> None:
        await super().close()
        self.stats.merge_into(self._path)

    def _commit(self) -> None:
        t = time.thread_time()
        super()._commit()
        self.stats.add(COMMIT, 1, time.thread_time() - t)


def connect_writer(path: str) -> InlineConnection:
    """The writer's connection: timed if RELAY_SQL_STATS names a file, plain otherwise."""
    out = os.environ.get(STATS_ENV, "")
    conn = open_writer_sqlite(path)
    return TimedConnection(conn, Path(out)) if out else InlineConnection(conn)
