"""Erasure on SQLite: the primitives relay.storage.erasure.EraseSteps is written in
(the lookups and the settling of held erasures are PathSteps', written once there)."""

from __future__ import annotations

from collections.abc import Sequence

from relay.storage import unread_sql as unread
from relay.storage.erasure import (
    RECORD_COLS,
    EraseSteps,
    Erasure,
    PathSteps,
    Stripped,
    record_row,
)
from relay.storage.rowmaps import Row
from relay.storage.sqlite import rows as q
from relay.storage.sqlite.inline import InlineConnection


class ErasureWrites(EraseSteps, PathSteps):
    """The erasure part of the write transaction (relay.storage.sqlite.writes)."""

    connection: InlineConnection

    async def _erasure_rows(self, sql: str, params: dict[str, object]) -> Sequence[Row]:
        return await q.rows(self.connection, sql, params)

    async def strip_copies(self, rids: Sequence[int], now: int) -> Stripped:
        db = self.connection
        mailboxes: dict[int, list[str]] = {}
        dequeued: set[int] = set()
        # tombstones get seqs past every seq handed out (AUTOINCREMENT, migration
        # 18): readers and webhooks page "after seq N"; the ones inserted below,
        # and only they, are past the top seq before
        top = await q.one(db, "SELECT coalesce(max(seq), 0) FROM inbox")
        seq = int(top[0]) if top else 0
        for chunk in q.chunks(sorted(set(rids))):
            m = q.marks(chunk)
            for r in await q.rows(db, f"SELECT rid, mailbox FROM inbox WHERE rid IN ({m})", chunk):
                mailboxes.setdefault(int(r["rid"]), []).append(str(r["mailbox"]))
            for r in await q.rows(db, f"SELECT rid FROM queue WHERE rid IN ({m})", chunk):
                dequeued.add(int(r["rid"]))
            # unread rows weigh their payload until `erased` is set: taken off before
            await db.execute(unread.take(f"i.rid IN ({m})"), chunk)
            await db.execute(f"DELETE FROM inbox WHERE rid IN ({m})", chunk)
            await db.execute(f"DELETE FROM queue WHERE rid IN ({m})", chunk)
            await db.execute(f"DELETE FROM attempts WHERE rid IN ({m})", chunk)
            await db.execute(
                f"UPDATE envelopes SET erased = ? WHERE rid IN ({m}) AND erased IS NULL",
                (now, *chunk),
            )
        rows = [(mb, rid) for rid, mbs in sorted(mailboxes.items()) for mb in sorted(mbs)]
        await q.many(
            db,
            "INSERT INTO inbox (mailbox, rid, delivered) VALUES (?, ?, ?)",
            [(mb, rid, now) for mb, rid in rows],
        )
        # the tombstones, past the top seq, weigh only their headers now
        await db.execute(unread.add("i.seq > ?"), (seq,))
        return Stripped(
            {rid: tuple(sorted(mbs)) for rid, mbs in mailboxes.items()}, frozenset(dequeued)
        )

    async def add_erasures(self, records: Sequence[Erasure]) -> None:
        await q.many(
            self.connection,
            f"INSERT OR IGNORE INTO erasures ({RECORD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [record_row(r) for r in records],
        )
