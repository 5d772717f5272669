"""Erasure on PostgreSQL: the primitives relay.storage.erasure.EraseSteps is written in
(the lookups and the settling of held erasures are PathSteps', written once there)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg.rows import dict_row

from relay.storage import unread_sql as unread
from relay.storage.erasure import (
    RECORD_COLS,
    EraseSteps,
    Erasure,
    PathSteps,
    Stripped,
    record_row,
)
from relay.storage.postgres import sql as q
from relay.storage.purge_sql import pyformat
from relay.storage.rowmaps import Row


class ErasureWrites(EraseSteps, PathSteps):
    """The erasure part of the write transaction (relay.storage.postgres.writes)."""

    connection: q.Conn

    async def _erasure_rows(self, sql: str, params: dict[str, object]) -> Sequence[Row]:
        return await path_rows(self.connection, sql, params)

    async def strip_copies(self, rids: Sequence[int], now: int) -> Stripped:
        db = self.connection
        wanted = sorted(set(rids))
        mailboxes: dict[int, list[str]] = {}
        # unread rows weigh their payload until `erased` is set: taken off before
        await db.execute(unread.take("i.rid = ANY(%s)"), (wanted,))
        for r in await q.rows(
            db, "DELETE FROM inbox WHERE rid = ANY(%s) RETURNING rid, mailbox, seq", (wanted,)
        ):
            mailboxes.setdefault(int(r["rid"]), []).append(str(r["mailbox"]))
        gone = await q.rows(db, "DELETE FROM queue WHERE rid = ANY(%s) RETURNING rid", (wanted,))
        await db.execute("DELETE FROM attempts WHERE rid = ANY(%s)", (wanted,))
        await db.execute(
            "UPDATE envelopes SET erased = %s WHERE rid = ANY(%s) AND erased IS NULL",
            (now, wanted),
        )
        await q.many(
            db,
            "INSERT INTO inbox (mailbox, rid, delivered) VALUES (%s, %s, %s)",
            [(mb, rid, now) for rid, mbs in sorted(mailboxes.items()) for mb in sorted(mbs)],
        )
        # the tombstones are these rids' only inbox rows now, and weigh their headers
        await db.execute(unread.add("i.rid = ANY(%s)"), (wanted,))
        return Stripped(
            {rid: tuple(sorted(mbs)) for rid, mbs in mailboxes.items()},
            frozenset(int(r["rid"]) for r in gone),
        )

    async def add_erasures(self, records: Sequence[Erasure]) -> None:
        await q.many(
            self.connection,
            f"INSERT INTO erasures ({RECORD_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (origin, id) DO NOTHING",
            [record_row(r) for r in records],
        )


async def path_rows(db: q.Conn, sql: str, params: dict[str, object]) -> list[Row]:
    """Run one of relay.storage.erasure's `:name` statements; its rows (none for a write)."""
    async with db.cursor(row_factory=dict_row) as cur:
        await cur.execute(pyformat(sql), params)
        return list(await cur.fetchall()) if cur.description is not None else []
