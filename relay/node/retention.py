"""Retention: what the purge job deletes, and when (DESIGN §7 "Retention").

Ages count from `envelopes.received`, the time this node stored the copy.

Invariants:
- Content (an envelope's reference to its payload) goes when the envelope is
  `content_max_days` old, or when a deletion path marked it `discard` and it
  is `content_min_days` old. Deletion paths (re-check) only mark and call
  `drop_content`, which keeps everything younger than `content_min_days`: no
  path deletes content under its minimum.
- A payload row goes only when no envelope references it any more, so a
  payload shared with a younger copy stays.
- Metadata (an envelope row with its inbox and recipients rows) goes when the
  envelope is `metadata_max_days` old, no longer queued, its content gone or
  past its minimum, and its `expires` passed by EXPIRY_MARGIN_MS: the row is
  also the dedupe record, which must outlive the envelope. Decision rows go
  when they are `metadata_max_days` old.
- A queued envelope whose content is due leaves the queue and ends as
  `expired` with reason `retention` (status at the origin, a receipt to it
  otherwise): without its content it can never be delivered.
- Each transaction that deletes anything writes one `purges` row with its
  counts, in the same commit.
- `preview` only reads, with the same predicates as `purge`, so
  `relay purge --dry-run` can run it on a read-only connection.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from relay.config.model import DAY_MS, RetentionConfig
from relay.errors import RelayError
from relay.federation.outbound import end_queued
from relay.logs import event
from relay.node.state import NodeState
from relay.storage.sqlite import ledger
from relay.storage.sqlite.store import Store, Tx

log = logging.getLogger("relay.retention")

PURGE_INTERVAL_S = 300.0
EXPIRY_MARGIN_MS = 600_000  # twice the federation clock window: replays are refused as expired
CHUNK = 500  # envelopes per purge transaction, so that other writers are not held up
RETENTION_SCHEMA = 2  # the store migration that added `discard` and `purges`

# One predicate each, shared by `purge` and `preview` (alias `e` is envelopes).
_CONTENT_DUE = (
    "(e.payload_sha IS NOT NULL"
    " AND (e.received <= :cmax OR (e.discard = 1 AND e.received <= :cmin)))"
)
_QUEUED = "EXISTS (SELECT 1 FROM queue q WHERE q.rid = e.rid)"
_METADATA_DUE = (
    "(e.received <= :mmax AND e.received <= :mmin AND e.expires <= :expired"
    f" AND (NOT {_QUEUED} OR {_CONTENT_DUE})"
    " AND (e.payload_sha IS NULL OR e.received <= :cmin))"
)
_DECISIONS_DUE = "(d.at <= :mmax AND d.at <= :mmin)"


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Times (unix ms) at or before which something is old enough to go."""

    now: int
    cmax: int
    cmin: int
    mmax: int
    mmin: int
    expired: int

    def params(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def cutoffs(r: RetentionConfig, now: int) -> Cutoffs:
    """The cutoffs of `r` at time `now`."""
    return Cutoffs(
        now=now,
        cmax=now - r.content_max_days * DAY_MS,
        cmin=now - r.content_min_days * DAY_MS,
        mmax=now - r.metadata_max_days * DAY_MS,
        mmin=now - r.metadata_min_days * DAY_MS,
        expired=now - EXPIRY_MARGIN_MS,
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """What one purge deleted (or, in a preview, would delete)."""

    contents: int = 0  # envelopes whose content reference went
    payloads: int = 0  # payload rows deleted
    payload_bytes: int = 0
    ended: int = 0  # queued envelopes ended as expired:retention
    envelopes: int = 0  # envelope rows (metadata) deleted
    inbox: int = 0
    recipients: int = 0
    decisions: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --- the purge ---------------------------------------------------------------------


async def purge(
    store: Store, retention: RetentionConfig, here: str, now: int, *, source: str = "job"
) -> Counts:
    """Delete what is past its maximum, in transactions of at most CHUNK envelopes.

    `here` is this node's name (to tell origin copies from relayed ones).
    Returns the total; each transaction that deleted something is recorded.
    """
    total = Counts()
    while True:
        counts, more = await store.write(lambda tx: _purge_chunk(tx, retention, here, now, source))
        total += counts
        if not more:
            break
    if total.any():
        event(log, "purged", source=source, **total.as_dict())
    return total


async def _purge_chunk(
    tx: Tx, retention: RetentionConfig, here: str, now: int, source: str
) -> tuple[Counts, bool]:
    cut = cutoffs(retention, now)
    params = cut.params()
    # _CONTENT_DUE as two queries, each served by its partial index
    by_rid: dict[int, sqlite3.Row] = {}
    full = False
    for due in ("e.received <= :cmax", "e.discard = 1 AND e.received <= :cmin"):
        rows = await _rows(
            tx,
            f"SELECT e.rid, e.payload_sha, {_QUEUED} FROM envelopes e"
            f" WHERE e.payload_sha IS NOT NULL AND {due} ORDER BY e.received LIMIT :limit",
            {**params, "limit": CHUNK},
        )
        full = full or len(rows) == CHUNK
        by_rid.update((int(r[0]), r) for r in rows)
    content = list(by_rid.values())
    queued = [int(r[0]) for r in content if r[2]]
    ended = await _end_queued(tx, here, queued, now)
    shas = {bytes(r[1]) for r in content}
    await tx.executemany(
        "UPDATE envelopes SET payload_sha = NULL, discard = 0 WHERE rid = ?",
        [(r[0],) for r in content],
    )

    meta = await _rows(
        tx,
        f"SELECT e.rid, e.payload_sha FROM envelopes e WHERE {_METADATA_DUE}"
        " ORDER BY e.received LIMIT :limit",
        {**params, "limit": CHUNK},
    )
    rids = [int(r[0]) for r in meta]
    shas |= {bytes(r[1]) for r in meta if r[1] is not None}
    inbox = await _delete_by_rid(tx, "inbox", rids)
    recipients = await _delete_by_rid(tx, "recipients", rids)
    envelopes = await _delete_by_rid(tx, "envelopes", rids)

    cur = await tx.execute(
        "DELETE FROM decisions WHERE seq IN (SELECT d.seq FROM decisions d"
        f" WHERE {_DECISIONS_DUE} ORDER BY d.at LIMIT :limit)",
        {**params, "limit": CHUNK},
    )
    decisions = cur.rowcount
    await cur.close()

    payloads, payload_bytes = await _drop_unreferenced(tx, shas)
    counts = Counts(
        contents=len(content),
        payloads=payloads,
        payload_bytes=payload_bytes,
        ended=ended,
        envelopes=envelopes,
        inbox=inbox,
        recipients=recipients,
        decisions=decisions,
    )
    await record(tx, now, source, counts)
    more = full or len(meta) == CHUNK or decisions == CHUNK
    return counts, more


async def drop_content(
    tx: Tx, rids: Sequence[int], retention: RetentionConfig, now: int, *, source: str
) -> Counts:
    """A deletion path's way to delete content: mark `rids` for deletion, then
    delete at once the content of those past `content_min_days`. The rest is
    deleted by the purge job once the minimum has passed."""
    if not rids:
        return Counts()
    await tx.executemany("UPDATE envelopes SET discard = 1 WHERE rid = ?", [(r,) for r in rids])
    cmin = cutoffs(retention, now).cmin
    due: list[tuple[int, bytes]] = []
    for rid in rids:
        async with tx.execute(
            "SELECT payload_sha FROM envelopes WHERE rid = ? AND payload_sha IS NOT NULL"
            " AND received <= ?",
            (rid, cmin),
        ) as c:
            row = await c.fetchone()
        if row is not None:
            due.append((rid, bytes(row[0])))
    await tx.executemany(
        "UPDATE envelopes SET payload_sha = NULL, discard = 0 WHERE rid = ?",
        [(rid,) for rid, _ in due],
    )
    payloads, payload_bytes = await _drop_unreferenced(tx, {sha for _, sha in due})
    counts = Counts(contents=len(due), payloads=payloads, payload_bytes=payload_bytes)
    await record(tx, now, source, counts)
    return counts


async def record(tx: Tx, now: int, source: str, counts: Counts) -> None:
    """Write the `purges` row of one deletion, if it deleted anything."""
    if not counts.any():
        return
    d = counts.as_dict()
    names = ", ".join(d)
    await tx.execute(
        f"INSERT INTO purges (at, source, {names}) VALUES (?, ?, {', '.join('?' * len(d))})",
        (now, source, *d.values()),
    )


async def run_purger(state: NodeState, interval_s: float = PURGE_INTERVAL_S) -> None:
    """Purge once now, then every `interval_s` seconds until the node stops."""
    while not state.stopping:
        try:
            await purge(state.store, state.config.retention, state.name, state.now_ms())
        except RelayError as e:
            event(log, "purge_failed", logging.ERROR, detail=e.detail)
        await asyncio.sleep(interval_s)


# --- helpers -------------------------------------------------------------------------


async def _rows(db: Tx, sql: str, params: Mapping[str, object]) -> list[sqlite3.Row]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def _delete_by_rid(tx: Tx, table: str, rids: Sequence[int]) -> int:
    if not rids:
        return 0
    marks = ",".join("?" * len(rids))
    cur = await tx.execute(f"DELETE FROM {table} WHERE rid IN ({marks})", tuple(rids))
    n = cur.rowcount
    await cur.close()
    return n


async def _drop_unreferenced(tx: Tx, shas: set[bytes]) -> tuple[int, int]:
    """Delete the payloads among `shas` that no envelope references; (rows, bytes)."""
    rows = 0
    size = 0
    for sha in sorted(shas):
        async with tx.execute(
            "SELECT length(body) FROM payloads p WHERE p.sha = ?"
            " AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.payload_sha = p.sha)",
            (sha,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            continue
        await tx.execute("DELETE FROM payloads WHERE sha = ?", (sha,))
        rows += 1
        size += int(row[0])
    return rows, size


async def queued(tx: Tx, rids: Sequence[int]) -> list[ledger.Queued]:
    """Queue entries of `rids` (without payloads), in rid order."""
    out: list[ledger.Queued] = []
    for rid in sorted(rids):
        async with tx.execute(
            "SELECT q.rid, e.header, e.signature, e.trace, e.kind, e.origin, e.id, e.expires,"
            " q.enqueued, q.attempts, e.residency FROM queue q JOIN envelopes e ON e.rid = q.rid"
            " WHERE q.rid = ?",
            (rid,),
        ) as cur:
            r = await cur.fetchone()
        if r is None:
            continue
        out.append(ledger.queued_from(r[0], r[1:11]))
    return out


async def _end_queued(tx: Tx, here: str, rids: Sequence[int], now: int) -> int:
    items = await queued(tx, rids)
    await ledger.dequeue(tx, [it.rid for it in items])
    for it in items:
        await end_queued(tx, here, it, "expired", "retention", now)
        event(
            log,
            "envelope_ended",
            logging.WARNING,
            envelope=it.id,
            origin=it.origin,
            status="expired",
            reason="retention",
        )
    return len(items)


# --- preview (read-only) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Due:
    """One envelope a purge would touch."""

    origin: str
    id: bytes
    kind: str
    received: int
    expires: int
    why: str  # "content_max", "discarded" or "metadata_max"
    queued: bool = False


@dataclass(frozen=True, slots=True)
class Preview:
    """What `purge` would delete at `cut.now`; `content`/`metadata` list at most `limit`."""

    cut: Cutoffs
    counts: Counts
    content: tuple[Due, ...]
    metadata: tuple[Due, ...]


async def preview(db: Tx, retention: RetentionConfig, now: int, limit: int = 100) -> Preview:
    """What a purge at `now` would delete; reads only (any connection, even read-only)."""
    cut = cutoffs(retention, now)
    p: dict[str, object] = {**cut.params(), "limit": limit}

    async def count(sql: str) -> int:
        rows = await _rows(db, sql, p)
        return int(rows[0][0] or 0) if rows else 0

    contents = await count(f"SELECT count(*) FROM envelopes e WHERE {_CONTENT_DUE}")
    ended = await count(f"SELECT count(*) FROM envelopes e WHERE {_CONTENT_DUE} AND {_QUEUED}")
    envelopes = await count(f"SELECT count(*) FROM envelopes e WHERE {_METADATA_DUE}")
    inbox = await count(
        f"SELECT count(*) FROM inbox i JOIN envelopes e ON e.rid = i.rid WHERE {_METADATA_DUE}"
    )
    recipients = await count(
        f"SELECT count(*) FROM recipients r JOIN envelopes e ON e.rid = r.rid WHERE {_METADATA_DUE}"
    )
    decisions = await count(f"SELECT count(*) FROM decisions d WHERE {_DECISIONS_DUE}")
    survivors = (
        "SELECT 1 FROM envelopes e WHERE e.payload_sha = p.sha"
        f" AND NOT {_CONTENT_DUE} AND NOT {_METADATA_DUE}"
    )
    rows = await _rows(
        db,
        f"SELECT count(*), coalesce(sum(length(p.body)), 0) FROM payloads p"
        f" WHERE NOT EXISTS ({survivors})",
        p,
    )
    payloads, payload_bytes = int(rows[0][0] or 0), int(rows[0][1] or 0)

    content = await _rows(
        db,
        "SELECT e.origin, e.id, e.kind, e.received, e.expires,"
        f" CASE WHEN e.received <= :cmax THEN 'content_max' ELSE 'discarded' END, {_QUEUED}"
        f" FROM envelopes e WHERE {_CONTENT_DUE} ORDER BY e.received, e.rid LIMIT :limit",
        p,
    )
    meta = await _rows(
        db,
        "SELECT e.origin, e.id, e.kind, e.received, e.expires, 'metadata_max', 0"
        f" FROM envelopes e WHERE {_METADATA_DUE} ORDER BY e.received, e.rid LIMIT :limit",
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
    return Preview(cut, counts, tuple(map(_due, content)), tuple(map(_due, meta)))


def _due(r: sqlite3.Row) -> Due:
    return Due(
        origin=str(r[0]),
        id=bytes(r[1]),
        kind=str(r[2]),
        received=int(r[3]),
        expires=int(r[4]),
        why=str(r[5]),
        queued=bool(r[6]),
    )
