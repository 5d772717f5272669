"""Reads on PostgreSQL (relay.storage.interface.Reads).

Invariants:
- Every query runs on the reader link in autocommit: each sees the last
  committed state, never a write transaction in progress.
- Every psycopg error becomes StoreError (503); a lost connection is
  dropped and the next read connects again.
- The SQL matches relay/storage/sqlite/reads.py statement for statement
  (placeholders `%s`, lists as `= ANY(%s)`), and the same relay.storage.rowmaps
  functions build the records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from relay.errors import StoreError
from relay.storage import purge_sql as p
from relay.storage import rowmaps, trace_sql
from relay.storage.audit import AuditReads
from relay.storage.erasure import PathReads
from relay.storage.postgres import sql as q
from relay.storage.postgres.connect import Link, connection_lost, describe
from relay.storage.postgres.erasure import path_rows
from relay.storage.postgres.retention import preview
from relay.storage.records import (
    AgeBucket,
    AllowRecord,
    Cutoffs,
    DecisionRecord,
    InboxItem,
    InboxPage,
    Lease,
    PeerState,
    Preview,
    QueueCount,
    Queued,
    QueueListing,
    RecipientStatus,
    TraceRows,
)
from relay.storage.rowmaps import Row
from relay.storage.tables import TABLES

# The distinct next hops of the queue by a loose index scan: the least hop, then
# the least one above it, and so on.
QUEUE_HOPS = """
WITH RECURSIVE h(hop) AS (
    SELECT min(hop) FROM queue
    UNION ALL
    SELECT (SELECT min(hop) FROM queue WHERE hop > h.hop) FROM h WHERE h.hop IS NOT NULL
) SELECT hop FROM h WHERE hop IS NOT NULL
"""


class PgReads(AuditReads, PathReads):
    _mark = "%s"

    """The interface's reads over one reconnecting connection."""

    def __init__(self, reader: Link) -> None:
        self.reader = reader
        self.location = reader.target.display

    async def _audit_rows(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        return list(await self.fetchall(sql, params))

    async def fetchall(self, sql: str, params: Any = None) -> list[q.Row]:
        """Rows of a read on the last committed state; StoreError if the database fails."""
        db = await self._db()
        try:
            return await q.rows(db, sql, params)
        except psycopg.Error as e:
            raise await self._failed(e, db) from e

    async def fetchone(self, sql: str, params: Any = None) -> q.Row | None:
        """The first row of a read, or None; StoreError if the database fails."""
        found = await self.fetchall(sql, params)
        return found[0] if found else None

    async def _db(self) -> q.Conn:
        try:
            return await self.reader.get()
        except StoreError as e:
            raise StoreError(f"cannot read the database: {e.detail}") from e

    async def _failed(self, e: psycopg.Error, db: q.Conn) -> StoreError:
        if connection_lost(e, db):
            await self.reader.lost()
            return StoreError(f"lost the connection to the database: {describe(e)}")
        return StoreError(f"cannot read the database: {describe(e)}")

    # --- the queue -------------------------------------------------------------------

    async def queue_head(
        self, hop: str, limit: int, after: int = 0, now: int | None = None
    ) -> list[Queued]:
        found = await self.fetchall(
            f"SELECT {rowmaps.QUEUED_COLS}, p.body FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " LEFT JOIN payloads p ON p.sha = e.payload_sha"
            " WHERE q.hop = %s AND q.held = 0 AND q.rid > %s AND q.not_before <= %s"
            " ORDER BY q.rid LIMIT %s",
            (hop, after, 2**63 - 1 if now is None else now, limit),
        )
        return [
            rowmaps.queued_of(r, bytes(r["body"]) if r["body"] is not None else b"") for r in found
        ]

    async def queue_hops(self) -> list[str]:
        # one index probe per hop (queue_hop), not a scan of the queue: the lease
        # coordinator asks every few seconds, however long the queue is
        return [str(r["hop"]) for r in await self.fetchall(QUEUE_HOPS)]

    async def queue_length(self) -> int:
        row = await self.fetchone("SELECT count(*) AS n FROM queue")
        return int(row["n"]) if row else 0

    async def queue_counts(self) -> list[QueueCount]:
        found = await self.fetchall(
            "SELECT hop, count(*) AS n, coalesce(sum(held), 0) AS held, min(enqueued) AS oldest"
            " FROM queue GROUP BY hop ORDER BY hop"
        )
        return [
            QueueCount(str(r["hop"]), int(r["n"]), int(r["held"]), _int_or_none(r["oldest"]))
            for r in found
        ]

    async def queue_listing(self, hop: str | None, limit: int) -> list[QueueListing]:
        found = await self.fetchall(
            f"SELECT {rowmaps.LISTING_COLS}"
            " FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " LEFT JOIN peer_state ps ON ps.peer = q.hop"
            " WHERE (%(hop)s::text IS NULL OR q.hop = %(hop)s) ORDER BY q.rid LIMIT %(limit)s",
            {"hop": hop, "limit": None if limit < 0 else limit},
        )
        return [rowmaps.queue_listing_of(r) for r in found]

    async def queue_ages(self, now: int, bounds: Sequence[int]) -> list[AgeBucket]:
        cases = " ".join(
            f"WHEN %(now)s - enqueued < {int(b)} THEN {i}" for i, b in enumerate(bounds)
        )
        found = await self.fetchall(
            f"SELECT hop, CASE {cases} ELSE {len(bounds)} END AS bucket,"
            " count(*) AS n, coalesce(sum(held), 0) AS held FROM queue GROUP BY hop, bucket",
            {"now": now},
        )
        return [
            AgeBucket(str(r["hop"]), int(r["bucket"]), int(r["n"]), int(r["held"])) for r in found
        ]

    # --- peers and federation --------------------------------------------------------

    async def peer_state(self, peer: str) -> PeerState:
        row = await self.fetchone("SELECT * FROM peer_state WHERE peer = %s", (peer,))
        return rowmaps.peer_state_of(row) if row is not None else PeerState()

    async def peer_states(self) -> dict[str, PeerState]:
        found = await self.fetchall("SELECT * FROM peer_state ORDER BY peer")
        return {str(r["peer"]): rowmaps.peer_state_of(r) for r in found}

    async def nonce_seen(self, peer: str, nonce: str) -> bool:
        row = await self.fetchone(
            "SELECT 1 AS x FROM nonces WHERE peer = %s AND nonce = %s", (peer, nonce)
        )
        return row is not None

    async def stored_results(self, peer: str, batch: bytes) -> dict[bytes, str] | None:
        row = await self.fetchone(
            "SELECT results FROM batches WHERE peer = %s AND batch = %s", (peer, batch)
        )
        return rowmaps.unpack_results(row["results"]) if row is not None else None

    # --- clients ---------------------------------------------------------------------

    async def idempotent_answer(self, mailbox: str, key: str) -> dict[str, object] | None:
        row = await self.fetchone(
            "SELECT response FROM idempotency WHERE mailbox = %s AND key = %s", (mailbox, key)
        )
        return rowmaps.answer_of(row["response"]) if row is not None else None

    async def key_used(self, mailbox: str, prefix: str) -> bool:
        row = await self.fetchone(
            "SELECT 1 AS x FROM idempotency WHERE mailbox = %s AND key > %s AND key < %s LIMIT 1",
            (mailbox, prefix + "\n", prefix + "\x0b"),
        )
        return row is not None

    async def recipient_statuses(self, msg: bytes, mailbox: str) -> list[RecipientStatus]:
        found = await self.fetchall(
            "SELECT address, status, reason, at FROM recipients WHERE msg = %s AND mailbox = %s"
            " ORDER BY address",
            (msg, mailbox),
        )
        return [rowmaps.recipient_status_of(r) for r in found]

    async def inbox(self, mailbox: str, after: int, limit: int) -> list[InboxItem]:
        return await self._inbox_rows(mailbox, after, None, limit)

    async def inbox_page(self, mailbox: str, after: int, limit: int, max_bytes: int) -> InboxPage:
        # sizes first, then the bodies of the rows that fit (as on SQLite)
        sizes = await self.fetchall(
            "SELECT i.seq, coalesce(octet_length(p.body), 0) AS size FROM inbox i"
            " JOIN envelopes e ON e.rid = i.rid"
            " LEFT JOIN payloads p ON p.sha = e.payload_sha AND e.erased IS NULL"
            " WHERE i.mailbox = %s AND i.acked IS NULL AND i.seq > %s ORDER BY i.seq LIMIT %s",
            (mailbox, after, limit + 1),
        )
        taken = 0
        total = 0
        for r in sizes[:limit]:
            size = int(r["size"])
            if taken and total + size > max_bytes:
                break
            taken += 1
            total += size
        if not taken:
            return InboxPage([], more=False)
        last = int(sizes[taken - 1]["seq"])
        items = await self._inbox_rows(mailbox, after, last, taken)
        return InboxPage(items, more=len(sizes) > taken)

    async def _inbox_rows(
        self, mailbox: str, after: int, upto: int | None, limit: int
    ) -> list[InboxItem]:
        found = await self.fetchall(
            "SELECT i.seq, e.id, e.residency, e.header, p.body, e.erased FROM inbox i"
            " JOIN envelopes e ON e.rid = i.rid"
            " LEFT JOIN payloads p ON p.sha = e.payload_sha AND e.erased IS NULL"
            " WHERE i.mailbox = %s AND i.acked IS NULL AND i.seq > %s AND i.seq <= %s"
            " ORDER BY i.seq LIMIT %s",
            (mailbox, after, upto if upto is not None else 2**63 - 1, limit),
        )
        return [rowmaps.inbox_item_of(r) for r in found]

    async def unread_bytes(self, mailboxes: Sequence[str]) -> dict[str, int]:
        found = dict.fromkeys(mailboxes, 0)
        for r in await self.fetchall(
            "SELECT mailbox, bytes FROM unread WHERE mailbox = ANY(%s)", (list(found),)
        ):
            found[str(r["mailbox"])] = int(r["bytes"])
        return found

    async def unacked_counts(self) -> dict[str, int]:
        found = await self.fetchall(
            "SELECT mailbox, count(*) AS n FROM inbox WHERE acked IS NULL GROUP BY mailbox"
            " ORDER BY mailbox"
        )
        return {str(r["mailbox"]): int(r["n"]) for r in found}

    async def unacked_count(self, mailbox: str) -> int:
        row = await self.fetchone(
            "SELECT count(*) AS n FROM inbox WHERE mailbox = %s AND acked IS NULL", (mailbox,)
        )
        return int(row["n"]) if row else 0

    async def sent_count(self, mailbox: str) -> int:
        row = await self.fetchone(
            "SELECT count(DISTINCT msg) AS n FROM recipients WHERE mailbox = %s", (mailbox,)
        )
        return int(row["n"]) if row else 0

    async def answer_count(self, mailbox: str) -> int:
        row = await self.fetchone(
            "SELECT count(*) AS n FROM idempotency WHERE mailbox = %s", (mailbox,)
        )
        return int(row["n"]) if row else 0

    async def webhook_cursor(self, mailbox: str) -> int:
        row = await self.fetchone("SELECT cursor FROM webhook_state WHERE mailbox = %s", (mailbox,))
        return int(row["cursor"]) if row is not None else 0

    # --- certificates and decisions --------------------------------------------------

    async def certificates(self, now: int) -> list[bytes]:
        found = await self.fetchall(
            "SELECT blob FROM certificates WHERE not_after >= %s ORDER BY at, fingerprint", (now,)
        )
        return [bytes(r["blob"]) for r in found]

    async def decisions(
        self, envelope: bytes | None, outcome: str | None, limit: int
    ) -> list[DecisionRecord]:
        where: list[str] = []
        params: list[Any] = []
        if envelope is not None:
            where.append("envelope = %s")
            params.append(envelope)
        if outcome is not None:
            where.append("outcome = %s")
            params.append(outcome)
        found = await self.fetchall(
            "SELECT at, point, outcome, envelope, peer, rule, reason, policy_hash"
            f" FROM decisions {'WHERE ' + ' AND '.join(where) if where else ''}"
            " ORDER BY seq DESC LIMIT %s",
            (*params, limit),
        )
        return [rowmaps.decision_of(r) for r in found]

    async def allows(self, envelope: bytes | None, limit: int) -> list[AllowRecord]:
        # Allows cost no row of their own: the envelope keeps rule id and policy hash.
        where = ["(kind = 'message' OR from_peer IS NOT NULL)"]
        params: list[Any] = []
        if envelope is not None:
            where.append("id = %s")
            params.append(envelope)
        found = await self.fetchall(
            "SELECT received, from_peer, id, dest, rule_id, residency, policy_hash"
            f" FROM envelopes WHERE {' AND '.join(where)} ORDER BY rid DESC LIMIT %s",
            (*params, limit),
        )
        return [rowmaps.allow_of(r) for r in found]

    async def trace(self, ident: bytes, receipt_limit: int) -> TraceRows:
        async def fetch(sql: str, named: dict[str, object]) -> Sequence[Row]:
            return await self.fetchall(p.pyformat(sql), named)

        return await trace_sql.read_trace(fetch, ident, receipt_limit)

    # --- erasure ---------------------------------------------------------------------

    async def _erasure_rows(self, sql: str, params: dict[str, object]) -> Sequence[Row]:
        db = await self._db()
        try:
            return await path_rows(db, sql, params)
        except psycopg.Error as e:
            raise await self._failed(e, db) from e

    # --- retention preview -----------------------------------------------------------

    async def retention_preview(self, cut: Cutoffs, limit: int) -> Preview:
        db = await self._db()
        try:
            return await preview(db, cut, limit)
        except psycopg.Error as e:
            raise await self._failed(e, db) from e

    # --- health ----------------------------------------------------------------------

    async def row_counts(self) -> dict[str, int]:
        found = await self.fetchall(
            " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in TABLES)
        )
        return {str(r["t"]): int(r["n"]) for r in found}

    async def leases(self) -> list[Lease]:
        found = await self.fetchall("SELECT name, holder, expires FROM leases ORDER BY name")
        return [Lease(str(r["name"]), str(r["holder"]), int(r["expires"])) for r in found]

    async def ping(self) -> None:
        await self.fetchone("SELECT 1 AS x")

    async def size_bytes(self) -> int:
        row = await self.fetchone(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) AS n FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
        return int(row["n"]) if row else 0


def _int_or_none(v: Any) -> int | None:
    return int(v) if v is not None else None
