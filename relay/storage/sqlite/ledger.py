"""What the node records, as SQL over the store's tables.

Write functions take the writer transaction (`tx`) and are only ever called
from inside a `Store.write` job, so they share its commit. Read functions use
the store's read connection. No protocol decisions are made here: callers
decide, this module records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from relay.protocol.envelope import Envelope, header_digest
from relay.storage.sqlite.store import Store, Tx

IN_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's variable limit

# --- envelopes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    """An envelope about to be stored, with where it goes next."""

    env: Envelope
    trace: tuple[str, ...]
    from_peer: str | None
    hop: str | None  # next hop to queue for, None if not forwarded
    mailboxes: tuple[str, ...] = ()  # local inbox deliveries
    rule_id: str = ""
    policy_hash: str = ""


async def existing_digests(
    tx: Tx, keys: Sequence[tuple[str, bytes]]
) -> dict[tuple[str, bytes], bytes]:
    """Header digests already stored for these (origin, id) pairs."""
    found: dict[tuple[str, bytes], bytes] = {}
    wanted = set(keys)
    ids = list({ident for _, ident in keys})
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        async with tx.execute(
            f"SELECT origin, id, hdigest FROM envelopes WHERE id IN ({marks})",
            chunk,
        ) as cur:
            for origin, ident, digest in await cur.fetchall():
                key = (origin, bytes(ident))
                if key in wanted:
                    found[key] = bytes(digest)
    return found


async def insert_envelopes(tx: Tx, items: Sequence[NewEnvelope], now: int) -> list[int]:
    """Store envelopes, their payloads (once), queue rows and inbox rows; return rowids."""
    if not items:
        return []
    await tx.executemany(
        "INSERT OR IGNORE INTO payloads (sha, body) VALUES (?, ?)",
        [(it.env.header.sha256, it.env.payload) for it in items],
    )
    # The writer is the only one inserting, inside its transaction, so rowids
    # can be assigned here and the rows inserted in one executemany.
    async with tx.execute("SELECT coalesce(max(rid), 0) FROM envelopes") as cur:
        row = await cur.fetchone()
    first = int(row[0]) + 1 if row else 1
    rids = list(range(first, first + len(items)))
    rows = []
    for rid, it in zip(rids, items, strict=True):
        h = it.env.header
        rows.append(
            (
                rid,
                h.origin,
                h.id,
                header_digest(it.env.header_bytes),
                it.env.header_bytes,
                it.env.signature,
                h.sha256,
                msgpack.packb(list(it.trace)),
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
    await tx.executemany(
        "INSERT INTO envelopes (rid, origin, id, hdigest, header, signature, payload_sha, trace,"
        " kind, sender, dest, created, expires, received, size, residency, from_peer,"
        " rule_id, policy_hash, hop) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    queue_rows = [(rid, it.hop, now) for rid, it in zip(rids, items, strict=True) if it.hop]
    if queue_rows:
        await tx.executemany("INSERT INTO queue (rid, hop, enqueued) VALUES (?, ?, ?)", queue_rows)
    inbox_rows = [
        (mb, rid, now) for rid, it in zip(rids, items, strict=True) for mb in it.mailboxes
    ]
    if inbox_rows:
        await tx.executemany(
            "INSERT OR IGNORE INTO inbox (mailbox, rid, delivered) VALUES (?, ?, ?)", inbox_rows
        )
    return rids


RecipientRow = tuple[bytes, str, int, str, str, int]  # msg, address, rid, mailbox, status, at


async def add_recipients(tx: Tx, rows: Iterable[RecipientRow]) -> None:
    await tx.executemany(
        "INSERT INTO recipients (msg, address, rid, mailbox, status, at) VALUES (?,?,?,?,?,?)",
        rows,
    )


async def set_status_many(tx: Tx, rids: Sequence[int], status: str, reason: str, now: int) -> None:
    """`set_status` for every recipient of many envelopes, in one statement batch."""
    await tx.executemany(
        "UPDATE recipients SET status = ?, reason = ?, at = ?"
        " WHERE rid = ? AND status NOT IN ('delivered', 'rejected', 'expired')",
        [(status, reason, now, rid) for rid in rids],
    )


async def set_status(
    tx: Tx, rid: int, status: str, reason: str, now: int, addresses: Sequence[str] | None = None
) -> None:
    """Move recipients of an envelope forward; a final status is never overwritten."""
    final = ("delivered", "rejected", "expired")
    if addresses is None:
        await tx.execute(
            "UPDATE recipients SET status = ?, reason = ?, at = ?"
            " WHERE rid = ? AND status NOT IN (?, ?, ?)",
            (status, reason, now, rid, *final),
        )
    else:
        await tx.executemany(
            "UPDATE recipients SET status = ?, reason = ?, at = ?"
            " WHERE rid = ? AND address = ? AND status NOT IN (?, ?, ?)",
            [(status, reason, now, rid, a, *final) for a in addresses],
        )


# --- queue ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    rid: int
    header: bytes
    signature: bytes
    payload: bytes
    trace: tuple[str, ...]
    kind: str
    origin: str
    id: bytes
    expires: int
    enqueued: int
    attempts: int
    residency: str

    @property
    def wire_size(self) -> int:
        return len(self.header) + len(self.signature) + len(self.payload) + 64 * len(self.trace)


def queued_from(rid: int, cols: Sequence[Any], payload: bytes = b"") -> Queued:
    """A Queued from its row: rid, then header, signature, trace, kind, origin,
    id, expires, enqueued, attempts, residency (the order every queue scan selects)."""
    return Queued(
        rid=rid,
        header=bytes(cols[0]),
        signature=bytes(cols[1]),
        payload=payload,
        trace=tuple(msgpack.unpackb(cols[2])),
        kind=cols[3],
        origin=cols[4],
        id=bytes(cols[5]),
        expires=cols[6],
        enqueued=cols[7],
        attempts=cols[8],
        residency=cols[9],
    )


async def fetch_queue(store: Store, hop: str, limit: int, after: int = 0) -> list[Queued]:
    rows = await store.fetchall(
        "SELECT q.rid, e.header, e.signature, p.body, e.trace, e.kind, e.origin, e.id,"
        " e.expires, q.enqueued, q.attempts, e.residency"
        " FROM queue q JOIN envelopes e ON e.rid = q.rid"
        " LEFT JOIN payloads p ON p.sha = e.payload_sha"
        " WHERE q.hop = ? AND q.held = 0 AND q.rid > ? ORDER BY q.rid LIMIT ?",
        (hop, after, limit),
    )
    return [
        Queued(
            rid=r[0],
            header=bytes(r[1]),
            signature=bytes(r[2]),
            payload=bytes(r[3]) if r[3] is not None else b"",
            trace=tuple(msgpack.unpackb(r[4])),
            kind=r[5],
            origin=r[6],
            id=bytes(r[7]),
            expires=r[8],
            enqueued=r[9],
            attempts=r[10],
            residency=r[11],
        )
        for r in rows
    ]


async def queue_hops(store: Store) -> list[str]:
    rows = await store.fetchall("SELECT DISTINCT hop FROM queue")
    return [r[0] for r in rows]


async def dequeue(tx: Tx, rids: Sequence[int]) -> None:
    await tx.executemany("DELETE FROM queue WHERE rid = ?", [(r,) for r in rids])


async def note_attempt(tx: Tx, rids: Sequence[int], error: str) -> None:
    await tx.executemany(
        "UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE rid = ?",
        [(error, r) for r in rids],
    )


# --- receipts to write -----------------------------------------------------------


async def add_pending_receipt(
    tx: Tx,
    *,
    origin: str,
    status: str,
    reason: str,
    residency: str,
    ident: bytes,
    recipients: Sequence[str],
    now: int,
) -> None:
    await tx.execute(
        "INSERT INTO pending_receipts (origin, status, reason, residency, id, recipients, at)"
        " VALUES (?,?,?,?,?,?,?)",
        (origin, status, reason, residency, ident, msgpack.packb(list(recipients)), now),
    )


# --- peers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerState:
    failures: int = 0
    next_try: int = 0
    last_error: str = ""
    last_ok: int = 0
    delivered: int = 0


async def peer_state(store: Store, peer: str) -> PeerState:
    row = await store.fetchone(
        "SELECT failures, next_try, last_error, last_ok, delivered FROM peer_state WHERE peer = ?",
        (peer,),
    )
    if row is None:
        return PeerState()
    return PeerState(row[0], row[1], row[2], row[3], row[4])


async def save_peer_state(tx: Tx, peer: str, st: PeerState) -> None:
    await tx.execute(
        "INSERT INTO peer_state (peer, failures, next_try, last_error, last_ok, delivered)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT (peer) DO UPDATE SET failures = excluded.failures,"
        " next_try = excluded.next_try, last_error = excluded.last_error,"
        " last_ok = excluded.last_ok, delivered = excluded.delivered",
        (peer, st.failures, st.next_try, st.last_error, st.last_ok, st.delivered),
    )


# --- batches and nonces ------------------------------------------------------------


async def stored_results(store: Store, peer: str, batch: bytes) -> dict[bytes, str] | None:
    row = await store.fetchone(
        "SELECT results FROM batches WHERE peer = ? AND batch = ?", (peer, batch)
    )
    return _results(row[0]) if row is not None else None


async def stored_results_tx(tx: Tx, peer: str, batch: bytes) -> dict[bytes, str] | None:
    """`stored_results` inside the writer's transaction (sees concurrent commits)."""
    async with tx.execute(
        "SELECT results FROM batches WHERE peer = ? AND batch = ?", (peer, batch)
    ) as cur:
        row = await cur.fetchone()
    return _results(row[0]) if row is not None else None


def _results(blob: bytes) -> dict[bytes, str]:
    raw = msgpack.unpackb(blob, raw=False)
    return {bytes(k): str(v) for k, v in raw.items()}


async def nonce_seen(store: Store, peer: str, nonce: str) -> bool:
    row = await store.fetchone("SELECT 1 FROM nonces WHERE peer = ? AND nonce = ?", (peer, nonce))
    return row is not None


async def record_nonce(tx: Tx, peer: str, nonce: str, now: int) -> bool:
    """Record a verified nonce; False if it was already there (a replay)."""
    cur = await tx.execute(
        "INSERT OR IGNORE INTO nonces (peer, nonce, at) VALUES (?, ?, ?)", (peer, nonce, now)
    )
    fresh = cur.rowcount == 1
    await cur.close()
    return fresh


async def record_batch(
    tx: Tx, peer: str, batch: bytes, results: dict[bytes, str], now: int
) -> None:
    await tx.execute(
        "INSERT OR IGNORE INTO batches (peer, batch, results, at) VALUES (?, ?, ?, ?)",
        (peer, batch, msgpack.packb(results, use_bin_type=True), now),
    )


async def prune(tx: Tx, nonce_before: int, batch_before: int, idem_before: int) -> None:
    await tx.execute("DELETE FROM nonces WHERE at < ?", (nonce_before,))
    await tx.execute("DELETE FROM batches WHERE at < ?", (batch_before,))
    await tx.execute("DELETE FROM idempotency WHERE at < ?", (idem_before,))


# --- idempotency ---------------------------------------------------------------------


async def idempotent_answer(store: Store, mailbox: str, key: str) -> dict[str, object] | None:
    row = await store.fetchone(
        "SELECT response FROM idempotency WHERE mailbox = ? AND key = ?", (mailbox, key)
    )
    if row is None:
        return None
    answer: dict[str, object] = json.loads(row[0])
    return answer


async def remember_answer(
    tx: Tx, mailbox: str, key: str, answer: dict[str, object], now: int
) -> bool:
    """Store the first answer for (mailbox, key); False if one was already there."""
    cur = await tx.execute(
        "INSERT OR IGNORE INTO idempotency (mailbox, key, response, at) VALUES (?, ?, ?, ?)",
        (mailbox, key, json.dumps(answer), now),
    )
    fresh = cur.rowcount == 1
    await cur.close()
    return fresh


# --- decisions ------------------------------------------------------------------------


async def record_decision(
    tx: Tx,
    *,
    at: int,
    point: str,
    envelope: bytes | None,
    peer: str,
    outcome: str,
    rule: str,
    reason: str,
    policy_hash: str,
) -> None:
    await tx.execute(
        "INSERT INTO decisions (at, point, envelope, peer, outcome, rule, reason, policy_hash)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (at, point, envelope, peer, outcome, rule, reason, policy_hash),
    )
