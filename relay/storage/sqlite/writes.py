"""The write transaction on SQLite (relay.storage.interface.WriteTx).

Invariants:
- Used only by the group-commit writer (relay.storage.sqlite.store): every
  method runs inside the job's SAVEPOINT of the open transaction, so it
  shares the job's commit or rollback.
- Batches are written with executemany or `IN (...)` chunks, not a
  statement per record where a set-based statement exists.
- Envelope rowids are assigned here: the writer is the only one inserting,
  inside its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from relay.errors import RelayError
from relay.protocol.envelope import Envelope, header_digest
from relay.storage import attempts as attempts_sql
from relay.storage import rowmaps
from relay.storage import unread_sql as unread
from relay.storage.audit import AuditWrites, decision_events, purge_event, stored_events
from relay.storage.records import (
    ATTEMPT_AGAIN,
    FINAL_STATUSES,
    MAX_ATTEMPTS_KEPT,
    Attempt,
    CertificateRecord,
    Counts,
    DecisionRecord,
    NewEnvelope,
    PeerState,
    PendingReceipt,
    QueueCount,
    Queued,
    QueueRef,
    Recipient,
    SentEnvelope,
    StatusUpdate,
    WebhookFailure,
)
from relay.storage.sqlite import rows as q
from relay.storage.sqlite.erasure import ErasureWrites
from relay.storage.sqlite.inline import InlineConnection
from relay.storage.sqlite.retention import RetentionWrites

_NOT_FINAL = f"status NOT IN ({', '.join(repr(s) for s in sorted(FINAL_STATUSES))})"


class SqliteWriteTx(AuditWrites, ErasureWrites, RetentionWrites):
    """WriteTx over the writer connection, inside its open transaction."""

    def __init__(self, db: InlineConnection) -> None:
        self.connection = db  # SQLite only: tests run raw statements in a job through it
        # (topic, key) pairs announced in the open transaction; the store trims
        # a failed job's and hands the rest to its on_announce hooks after COMMIT.
        self.announced: list[tuple[str, str]] = []

    async def _audit_rows(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        return list(await q.rows(self.connection, sql, params))  # type: ignore[arg-type]

    async def _audit_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await q.many(self.connection, sql, rows)

    # --- envelopes and recipients ----------------------------------------------------

    async def existing_digests(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], bytes]:
        found: dict[tuple[str, bytes], bytes] = {}
        wanted = set(keys)
        for chunk in q.chunks(list({ident for _, ident in keys})):
            for r in await q.rows(
                self.connection,
                f"SELECT origin, id, hdigest FROM envelopes WHERE id IN ({q.marks(chunk)})",
                chunk,
            ):
                key = (str(r["origin"]), bytes(r["id"]))
                if key in wanted:
                    found[key] = bytes(r["hdigest"])
        return found

    async def insert_envelopes(self, items: Sequence[NewEnvelope], now: int) -> list[int]:
        if not items:
            return []
        db = self.connection
        await q.many(
            db,
            "INSERT OR IGNORE INTO payloads (sha, body) VALUES (?, ?)",
            [(it.env.header.sha256, it.env.payload) for it in items],
        )
        row = await q.one(db, "SELECT coalesce(max(rid), 0) FROM envelopes")
        first = int(row[0]) + 1 if row else 1
        rids = list(range(first, first + len(items)))
        # each header hashed once, for its row and its `stored` audit entry
        digests = [header_digest(it.env.header_bytes) for it in items]
        envelope_rows = []
        for rid, it, digest in zip(rids, items, digests, strict=True):
            h = it.env.header
            envelope_rows.append(
                (
                    rid,
                    h.origin,
                    h.id,
                    digest,
                    it.env.header_bytes,
                    it.env.signature,
                    h.sha256,
                    q.pack_trace(it.trace),
                    h.kind,
                    h.sender,
                    h.dest,
                    h.created,
                    h.expires,
                    now,
                    h.size,
                    ",".join(h.residency),
                    it.from_peer,
                    it.rule_id,
                    it.policy_hash,
                    it.hop,
                )
            )
        await q.many(
            db,
            "INSERT INTO envelopes (rid, origin, id, hdigest, header, signature, payload_sha,"
            " trace, kind, sender, dest, created, expires, received, size, residency, from_peer,"
            " rule_id, policy_hash, hop) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            envelope_rows,
        )
        pairs = list(zip(rids, items, strict=True))
        queue_rows = [(rid, it.hop, now) for rid, it in pairs if it.hop]
        if queue_rows:
            await q.many(db, "INSERT INTO queue (rid, hop, enqueued) VALUES (?, ?, ?)", queue_rows)
        inbox_rows = [(mb, rid, now) for rid, it in pairs for mb in it.mailboxes]
        if inbox_rows:
            top = await q.one(db, "SELECT coalesce(max(seq), 0) FROM inbox")
            await q.many(
                db,
                "INSERT OR IGNORE INTO inbox (mailbox, rid, delivered) VALUES (?, ?, ?)",
                inbox_rows,
            )
            # the rows just inserted, and only they, have seqs past the top before
            await db.execute(unread.add("i.seq > ?"), (int(top[0]) if top else 0,))
        await self.append_audit(stored_events(items, now, digests))
        return rids

    async def add_recipients(self, rows: Sequence[Recipient]) -> None:
        await q.many(
            self.connection,
            "INSERT INTO recipients (msg, address, rid, mailbox, status, at) VALUES (?,?,?,?,?,?)",
            [(r.msg, r.address, r.rid, r.mailbox, r.status, r.at) for r in rows],
        )

    async def set_status(self, updates: Sequence[StatusUpdate], now: int) -> None:
        whole = [u for u in updates if u.addresses is None]
        some = [
            (u.status, u.reason, now, u.rid, a)
            for u in updates
            if u.addresses is not None
            for a in u.addresses
        ]
        sql = f"UPDATE recipients SET status = ?, reason = ?, at = ? WHERE rid = ? AND {_NOT_FINAL}"
        groups = rowmaps.status_groups(whole)
        if groups is None:
            await q.many(self.connection, sql, [(u.status, u.reason, now, u.rid) for u in whole])
        for (status, reason), rids in (groups or {}).items():
            # one statement per batch, not per rid: ~0.6 against ~4 us per row
            for chunk in q.chunks(rids):
                await self.connection.execute(
                    sql.replace("rid = ?", f"rid IN ({q.marks(chunk)})"),
                    (status, reason, now, *chunk),
                )
        if some:
            await q.many(
                self.connection, sql.replace("WHERE rid = ?", "WHERE rid = ? AND address = ?"), some
            )

    async def sent_envelopes(self, origin: str, ids: Sequence[bytes]) -> dict[bytes, SentEnvelope]:
        found: dict[bytes, SentEnvelope] = {}
        for chunk in q.chunks(list(dict.fromkeys(ids))):
            for r in await q.rows(
                self.connection,
                "SELECT rid, id, dest, kind, hop FROM envelopes"
                f" WHERE origin = ? AND id IN ({q.marks(chunk)})",
                (origin, *chunk),
            ):
                env = SentEnvelope(
                    int(r["rid"]), bytes(r["id"]), str(r["dest"]), str(r["kind"]), r["hop"]
                )
                found[env.id] = env
        return found

    # --- the outbound queue ----------------------------------------------------------

    async def dequeue(self, rids: Sequence[int]) -> None:
        for chunk in q.chunks(rids):
            await self.connection.execute(
                f"DELETE FROM queue WHERE rid IN ({q.marks(chunk)})", chunk
            )

    async def note_attempt(self, rids: Sequence[int], error: str) -> None:
        await q.many(
            self.connection,
            "UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE rid = ?",
            [(error, r) for r in rids],
        )

    async def defer(self, rids: Sequence[int], until: int, error: str) -> None:
        await q.many(
            self.connection,
            "UPDATE queue SET attempts = attempts + 1, last_error = ?, not_before = ?"
            " WHERE rid = ?",
            [(error, until, r) for r in rids],
        )

    async def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        await q.many(
            self.connection,
            f"INSERT INTO attempts ({attempts_sql.COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            [attempts_sql.row(a) for a in attempts],
        )
        again = sorted({a.rid for a in attempts if a.outcome in ATTEMPT_AGAIN})
        for chunk in q.chunks(again):
            await self.connection.execute(
                attempts_sql.trim(f"IN ({q.marks(chunk)})", "?"), (*chunk, MAX_ATTEMPTS_KEPT)
            )

    async def clear_deferred(self, hops: Sequence[str]) -> None:
        await q.many(
            self.connection,
            "UPDATE queue SET not_before = 0 WHERE hop = ? AND not_before > 0",
            [(h,) for h in hops],
        )

    async def set_held(self, rids: Sequence[int], held: bool) -> None:
        await q.many(
            self.connection,
            "UPDATE queue SET held = ? WHERE rid = ?",
            [(int(held), r) for r in rids],
        )

    async def queue_refs(self, ids: Sequence[bytes]) -> list[QueueRef]:
        found: list[QueueRef] = []
        for chunk in q.chunks(list(ids)):
            found.extend(
                QueueRef(bytes(r["id"]), int(r["rid"]), str(r["hop"]), bool(r["held"]))
                for r in await q.rows(
                    self.connection,
                    "SELECT e.id, q.rid, q.hop, q.held FROM queue q JOIN envelopes e"
                    f" ON e.rid = q.rid WHERE e.id IN ({q.marks(chunk)}) ORDER BY q.rid",
                    chunk,
                )
            )
        return sorted(found, key=lambda r: r.rid)

    async def queued(self, rids: Sequence[int]) -> list[Queued]:
        found: list[Queued] = []
        for chunk in q.chunks(sorted(set(rids))):
            found.extend(
                map(
                    q.queued_of,
                    await q.rows(
                        self.connection,
                        f"SELECT {q.QUEUED_COLS} FROM queue q JOIN envelopes e ON e.rid = q.rid"
                        f" WHERE q.rid IN ({q.marks(chunk)}) ORDER BY q.rid",
                        chunk,
                    ),
                )
            )
        return found

    async def queue_page(self, after: int, limit: int) -> list[Queued]:
        found = await q.rows(
            self.connection,
            f"SELECT {q.QUEUED_COLS} FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " WHERE q.rid > ? ORDER BY q.rid LIMIT ?",
            (after, limit),
        )
        return [q.queued_of(r) for r in found]

    async def queued_past_lifetime(
        self, now: int, enqueued_before: int, limit: int
    ) -> list[Queued]:
        found = await q.rows(
            self.connection,
            f"SELECT {q.QUEUED_COLS} FROM queue q JOIN peer_state p ON p.peer = q.hop"
            " JOIN envelopes e ON e.rid = q.rid"
            " WHERE p.next_try > ? AND (e.expires <= ? OR q.enqueued <= ?)"
            " ORDER BY q.rid LIMIT ?",
            (now, now, enqueued_before, limit),
        )
        return [q.queued_of(r) for r in found]

    async def reroute(self, rids: Sequence[int], hop: str) -> None:
        params = [(hop, r) for r in rids]
        await q.many(self.connection, "UPDATE queue SET hop = ? WHERE rid = ?", params)
        await q.many(self.connection, "UPDATE envelopes SET hop = ? WHERE rid = ?", params)

    async def resign(self, envelopes: Sequence[tuple[int, Envelope]]) -> None:
        for rid, env in envelopes:
            h = env.header
            row = await q.one(
                self.connection, "SELECT origin, id FROM envelopes WHERE rid = ?", (rid,)
            )
            if row is None or (str(row["origin"]), bytes(row["id"])) != (h.origin, h.id):
                raise RelayError(
                    f"resign: envelope {rid} is not stored as {h.origin} {h.id.hex()};"
                    " a re-signed envelope keeps its origin and id"
                )
        await q.many(
            self.connection,
            "UPDATE envelopes SET header = ?, signature = ?, hdigest = ? WHERE rid = ?",
            [
                (env.header_bytes, env.signature, header_digest(env.header_bytes), rid)
                for rid, env in envelopes
            ],
        )

    async def queue_count(self, hop: str) -> QueueCount:
        row = await q.one(
            self.connection,
            "SELECT count(*) AS n, coalesce(sum(held), 0) AS held, min(enqueued) AS oldest"
            " FROM queue WHERE hop = ?",
            (hop,),
        )
        if row is None:
            return QueueCount(hop, 0, 0, None)
        return QueueCount(hop, int(row["n"]), int(row["held"]), row["oldest"])

    # --- peers -----------------------------------------------------------------------

    async def has_peer_state(self, peer: str) -> bool:
        row = await q.one(self.connection, "SELECT 1 FROM peer_state WHERE peer = ?", (peer,))
        return row is not None

    async def save_peer_state(self, peer: str, state: PeerState) -> None:
        await self.connection.execute(
            "INSERT INTO peer_state (peer, failures, next_try, last_error, last_ok, delivered)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (peer) DO UPDATE SET failures = excluded.failures,"
            " next_try = excluded.next_try, last_error = excluded.last_error,"
            " last_ok = excluded.last_ok, delivered = excluded.delivered",
            (
                peer,
                state.failures,
                state.next_try,
                state.last_error,
                state.last_ok,
                state.delivered,
            ),
        )

    async def clear_backoff(self, peers: Sequence[str]) -> None:
        await q.many(
            self.connection,
            "UPDATE peer_state SET next_try = 0 WHERE peer = ?",
            [(p,) for p in peers],
        )

    # --- receipts --------------------------------------------------------------------

    async def add_pending_receipts(self, receipts: Sequence[PendingReceipt], now: int) -> None:
        await q.many(
            self.connection,
            "INSERT INTO pending_receipts (origin, status, reason, residency, id, recipients, at)"
            " VALUES (?,?,?,?,?,?,?)",
            [
                (
                    r.origin,
                    r.status,
                    r.reason,
                    r.residency,
                    r.id,
                    msgpack.packb(list(r.recipients)),
                    now,
                )
                for r in receipts
            ],
        )

    async def pending_receipts(self, limit: int) -> list[PendingReceipt]:
        found = await q.rows(
            self.connection,
            "SELECT seq, origin, status, reason, residency, id, recipients FROM pending_receipts"
            " ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [
            PendingReceipt(
                origin=str(r["origin"]),
                status=str(r["status"]),
                reason=str(r["reason"]),
                residency=str(r["residency"]),
                id=bytes(r["id"]),
                recipients=tuple(msgpack.unpackb(r["recipients"], raw=False)),
                seq=int(r["seq"]),
            )
            for r in found
        ]

    async def delete_pending_receipts(self, seqs: Sequence[int]) -> None:
        await q.many(
            self.connection, "DELETE FROM pending_receipts WHERE seq = ?", [(s,) for s in seqs]
        )

    # --- federation requests ---------------------------------------------------------

    async def record_nonce(self, peer: str, nonce: str, now: int) -> bool:
        n = await q.changed(
            self.connection,
            "INSERT OR IGNORE INTO nonces (peer, nonce, at) VALUES (?, ?, ?)",
            (peer, nonce, now),
        )
        return n == 1

    async def stored_results(self, peer: str, batch: bytes) -> dict[bytes, str] | None:
        return await q.stored_results(self.connection, peer, batch)

    async def unread_bytes(self, mailboxes: Sequence[str]) -> dict[str, int]:
        return await q.unread_bytes(self.connection, mailboxes)

    async def record_batch(
        self, peer: str, batch: bytes, results: Mapping[bytes, str], now: int
    ) -> None:
        await self.connection.execute(
            "INSERT OR IGNORE INTO batches (peer, batch, results, at) VALUES (?, ?, ?, ?)",
            (peer, batch, q.pack_results(results), now),
        )

    async def prune(self, nonce_before: int, batch_before: int, idem_before: int) -> None:
        db = self.connection
        await db.execute("DELETE FROM nonces WHERE at < ?", (nonce_before,))
        await db.execute("DELETE FROM batches WHERE at < ?", (batch_before,))
        await db.execute("DELETE FROM idempotency WHERE at < ?", (idem_before,))

    # --- client requests -------------------------------------------------------------

    async def remember_answer(
        self, mailbox: str, key: str, answer: Mapping[str, object], now: int
    ) -> bool:
        n = await q.changed(
            self.connection,
            "INSERT OR IGNORE INTO idempotency (mailbox, key, response, at) VALUES (?, ?, ?, ?)",
            (mailbox, key, json.dumps(dict(answer)), now),
        )
        return n == 1

    async def idempotent_answer(self, mailbox: str, key: str) -> dict[str, object] | None:
        return await q.idempotent_answer(self.connection, mailbox, key)

    async def ack_inbox(self, mailbox: str, ids: Sequence[bytes], now: int) -> int:
        acked = 0
        weight = 0
        for chunk in q.chunks(list(dict.fromkeys(ids))):
            found = await q.rows(
                self.connection,
                "UPDATE inbox SET acked = ? WHERE acked IS NULL AND mailbox = ?"
                f" AND rid IN (SELECT rid FROM envelopes WHERE id IN ({q.marks(chunk)}))"
                + unread.ACKED_WEIGHT,
                (now, mailbox, *chunk),
            )
            acked += len(found)
            weight += sum(int(r[0]) for r in found)
        if acked:
            await self.connection.execute(unread.take_weight("?"), (weight, mailbox))
        return acked

    async def ack_inbox_seqs(self, seqs: Sequence[int], now: int) -> None:
        for chunk in q.chunks(list(dict.fromkeys(seqs))):
            m = q.marks(chunk)
            await self.connection.execute(unread.take(f"i.seq IN ({m})"), chunk)
            await self.connection.execute(
                f"UPDATE inbox SET acked = ? WHERE acked IS NULL AND seq IN ({m})", (now, *chunk)
            )

    async def webhook_advance(self, mailbox: str, seq: int, delivered: int) -> None:
        await self.connection.execute(
            "INSERT INTO webhook_state (mailbox, cursor, delivered) VALUES (?, ?, ?)"
            " ON CONFLICT (mailbox) DO UPDATE SET cursor = max(cursor, excluded.cursor),"
            " failures = 0, next_try = 0, last_error = '',"
            " delivered = delivered + excluded.delivered",
            (mailbox, seq, delivered),
        )

    async def webhook_failure(self, mailbox: str, failure: WebhookFailure) -> None:
        await self.connection.execute(
            "INSERT INTO webhook_state (mailbox, failures, next_try, last_error)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (mailbox) DO UPDATE SET"
            " failures = excluded.failures, next_try = excluded.next_try,"
            " last_error = excluded.last_error",
            (mailbox, failure.failures, failure.next_try, failure.error),
        )

    # --- decisions and certificates --------------------------------------------------

    async def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        await q.many(
            self.connection,
            "INSERT INTO decisions (at, point, envelope, peer, outcome, rule, reason, policy_hash)"
            " VALUES (?,?,?,?,?,?,?,?)",
            [
                (d.at, d.point, d.envelope, d.peer, d.outcome, d.rule, d.reason, d.policy_hash)
                for d in decisions
            ],
        )
        await self.append_audit(decision_events(decisions))

    async def record_purge(self, now: int, source: str, counts: Counts) -> None:
        await super().record_purge(now, source, counts)
        await self.append_audit([purge_event(now, source, counts)])

    async def save_certificates(self, certs: Sequence[CertificateRecord], now: int) -> None:
        if certs:
            await q.many(
                self.connection,
                "INSERT OR IGNORE INTO certificates (fingerprint, name, not_after, blob, at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(c.fingerprint, c.name, c.not_after, c.blob, now) for c in certs],
            )
        await self.connection.execute("DELETE FROM certificates WHERE not_after < ?", (now,))

    # --- workers: leases and announcements -------------------------------------------

    async def take_leases(
        self, holder: str, names: Sequence[str], now: int, until: int
    ) -> list[str]:
        if not names:
            return []
        await q.many(
            self.connection,
            "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires = excluded.expires"
            " WHERE leases.holder = excluded.holder OR leases.expires <= ?",
            [(name, holder, until, now) for name in names],
        )
        held: set[str] = set()
        for chunk in q.chunks(list(names)):
            rows = await q.rows(
                self.connection,
                f"SELECT name FROM leases WHERE holder = ? AND name IN ({q.marks(chunk)})",
                [holder, *chunk],
            )
            held.update(str(r["name"]) for r in rows)
        return [name for name in names if name in held]

    async def release_leases(self, holder: str, names: Sequence[str]) -> None:
        for chunk in q.chunks(list(names)):
            await self.connection.execute(
                f"DELETE FROM leases WHERE holder = ? AND name IN ({q.marks(chunk)})",
                [holder, *chunk],
            )

    async def drop_expired_leases(self, before: int) -> int:
        return await q.changed(self.connection, "DELETE FROM leases WHERE expires < ?", (before,))

    def announce(self, topic: str, key: str) -> None:
        self.announced.append((topic, key))
