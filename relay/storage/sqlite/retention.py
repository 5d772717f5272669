"""Retention on SQLite (relay.node.retention): the purge's steps and its preview.

The predicates are relay.storage.purge_sql's (one text for both backends,
with `:name` parameters from `Cutoffs`). Purge and preview use the same
text, so `relay purge --dry-run` shows exactly what a purge deletes.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from relay.storage import unread_sql as unread
from relay.storage.purge_sql import (
    CONTENT_DUE,
    CONTENT_DUE_PARTS,
    DECISIONS_DUE,
    METADATA_DUE,
    QUEUED,
    params,
)
from relay.storage.records import (
    ContentDue,
    Counts,
    Cutoffs,
    Deleted,
    MetadataDue,
    Preview,
)
from relay.storage.rowmaps import due_of
from relay.storage.sqlite import rows as q
from relay.storage.sqlite.inline import InlineConnection


class RetentionWrites:
    """The retention part of the write transaction (relay.storage.sqlite.writes)."""

    connection: InlineConnection

    async def content_due(self, cut: Cutoffs, limit: int) -> tuple[list[ContentDue], bool]:
        by_rid: dict[int, ContentDue] = {}
        more = False
        for due in CONTENT_DUE_PARTS:
            found = await q.rows(
                self.connection,
                f"SELECT e.rid, e.payload_sha, {QUEUED} AS queued FROM envelopes e"
                f" WHERE e.payload_sha IS NOT NULL AND {due} ORDER BY e.received LIMIT :limit",
                params(cut, limit),
            )
            more = more or len(found) == limit
            for r in found:
                by_rid[int(r["rid"])] = ContentDue(
                    int(r["rid"]), bytes(r["payload_sha"]), bool(r["queued"])
                )
        return list(by_rid.values()), more

    async def clear_content(self, rids: Sequence[int]) -> None:
        await q.many(
            self.connection,
            "UPDATE envelopes SET payload_sha = NULL, discard = 0 WHERE rid = ?",
            [(r,) for r in rids],
        )

    async def mark_discard(self, rids: Sequence[int]) -> None:
        await q.many(
            self.connection, "UPDATE envelopes SET discard = 1 WHERE rid = ?", [(r,) for r in rids]
        )

    async def content_received_before(self, rids: Sequence[int], cut: int) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk in q.chunks(list(rids)):
            for r in await q.rows(
                self.connection,
                "SELECT rid, payload_sha FROM envelopes WHERE payload_sha IS NOT NULL"
                f" AND received <= ? AND rid IN ({q.marks(chunk)})",
                (cut, *chunk),
            ):
                found[int(r["rid"])] = bytes(r["payload_sha"])
        return found

    async def metadata_due(self, cut: Cutoffs, limit: int) -> list[MetadataDue]:
        found = await q.rows(
            self.connection,
            f"SELECT e.rid, e.payload_sha FROM envelopes e WHERE {METADATA_DUE}"
            " ORDER BY e.received LIMIT :limit",
            params(cut, limit),
        )
        return [
            MetadataDue(
                int(r["rid"]), bytes(r["payload_sha"]) if r["payload_sha"] is not None else None
            )
            for r in found
        ]

    async def delete_envelopes(self, rids: Sequence[int]) -> Deleted:
        counts = {"inbox": 0, "recipients": 0, "envelopes": 0}
        for chunk in q.chunks(list(rids)):
            await self.connection.execute(unread.take(f"i.rid IN ({q.marks(chunk)})"), chunk)
            # an envelope's attempts go with it; the purge record does not count them
            await self.connection.execute(
                f"DELETE FROM attempts WHERE rid IN ({q.marks(chunk)})", chunk
            )
            for table in counts:  # envelopes last: the other two reference it
                counts[table] += await q.changed(
                    self.connection, f"DELETE FROM {table} WHERE rid IN ({q.marks(chunk)})", chunk
                )
        return Deleted(**counts)

    async def delete_decisions_due(self, cut: Cutoffs, limit: int) -> int:
        return await q.changed(
            self.connection,
            "DELETE FROM decisions WHERE seq IN (SELECT d.seq FROM decisions d"
            f" WHERE {DECISIONS_DUE} ORDER BY d.at LIMIT :limit)",
            params(cut, limit),
        )

    async def drop_unreferenced_payloads(self, shas: Sequence[bytes]) -> tuple[int, int]:
        deleted = 0
        size = 0
        for chunk in q.chunks(sorted(set(shas))):
            gone = await q.rows(
                self.connection,
                f"SELECT sha, length(body) AS n FROM payloads p WHERE p.sha IN ({q.marks(chunk)})"
                " AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.payload_sha = p.sha)",
                chunk,
            )
            if not gone:
                continue
            await self.connection.execute(
                f"DELETE FROM payloads WHERE sha IN ({q.marks(gone)})", [r["sha"] for r in gone]
            )
            deleted += len(gone)
            size += sum(int(r["n"]) for r in gone)
        return deleted, size

    async def record_purge(self, now: int, source: str, counts: Counts) -> None:
        d = counts.as_dict()
        await self.connection.execute(
            f"INSERT INTO purges (at, source, {', '.join(d)})"
            f" VALUES (?, ?, {', '.join('?' * len(d))})",
            (now, source, *d.values()),
        )


async def preview(db: aiosqlite.Connection, cut: Cutoffs, limit: int) -> Preview:
    """What a purge at `cut` would delete (relay.storage.interface.Reads.retention_preview)."""
    p = params(cut, limit)

    async def count(sql: str) -> int:
        row = await q.one(db, sql, p)
        return int(row[0] or 0) if row else 0

    due = CONTENT_DUE
    meta = METADATA_DUE
    contents = await count(f"SELECT count(*) FROM envelopes e WHERE {due}")
    ended = await count(f"SELECT count(*) FROM envelopes e WHERE {due} AND {QUEUED}")
    envelopes = await count(f"SELECT count(*) FROM envelopes e WHERE {meta}")
    inbox = await count(
        f"SELECT count(*) FROM inbox i JOIN envelopes e ON e.rid = i.rid WHERE {meta}"
    )
    recipients = await count(
        f"SELECT count(*) FROM recipients r JOIN envelopes e ON e.rid = r.rid WHERE {meta}"
    )
    decisions = await count(f"SELECT count(*) FROM decisions d WHERE {DECISIONS_DUE}")
    survivors = (
        f"SELECT 1 FROM envelopes e WHERE e.payload_sha = p.sha AND NOT {due} AND NOT {meta}"
    )
    row = await q.one(
        db,
        "SELECT count(*), coalesce(sum(length(p.body)), 0) FROM payloads p"
        f" WHERE NOT EXISTS ({survivors})",
        p,
    )
    payloads, payload_bytes = (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
    content = await q.rows(
        db,
        "SELECT e.origin, e.id, e.kind, e.received, e.expires,"
        " CASE WHEN e.received <= :cmax THEN 'content_max' ELSE 'discarded' END AS why,"
        f" {QUEUED} AS queued FROM envelopes e WHERE {due}"
        " ORDER BY e.received, e.rid LIMIT :limit",
        p,
    )
    metadata = await q.rows(
        db,
        "SELECT e.origin, e.id, e.kind, e.received, e.expires, 'metadata_max' AS why,"
        f" 0 AS queued FROM envelopes e WHERE {meta} ORDER BY e.received, e.rid LIMIT :limit",
        p,
    )
    counts = Counts(
        contents=contents,
        payloads=payloads,
        payload_bytes=payload_bytes,
        ended=ended,
        envelopes=envelopes,
        inbox=inbox,
        recipients=recipients,
        decisions=decisions,
    )
    return Preview(cut, counts, tuple(map(due_of, content)), tuple(map(due_of, metadata)))
