"""Reads on a SQLite connection (relay.storage.interface.Reads).

Invariants:
- Every sqlite error becomes StoreError: no caller above storage ever sees
  a sqlite3 exception.
- The node reads on its own read connection (WAL: the last commit); the CLI
  reads on a read-only connection beside a running node. Both use this class.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from relay.errors import StoreError
from relay.storage import rowmaps, trace_sql
from relay.storage.audit import AuditReads
from relay.storage.erasure import PathReads
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
from relay.storage.sqlite import retention
from relay.storage.sqlite import rows as q
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


class SqliteReads(AuditReads, PathReads):
    """The interface's reads over one connection."""

    def __init__(self, path: Path, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.location = str(path)
        self.reader = reader

    async def _audit_rows(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        return list(await self.fetchall(sql, params))  # type: ignore[arg-type]

    # --- SQLite-only helpers (tests and inspection; not part of the interface) ----------

    async def fetchall(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Rows of a read on the last committed state; StoreError if the database fails."""
        try:
            return await q.rows(self.reader, sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the database: {e}") from e

    async def fetchone(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        """The first row of a read, or None; StoreError if the database fails."""
        try:
            return await q.one(self.reader, sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the database: {e}") from e

    async def pragma(self, name: str) -> str:
        """The value of `PRAGMA name` on the read connection."""
        row = await self.fetchone(f"PRAGMA {name}")
        return str(row[0]) if row else ""

    # --- the queue -------------------------------------------------------------------

    async def queue_head(
        self, hop: str, limit: int, after: int = 0, now: int | None = None
    ) -> list[Queued]:
        rs_ = await self.fetchall(
            f"SELECT {q.QUEUED_COLS}, p.body FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " LEFT JOIN payloads p ON p.sha = e.payload_sha"
            " WHERE q.hop = ? AND q.held = 0 AND q.rid > ? AND q.not_before <= ?"
            " ORDER BY q.rid LIMIT ?",
            (hop, after, 2**63 - 1 if now is None else now, limit),
        )
        return [q.queued_of(r, bytes(r["body"]) if r["body"] is not None else b"") for r in rs_]

    async def queue_hops(self) -> list[str]:
        # one index probe per hop (queue_hop), not a scan of the queue: the lease
        # coordinator asks every few seconds, however long the queue is
        return [str(r[0]) for r in await self.fetchall(QUEUE_HOPS)]

    async def queue_length(self) -> int:
        row = await self.fetchone("SELECT count(*) FROM queue")
        return int(row[0]) if row else 0

    async def queue_counts(self) -> list[QueueCount]:
        found = await self.fetchall(
            "SELECT hop, count(*) AS n, coalesce(sum(held), 0) AS held, min(enqueued) AS oldest"
            " FROM queue GROUP BY hop ORDER BY hop"
        )
        return [QueueCount(str(r["hop"]), int(r["n"]), int(r["held"]), r["oldest"]) for r in found]

    async def queue_listing(self, hop: str | None, limit: int) -> list[QueueListing]:
        found = await self.fetchall(
            "SELECT q.rid, e.id, e.origin, e.kind, e.sender, e.dest, q.hop, q.enqueued,"
            " q.attempts, q.last_error, q.held, e.size, e.expires,"
            " coalesce(ps.next_try, 0) AS next_try, q.not_before"
            " FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " LEFT JOIN peer_state ps ON ps.peer = q.hop"
            " WHERE (:hop IS NULL OR q.hop = :hop) ORDER BY q.rid LIMIT :limit",
            {"hop": hop, "limit": limit},
        )
        return [rowmaps.queue_listing_of(r) for r in found]

    async def queue_ages(self, now: int, bounds: Sequence[int]) -> list[AgeBucket]:
        cases = " ".join(f"WHEN :now - enqueued < {int(b)} THEN {i}" for i, b in enumerate(bounds))
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
        row = await self.fetchone("SELECT * FROM peer_state WHERE peer = ?", (peer,))
        return q.peer_state_of(row) if row is not None else PeerState()

    async def peer_states(self) -> dict[str, PeerState]:
        found = await self.fetchall("SELECT * FROM peer_state ORDER BY peer")
        return {str(r["peer"]): q.peer_state_of(r) for r in found}

    async def nonce_seen(self, peer: str, nonce: str) -> bool:
        row = await self.fetchone(
            "SELECT 1 FROM nonces WHERE peer = ? AND nonce = ?", (peer, nonce)
        )
        return row is not None

    async def stored_results(self, peer: str, batch: bytes) -> dict[bytes, str] | None:
        try:
            return await q.stored_results(self.reader, peer, batch)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the database: {e}") from e

    # --- clients ---------------------------------------------------------------------

    async def idempotent_answer(self, mailbox: str, key: str) -> dict[str, object] | None:
        try:
            return await q.idempotent_answer(self.reader, mailbox, key)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the database: {e}") from e

    async def key_used(self, mailbox: str, prefix: str) -> bool:
        row = await self.fetchone(
            "SELECT 1 FROM idempotency WHERE mailbox = ? AND key > ? AND key < ? LIMIT 1",
            (mailbox, prefix + "\n", prefix + "\x0b"),
        )
        return row is not None

    async def recipient_statuses(self, msg: bytes, mailbox: str) -> list[RecipientStatus]:
        found = await self.fetchall(
            "SELECT address, status, reason, at FROM recipients WHERE msg = ? AND mailbox = ?"
            " ORDER BY address",
            (msg, mailbox),
        )
        return [rowmaps.recipient_status_of(r) for r in found]

    async def inbox(self, mailbox: str, after: int, limit: int) -> list[InboxItem]:
        return await self._inbox_rows(mailbox, after, None, limit)

    async def inbox_page(self, mailbox: str, after: int, limit: int, max_bytes: int) -> InboxPage:
        # sizes first (length() of a blob reads no overflow page), then the bodies of
        # the rows that fit, so a page of large messages never loads one too many
        sizes = await self.fetchall(
            "SELECT i.seq, coalesce(length(p.body), 0) FROM inbox i"
            " JOIN envelopes e ON e.rid = i.rid"
            " LEFT JOIN payloads p ON p.sha = e.payload_sha AND e.erased IS NULL"
            " WHERE i.mailbox = ? AND i.acked IS NULL AND i.seq > ? ORDER BY i.seq LIMIT ?",
            (mailbox, after, limit + 1),
        )
        taken = 0
        total = 0
        for _seq, size in sizes[:limit]:
            if taken and total + int(size) > max_bytes:
                break
            taken += 1
            total += int(size)
        if not taken:
            return InboxPage([], more=False)
        last = int(sizes[taken - 1][0])
        items = await self._inbox_rows(mailbox, after, last, taken)
        return InboxPage(items, more=len(sizes) > taken)

    async def _inbox_rows(
        self, mailbox: str, after: int, upto: int | None, limit: int
    ) -> list[InboxItem]:
        found = await self.fetchall(
            "SELECT i.seq, e.id, e.residency, e.header, p.body, e.erased FROM inbox i"
            " JOIN envelopes e ON e.rid = i.rid"
            " LEFT JOIN payloads p ON p.sha = e.payload_sha AND e.erased IS NULL"
            " WHERE i.mailbox = ? AND i.acked IS NULL AND i.seq > ? AND i.seq <= ?"
            " ORDER BY i.seq LIMIT ?",
            (mailbox, after, upto if upto is not None else 2**63 - 1, limit),
        )
        return [rowmaps.inbox_item_of(r) for r in found]

    async def unread_bytes(self, mailboxes: Sequence[str]) -> dict[str, int]:
        try:
            return await q.unread_bytes(self.reader, mailboxes)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the database: {e}") from e

    async def unacked_counts(self) -> dict[str, int]:
        found = await self.fetchall(
            "SELECT mailbox, count(*) FROM inbox WHERE acked IS NULL GROUP BY mailbox"
            " ORDER BY mailbox"
        )
        return {str(r[0]): int(r[1]) for r in found}

    async def unacked_count(self, mailbox: str) -> int:
        row = await self.fetchone(
            "SELECT count(*) FROM inbox WHERE mailbox = ? AND acked IS NULL", (mailbox,)
        )
        return int(row[0]) if row else 0

    async def sent_count(self, mailbox: str) -> int:
        row = await self.fetchone(
            "SELECT count(DISTINCT msg) FROM recipients WHERE mailbox = ?", (mailbox,)
        )
        return int(row[0]) if row else 0

    async def answer_count(self, mailbox: str) -> int:
        row = await self.fetchone("SELECT count(*) FROM idempotency WHERE mailbox = ?", (mailbox,))
        return int(row[0]) if row else 0

    async def webhook_cursor(self, mailbox: str) -> int:
        row = await self.fetchone("SELECT cursor FROM webhook_state WHERE mailbox = ?", (mailbox,))
        return int(row[0]) if row is not None else 0

    # --- certificates and decisions --------------------------------------------------

    async def certificates(self, now: int) -> list[bytes]:
        found = await self.fetchall(
            "SELECT blob FROM certificates WHERE not_after >= ? ORDER BY at", (now,)
        )
        return [bytes(r[0]) for r in found]

    async def decisions(
        self, envelope: bytes | None, outcome: str | None, limit: int
    ) -> list[DecisionRecord]:
        where: list[str] = []
        params: list[Any] = []
        if envelope is not None:
            where.append("envelope = ?")
            params.append(envelope)
        if outcome is not None:
            where.append("outcome = ?")
            params.append(outcome)
        found = await self.fetchall(
            "SELECT at, point, outcome, envelope, peer, rule, reason, policy_hash"
            f" FROM decisions {'WHERE ' + ' AND '.join(where) if where else ''}"
            " ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return [rowmaps.decision_of(r) for r in found]

    async def allows(self, envelope: bytes | None, limit: int) -> list[AllowRecord]:
        # Allows cost no row of their own: the envelope keeps rule id and policy hash.
        where = ["(kind = 'message' OR from_peer IS NOT NULL)"]
        params: list[Any] = []
        if envelope is not None:
            where.append("id = ?")
            params.append(envelope)
        found = await self.fetchall(
            "SELECT received, from_peer, id, dest, rule_id, residency, policy_hash"
            f" FROM envelopes WHERE {' AND '.join(where)} ORDER BY rid DESC LIMIT ?",
            (*params, limit),
        )
        return [rowmaps.allow_of(r) for r in found]

    async def trace(self, ident: bytes, receipt_limit: int) -> TraceRows:
        return await trace_sql.read_trace(self.fetchall, ident, receipt_limit)

    # --- erasure ---------------------------------------------------------------------

    async def _erasure_rows(self, sql: str, params: dict[str, object]) -> Sequence[Row]:
        return await self.fetchall(sql, params)

    # --- retention preview -----------------------------------------------------------

    async def retention_preview(self, cut: Cutoffs, limit: int) -> Preview:
        try:
            return await retention.preview(self.reader, cut, limit)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the database: {e}") from e

    # --- health ----------------------------------------------------------------------

    async def row_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in TABLES:
            row = await self.fetchone(f"SELECT count(*) FROM {t}")
            counts[t] = int(row[0]) if row else 0
        return counts

    async def leases(self) -> list[Lease]:
        rows = await self.fetchall("SELECT name, holder, expires FROM leases ORDER BY name")
        return [Lease(str(r["name"]), str(r["holder"]), int(r["expires"])) for r in rows]

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def size_bytes(self) -> int:
        """Bytes of the database file and its -wal file (missing files count 0)."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += os.stat(p).st_size
            except FileNotFoundError:
                continue
        return total
