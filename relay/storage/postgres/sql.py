"""Small helpers over a psycopg connection, shared by the reads and the write transaction.

Invariants:
- Rows come back as dicts by column name (relay.storage.rowmaps reads them).
- Lists go to the server as one array parameter (`= ANY(%s)`), never as a
  statement per value or a chunked `IN (...)`.
- Statements a node runs again and again are prepared on the server by
  psycopg after a few uses (`prepare_threshold`): parse and plan once per
  connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

Conn = AsyncConnection[Any]
Row = dict[str, Any]


async def rows(db: Conn, sql: str, params: Any = None) -> list[Row]:
    """Every row of a query, as dicts."""
    async with db.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def one(db: Conn, sql: str, params: Any = None) -> Row | None:
    """The first row of a query, or None."""
    async with db.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def value(db: Conn, sql: str, params: Any = None) -> Any:
    """The first column of the first row (None if there is no row)."""
    async with db.cursor() as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    return row[0] if row is not None else None


async def changed(db: Conn, sql: str, params: Any = None) -> int:
    """Run a write statement; the rows it changed."""
    async with db.cursor() as cur:
        await cur.execute(sql, params)
        return cur.rowcount


async def many(db: Conn, sql: str, params: Sequence[Sequence[Any]]) -> None:
    """executemany (pipelined by psycopg), skipped when there is nothing to write."""
    if len(params) == 1:  # one row: a plain execute, without entering pipeline mode
        await db.execute(sql, params[0])
    elif params:
        async with db.cursor() as cur:
            await cur.executemany(sql, params)
