"""Retention on PostgreSQL: the purge's steps and its preview.

The predicates are relay.storage.purge_sql's, the same text SQLite runs
(spelt with psycopg's `%(name)s`), so both backends purge exactly the rows
their `relay purge --dry-run` shows.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.storage import purge_sql as p
from relay.storage import rowmaps
from relay.storage import unread_sql as unread
from relay.storage.postgres import sql as q
from relay.storage.records import (
    ContentDue,
    Counts,
    Cutoffs,
    Deleted,
    MetadataDue,
    Preview,
)

CONTENT_DUE = p.pyformat(p.CONTENT_DUE)
CONTENT_DUE_PARTS = tuple(map(p.pyformat, p.CONTENT_DUE_PARTS))
QUEUED = p.QUEUED
METADATA_DUE = p.pyformat(p.METADATA_DUE)
DECISIONS_DUE = p.pyformat(p.DECISIONS_DUE)


class RetentionWrites:
    """The retention part of the write transaction (relay.storage.postgres.writes)."""

    connection: q.Conn

    async def content_due(self, cut: Cutoffs, limit: int) -> tuple[list[ContentDue], bool]:
        by_rid: dict[int, ContentDue] = {}
        more = False
        for due in CONTENT_DUE_PARTS:
            found = await q.rows(
                self.connection,
                f"SELECT e.rid, e.payload_sha, {QUEUED} AS queued FROM envelopes e"
                f" WHERE e.payload_sha IS NOT NULL AND {due} ORDER BY e.received LIMIT %(limit)s",
                p.params(cut, limit),
            )
            more = more or len(found) == limit
            for r in found:
                by_rid[int(r["rid"])] = ContentDue(
                    int(r["rid"]), bytes(r["payload_sha"]), bool(r["queued"])
                )
        return list(by_rid.values()), more

    async def clear_content(self, rids: Sequence[int]) -> None:
        await self.connection.execute(
            "UPDATE envelopes SET payload_sha = NULL, discard = 0 WHERE rid = ANY(%s)",
            (list(rids),),
        )

    async def mark_discard(self, rids: Sequence[int]) -> None:
        await self.connection.execute(
            "UPDATE envelopes SET discard = 1 WHERE rid = ANY(%s)", (list(rids),)
        )

    async def content_received_before(self, rids: Sequence[int], cut: int) -> dict[int, bytes]:
        found = await q.rows(
            self.connection,
            "SELECT rid, payload_sha FROM envelopes WHERE payload_sha IS NOT NULL"
            " AND received <= %s AND rid = ANY(%s)",
            (cut, list(rids)),
        )
        return {int(r["rid"]): bytes(r["payload_sha"]) for r in found}

    async def metadata_due(self, cut: Cutoffs, limit: int) -> list[MetadataDue]:
        found = await q.rows(
            self.connection,
            f"SELECT e.rid, e.payload_sha FROM envelopes e WHERE {METADATA_DUE}"
            " ORDER BY e.received LIMIT %(limit)s",
            p.params(cut, limit),
        )
        return [
            MetadataDue(
                int(r["rid"]), bytes(r["payload_sha"]) if r["payload_sha"] is not None else None
            )
            for r in found
        ]

    async def delete_envelopes(self, rids: Sequence[int]) -> Deleted:
        counts = {"inbox": 0, "recipients": 0, "envelopes": 0}
        await self.connection.execute(unread.take("i.rid = ANY(%s)"), (list(rids),))
        # an envelope's attempts go with it; the purge record does not count them
        await self.connection.execute("DELETE FROM attempts WHERE rid = ANY(%s)", (list(rids),))
        for table in counts:  # envelopes last: the other two reference it
            counts[table] = await q.changed(
                self.connection, f"DELETE FROM {table} WHERE rid = ANY(%s)", (list(rids),)
            )
        return Deleted(**counts)

    async def delete_decisions_due(self, cut: Cutoffs, limit: int) -> int:
        return await q.changed(
            self.connection,
            "DELETE FROM decisions WHERE seq IN (SELECT d.seq FROM decisions d"
            f" WHERE {DECISIONS_DUE} ORDER BY d.at LIMIT %(limit)s)",
            p.params(cut, limit),
        )

    async def drop_unreferenced_payloads(self, shas: Sequence[bytes]) -> tuple[int, int]:
        gone = await q.rows(
            self.connection,
            "DELETE FROM payloads p WHERE p.sha = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.payload_sha = p.sha)"
            " RETURNING octet_length(p.body) AS n",
            (sorted(set(shas)),),
        )
        return len(gone), sum(int(r["n"]) for r in gone)

    async def record_purge(self, now: int, source: str, counts: Counts) -> None:
        d = counts.as_dict()
        await self.connection.execute(
            f"INSERT INTO purges (at, source, {', '.join(d)})"
            f" VALUES (%s, %s, {', '.join(['%s'] * len(d))})",
            (now, source, *d.values()),
        )


async def preview(db: q.Conn, cut: Cutoffs, limit: int) -> Preview:
    """What a purge at `cut` would delete (relay.storage.interface.Reads.retention_preview)."""
    prm = p.params(cut, limit)

    async def count(sql: str) -> int:
        return int(await q.value(db, sql, prm) or 0)

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
        "SELECT count(*) AS n, coalesce(sum(octet_length(p.body)), 0) AS bytes FROM payloads p"
        f" WHERE NOT EXISTS ({survivors})",
        prm,
    )
    payloads, payload_bytes = (int(row["n"]), int(row["bytes"])) if row else (0, 0)
    content = await q.rows(
        db,
        "SELECT e.origin, e.id, e.kind, e.received, e.expires,"
        " CASE WHEN e.received <= %(cmax)s THEN 'content_max' ELSE 'discarded' END AS why,"
        f" {QUEUED} AS queued FROM envelopes e WHERE {due}"
        " ORDER BY e.received, e.rid LIMIT %(limit)s",
        prm,
    )
    metadata = await q.rows(
        db,
        "SELECT e.origin, e.id, e.kind, e.received, e.expires, 'metadata_max' AS why,"
        f" false AS queued FROM envelopes e WHERE {meta} ORDER BY e.received, e.rid"
        " LIMIT %(limit)s",
        prm,
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
    return Preview(
        cut, counts, tuple(map(rowmaps.due_of, content)), tuple(map(rowmaps.due_of, metadata))
    )
