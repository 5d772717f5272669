"""The write transaction on PostgreSQL (relay.storage.interface.WriteTx).

Invariants:
- Used only by the group-commit writer (relay.storage.postgres.store): every
  method runs inside the job's SAVEPOINT of the open transaction, which holds
  the schema's write lock, so it shares the job's commit or rollback and no
  other worker writes in between.
- Lists go as one array parameter (`= ANY(%s)`); rows as one pipelined
  executemany.
- Envelope rids come from the table's identity sequence, taken under the
  write lock: rids (and inbox seqs) grow in commit order, so readers paging
  "after rid/seq N" never skip a row that commits later.
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
from relay.storage.postgres import sql as q
from relay.storage.postgres.erasure import ErasureWrites
from relay.storage.postgres.retention import RetentionWrites
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

_NOT_FINAL = f"status NOT IN ({', '.join(repr(s) for s in sorted(FINAL_STATUSES))})"
_QUEUED_FROM = f"SELECT {rowmaps.QUEUED_COLS} FROM queue q JOIN envelopes e ON e.rid = q.rid"


class PgWriteTx(AuditWrites, ErasureWrites, RetentionWrites):
    _mark = "%s"

    """WriteTx over the writer connection, inside its open transaction."""

    def __init__(self, db: q.Conn) -> None:
        self.connection = db
        # (topic, key) pairs announced in the open transaction; the store trims
        # a failed job's, NOTIFYs the rest before COMMIT and hands them to its
        # own hooks after it.
        self.announced: list[tuple[str, str]] = []

    async def _audit_rows(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        return list(await q.rows(self.connection, sql, params))

    async def _audit_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await q.many(self.connection, sql, rows)

    # --- envelopes and recipients ----------------------------------------------------

    async def existing_digests(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], bytes]:
        wanted = set(keys)
        if not wanted:
            return {}
        found = await q.rows(
            self.connection,
            "SELECT origin, id, hdigest FROM envelopes WHERE id = ANY(%s)",
            (list({ident for _, ident in wanted}),),
        )
        hits = ((str(r["origin"]), bytes(r["id"]), bytes(r["hdigest"])) for r in found)
        return {(o, i): d for o, i, d in hits if (o, i) in wanted}

    async def insert_envelopes(self, items: Sequence[NewEnvelope], now: int) -> list[int]:
        if not items:
            return []
        db = self.connection
        await q.many(
            db,
            "INSERT INTO payloads (sha, body) VALUES (%s, %s) ON CONFLICT (sha) DO NOTHING",
            [(it.env.header.sha256, it.env.payload) for it in items],
        )
        taken = await q.rows(
            db,
            "SELECT nextval(pg_get_serial_sequence('envelopes', 'rid')) AS rid"
            " FROM generate_series(1, %s)",
            (len(items),),
        )
        rids = sorted(int(r["rid"]) for r in taken)
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
                    rowmaps.pack_trace(it.trace),
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
            " rule_id, policy_hash, hop)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            envelope_rows,
        )
        pairs = list(zip(rids, items, strict=True))
        await q.many(
            db,
            "INSERT INTO queue (rid, hop, enqueued) VALUES (%s, %s, %s)",
            [(rid, it.hop, now) for rid, it in pairs if it.hop],
        )
        await q.many(
            db,
            "INSERT INTO inbox (mailbox, rid, delivered) VALUES (%s, %s, %s)"
            " ON CONFLICT (mailbox, rid) DO NOTHING",
            [(mb, rid, now) for rid, it in pairs for mb in it.mailboxes],
        )
        if any(it.mailboxes for it in items):  # the rids are new: so are their inbox rows
            await db.execute(unread.add("i.rid = ANY(%s)"), (rids,))
        await self.append_audit(stored_events(items, now, digests))
        return rids

    async def add_recipients(self, rows: Sequence[Recipient]) -> None:
        await q.many(
            self.connection,
            "INSERT INTO recipients (msg, address, rid, mailbox, status, at)"
            " VALUES (%s,%s,%s,%s,%s,%s)",
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
        sql = (
            "UPDATE recipients SET status = %s, reason = %s, at = %s"
            f" WHERE rid = %s AND {_NOT_FINAL}"
        )
        groups = rowmaps.status_groups(whole)
        if groups is None:
            await q.many(self.connection, sql, [(u.status, u.reason, now, u.rid) for u in whole])
        for (status, reason), rids in (groups or {}).items():  # one statement per group
            await self.connection.execute(
                sql.replace("rid = %s", "rid = ANY(%s)"), (status, reason, now, rids)
            )
        await q.many(self.connection, sql.replace("rid = %s", "rid = %s AND address = %s"), some)

    async def sent_envelopes(self, origin: str, ids: Sequence[bytes]) -> dict[bytes, SentEnvelope]:
        found = await q.rows(
            self.connection,
            "SELECT rid, id, dest, kind, hop FROM envelopes WHERE origin = %s AND id = ANY(%s)",
            (origin, list(dict.fromkeys(ids))),
        )
        return {
            bytes(r["id"]): SentEnvelope(
                int(r["rid"]), bytes(r["id"]), str(r["dest"]), str(r["kind"]), r["hop"]
            )
            for r in found
        }

    # --- the outbound queue ----------------------------------------------------------

    async def dequeue(self, rids: Sequence[int]) -> None:
        if rids:
            await self.connection.execute("DELETE FROM queue WHERE rid = ANY(%s)", (list(rids),))

    async def note_attempt(self, rids: Sequence[int], error: str) -> None:
        if rids:
            await self.connection.execute(
                "UPDATE queue SET attempts = attempts + 1, last_error = %s WHERE rid = ANY(%s)",
                (error, list(rids)),
            )

    async def defer(self, rids: Sequence[int], until: int, error: str) -> None:
        if rids:
            await self.connection.execute(
                "UPDATE queue SET attempts = attempts + 1, last_error = %s, not_before = %s"
                " WHERE rid = ANY(%s)",
                (error, until, list(rids)),
            )

    async def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        if not attempts:
            return
        columns = list(zip(*(attempts_sql.row(a) for a in attempts), strict=True))
        await self.connection.execute(
            f"INSERT INTO attempts ({attempts_sql.COLUMNS}) SELECT * FROM unnest("
            "%s::bigint[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::text[],"
            " %s::text[], %s::int[])",
            [list(c) for c in columns],
        )
        again = sorted({a.rid for a in attempts if a.outcome in ATTEMPT_AGAIN})
        if again:
            await self.connection.execute(
                attempts_sql.trim("= ANY(%s)", "%s"), (again, MAX_ATTEMPTS_KEPT)
            )

    async def clear_deferred(self, hops: Sequence[str]) -> None:
        if hops:
            await self.connection.execute(
                "UPDATE queue SET not_before = 0 WHERE hop = ANY(%s) AND not_before > 0",
                (list(hops),),
            )

    async def set_held(self, rids: Sequence[int], held: bool) -> None:
        if rids:
            await self.connection.execute(
                "UPDATE queue SET held = %s WHERE rid = ANY(%s)", (int(held), list(rids))
            )

    async def queue_refs(self, ids: Sequence[bytes]) -> list[QueueRef]:
        found = await q.rows(
            self.connection,
            "SELECT e.id, q.rid, q.hop, q.held FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " WHERE e.id = ANY(%s) ORDER BY q.rid",
            (list(ids),),
        )
        return [
            QueueRef(bytes(r["id"]), int(r["rid"]), str(r["hop"]), bool(r["held"])) for r in found
        ]

    async def queued(self, rids: Sequence[int]) -> list[Queued]:
        found = await q.rows(
            self.connection,
            f"{_QUEUED_FROM} WHERE q.rid = ANY(%s) ORDER BY q.rid",
            (sorted(set(rids)),),
        )
        return [rowmaps.queued_of(r) for r in found]

    async def queue_page(self, after: int, limit: int) -> list[Queued]:
        found = await q.rows(
            self.connection,
            f"{_QUEUED_FROM} WHERE q.rid > %s ORDER BY q.rid LIMIT %s",
            (after, limit),
        )
        return [rowmaps.queued_of(r) for r in found]

    async def queued_past_lifetime(
        self, now: int, enqueued_before: int, limit: int
    ) -> list[Queued]:
        found = await q.rows(
            self.connection,
            f"SELECT {rowmaps.QUEUED_COLS} FROM queue q JOIN peer_state p ON p.peer = q.hop"
            " JOIN envelopes e ON e.rid = q.rid"
            " WHERE p.next_try > %s AND (e.expires <= %s OR q.enqueued <= %s)"
            " ORDER BY q.rid LIMIT %s",
            (now, now, enqueued_before, limit),
        )
        return [rowmaps.queued_of(r) for r in found]

    async def reroute(self, rids: Sequence[int], hop: str) -> None:
        if rids:
            for table in ("queue", "envelopes"):
                await self.connection.execute(
                    f"UPDATE {table} SET hop = %s WHERE rid = ANY(%s)", (hop, list(rids))
                )

    async def resign(self, envelopes: Sequence[tuple[int, Envelope]]) -> None:
        stored = await q.rows(
            self.connection,
            "SELECT rid, origin, id FROM envelopes WHERE rid = ANY(%s)",
            ([rid for rid, _ in envelopes],),
        )
        keys = {int(r["rid"]): (str(r["origin"]), bytes(r["id"])) for r in stored}
        for rid, env in envelopes:
            h = env.header
            if keys.get(rid) != (h.origin, h.id):
                raise RelayError(
                    f"resign: envelope {rid} is not stored as {h.origin} {h.id.hex()};"
                    " a re-signed envelope keeps its origin and id"
                )
        await q.many(
            self.connection,
            "UPDATE envelopes SET header = %s, signature = %s, hdigest = %s WHERE rid = %s",
            [
                (env.header_bytes, env.signature, header_digest(env.header_bytes), rid)
                for rid, env in envelopes
            ],
        )

    async def queue_count(self, hop: str) -> QueueCount:
        row = await q.one(
            self.connection,
            "SELECT count(*) AS n, coalesce(sum(held), 0) AS held, min(enqueued) AS oldest"
            " FROM queue WHERE hop = %s",
            (hop,),
        )
        if row is None:
            return QueueCount(hop, 0, 0, None)
        oldest = row["oldest"]
        return QueueCount(hop, int(row["n"]), int(row["held"]), int(oldest) if oldest else None)

    # --- peers -----------------------------------------------------------------------

    async def has_peer_state(self, peer: str) -> bool:
        found = await q.value(self.connection, "SELECT 1 FROM peer_state WHERE peer = %s", (peer,))
        return found is not None

    async def save_peer_state(self, peer: str, state: PeerState) -> None:
        await self.connection.execute(
            "INSERT INTO peer_state (peer, failures, next_try, last_error, last_ok, delivered)"
            " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (peer) DO UPDATE SET"
            " failures = excluded.failures, next_try = excluded.next_try,"
            " last_error = excluded.last_error, last_ok = excluded.last_ok,"
            " delivered = excluded.delivered",
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
        if peers:
            await self.connection.execute(
                "UPDATE peer_state SET next_try = 0 WHERE peer = ANY(%s)", (list(peers),)
            )

    # --- receipts --------------------------------------------------------------------

    async def add_pending_receipts(self, receipts: Sequence[PendingReceipt], now: int) -> None:
        await q.many(
            self.connection,
            "INSERT INTO pending_receipts (origin, status, reason, residency, id, recipients, at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s)",
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
            " ORDER BY seq LIMIT %s",
            (limit,),
        )
        return [rowmaps.pending_receipt_of(r) for r in found]

    async def delete_pending_receipts(self, seqs: Sequence[int]) -> None:
        if seqs:
            await self.connection.execute(
                "DELETE FROM pending_receipts WHERE seq = ANY(%s)", (list(seqs),)
            )

    # --- federation requests ---------------------------------------------------------

    async def record_nonce(self, peer: str, nonce: str, now: int) -> bool:
        n = await q.changed(
            self.connection,
            "INSERT INTO nonces (peer, nonce, at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (peer, nonce, now),
        )
        return n == 1

    async def stored_results(self, peer: str, batch: bytes) -> dict[bytes, str] | None:
        row = await q.one(
            self.connection,
            "SELECT results FROM batches WHERE peer = %s AND batch = %s",
            (peer, batch),
        )
        return rowmaps.unpack_results(row["results"]) if row is not None else None

    async def unread_bytes(self, mailboxes: Sequence[str]) -> dict[str, int]:
        found = dict.fromkeys(mailboxes, 0)
        for r in await q.rows(
            self.connection,
            "SELECT mailbox, bytes FROM unread WHERE mailbox = ANY(%s)",
            (list(found),),
        ):
            found[str(r["mailbox"])] = int(r["bytes"])
        return found

    async def record_batch(
        self, peer: str, batch: bytes, results: Mapping[bytes, str], now: int
    ) -> None:
        packed = msgpack.packb(dict(results), use_bin_type=True)
        await self.connection.execute(
            "INSERT INTO batches (peer, batch, results, at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (peer, batch, packed, now),
        )

    async def prune(self, nonce_before: int, batch_before: int, idem_before: int) -> None:
        db = self.connection
        await db.execute("DELETE FROM nonces WHERE at < %s", (nonce_before,))
        await db.execute("DELETE FROM batches WHERE at < %s", (batch_before,))
        await db.execute("DELETE FROM idempotency WHERE at < %s", (idem_before,))

    # --- client requests -------------------------------------------------------------

    async def remember_answer(
        self, mailbox: str, key: str, answer: Mapping[str, object], now: int
    ) -> bool:
        n = await q.changed(
            self.connection,
            "INSERT INTO idempotency (mailbox, key, response, at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (mailbox, key, json.dumps(dict(answer)), now),
        )
        return n == 1

    async def idempotent_answer(self, mailbox: str, key: str) -> dict[str, object] | None:
        row = await q.one(
            self.connection,
            "SELECT response FROM idempotency WHERE mailbox = %s AND key = %s",
            (mailbox, key),
        )
        return rowmaps.answer_of(row["response"]) if row is not None else None

    async def ack_inbox(self, mailbox: str, ids: Sequence[bytes], now: int) -> int:
        if not ids:
            return 0
        async with self.connection.cursor() as cur:
            await cur.execute(
                "UPDATE inbox SET acked = %s WHERE acked IS NULL AND mailbox = %s"
                " AND rid IN (SELECT rid FROM envelopes WHERE id = ANY(%s))" + unread.ACKED_WEIGHT,
                (now, mailbox, list(dict.fromkeys(ids))),
            )
            found = await cur.fetchall()
        if found:
            weight = sum(int(r[0]) for r in found)
            await self.connection.execute(unread.take_weight("%s"), (weight, mailbox))
        return len(found)

    async def ack_inbox_seqs(self, seqs: Sequence[int], now: int) -> None:
        if seqs:
            await self.connection.execute(unread.take("i.seq = ANY(%s)"), (list(seqs),))
            await self.connection.execute(
                "UPDATE inbox SET acked = %s WHERE seq = ANY(%s) AND acked IS NULL",
                (now, list(seqs)),
            )

    async def webhook_advance(self, mailbox: str, seq: int, delivered: int) -> None:
        await self.connection.execute(
            "INSERT INTO webhook_state (mailbox, cursor, delivered) VALUES (%s, %s, %s)"
            " ON CONFLICT (mailbox) DO UPDATE SET"
            " cursor = greatest(webhook_state.cursor, excluded.cursor),"
            " failures = 0, next_try = 0, last_error = '',"
            " delivered = webhook_state.delivered + excluded.delivered",
            (mailbox, seq, delivered),
        )

    async def webhook_failure(self, mailbox: str, failure: WebhookFailure) -> None:
        await self.connection.execute(
            "INSERT INTO webhook_state (mailbox, failures, next_try, last_error)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (mailbox) DO UPDATE SET"
            " failures = excluded.failures, next_try = excluded.next_try,"
            " last_error = excluded.last_error",
            (mailbox, failure.failures, failure.next_try, failure.error),
        )

    # --- decisions and certificates --------------------------------------------------

    async def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        await q.many(
            self.connection,
            "INSERT INTO decisions (at, point, envelope, peer, outcome, rule, reason, policy_hash)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
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
        await q.many(
            self.connection,
            "INSERT INTO certificates (fingerprint, name, not_after, blob, at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(c.fingerprint, c.name, c.not_after, c.blob, now) for c in certs],
        )
        await self.connection.execute("DELETE FROM certificates WHERE not_after < %s", (now,))

    # --- workers: leases and announcements -------------------------------------------

    async def take_leases(
        self, holder: str, names: Sequence[str], now: int, until: int
    ) -> list[str]:
        if not names:
            return []
        taken = await q.rows(
            self.connection,
            "INSERT INTO leases (name, holder, expires) SELECT n, %s, %s FROM unnest(%s::text[]) n"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires = excluded.expires"
            " WHERE leases.holder = excluded.holder OR leases.expires <= %s RETURNING name",
            (holder, until, list(dict.fromkeys(names)), now),
        )
        held = {str(r["name"]) for r in taken}
        return [name for name in names if name in held]

    async def release_leases(self, holder: str, names: Sequence[str]) -> None:
        if names:
            await self.connection.execute(
                "DELETE FROM leases WHERE holder = %s AND name = ANY(%s)", (holder, list(names))
            )

    async def drop_expired_leases(self, before: int) -> int:
        return await q.changed(self.connection, "DELETE FROM leases WHERE expires < %s", (before,))

    def announce(self, topic: str, key: str) -> None:
        self.announced.append((topic, key))
