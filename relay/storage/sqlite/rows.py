"""Rows to records, and the queries the reads and the write transaction share.

Invariants:
- Every SELECT that builds a record names its columns, and the record is
  built here by name, once per kind of row.
- Helpers take any connection: the reader's (aiosqlite), the writer's
  (relay.storage.sqlite.inline, inside a transaction, seeing its own writes)
  or a read-only one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite
import msgpack

from relay.storage.chunking import chunks as chunks
from relay.storage.rowmaps import QUEUED_COLS, pack_trace, peer_state_of, queued_of

# re-exported for the SQLite modules
__all__ = ["QUEUED_COLS", "pack_trace", "peer_state_of", "queued_of"]
from relay.storage.sqlite.inline import InlineConnection

# The reader's aiosqlite connection or the writer's inline one: same awaitable surface.
Conn = aiosqlite.Connection | InlineConnection


async def rows(db: Conn, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    """Every row of a query."""
    cur = await db.execute(sql, params)
    try:
        return list(await cur.fetchall())
    finally:
        await cur.close()


async def one(db: Conn, sql: str, params: Any = ()) -> sqlite3.Row | None:
    """The first row of a query, or None."""
    cur = await db.execute(sql, params)
    try:
        row: sqlite3.Row | None = await cur.fetchone()
        return row
    finally:
        await cur.close()


async def changed(db: Conn, sql: str, params: Any = ()) -> int:
    """Run a write statement; the rows it changed."""
    cur = await db.execute(sql, params)
    n = cur.rowcount
    await cur.close()
    return n


def marks(values: Sequence[Any]) -> str:
    """`?,?,...`: one placeholder per value."""
    return ",".join("?" * len(values))


async def stored_results(db: Conn, peer: str, batch: bytes) -> dict[bytes, str] | None:
    """The results recorded for `peer`'s batch, None if it was not seen."""
    row = await one(db, "SELECT results FROM batches WHERE peer = ? AND batch = ?", (peer, batch))
    if row is None:
        return None
    raw = msgpack.unpackb(row["results"], raw=False)
    return {bytes(k): str(v) for k, v in raw.items()}


async def idempotent_answer(db: Conn, mailbox: str, key: str) -> dict[str, object] | None:
    """The answer stored for (mailbox, key), if any."""
    row = await one(
        db, "SELECT response FROM idempotency WHERE mailbox = ? AND key = ?", (mailbox, key)
    )
    if row is None:
        return None
    answer: dict[str, object] = json.loads(row["response"])
    return answer


async def unread_bytes(db: Conn, mailboxes: Sequence[str]) -> dict[str, int]:
    """Unacked payload bytes of each of `mailboxes` (0 for one with nothing unread)."""
    found = dict.fromkeys(mailboxes, 0)
    for chunk in chunks(list(found)):
        for r in await rows(
            db, f"SELECT mailbox, bytes FROM unread WHERE mailbox IN ({marks(chunk)})", chunk
        ):
            found[str(r[0])] = int(r[1])
    return found


def pack_results(results: Mapping[bytes, str]) -> bytes:
    """Batch results as stored."""
    packed: bytes = msgpack.packb(dict(results), use_bin_type=True)
    return packed


async def many(db: Conn, sql: str, params: Sequence[Sequence[Any]]) -> None:
    """executemany, skipped when there is nothing to write (each call is a thread hop)."""
    if params:
        await db.executemany(sql, params)
