"""What an admin may do to a running node's queue: retry, hold, release, delete.

Called by the admin API (relay.api.admin) inside the node, never by a second
process on the database: every change is a job of the node's own writer.

Invariants:
- Envelopes are named by their 16-byte id. An id may be queued more than
  once (two origins, or two hops); an action applies to every queue row of
  the id, and ids with no queue row are reported back, never ignored.
- Nothing accepted is dropped silently: `delete` ends each envelope as
  `rejected` with reason DELETED_REASON, in the same transaction that removes
  its queue row (status at the origin, a receipt to the origin otherwise),
  and hands its content to retention like any other deletion path.
- Backoff is per peer: `retry` clears the next-try time of the hops
  concerned and wakes their senders; it does not release held envelopes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.errors import BadRequest
from relay.federation.outbound import end_queued
from relay.logs import event
from relay.node import retention
from relay.node.state import NodeState
from relay.storage.sqlite import ledger
from relay.storage.sqlite.store import Tx

log = logging.getLogger("relay.admin")

DELETED_REASON = "deleted by admin"
MAX_IDS = 10_000


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an action found and changed."""

    matched: int  # queue rows the ids (or the destination) name
    changed: int  # rows actually changed (a held row is not held again)
    unknown: tuple[str, ...] = ()  # ids (or the destination) with no queue row
    peers: tuple[str, ...] = ()  # hops whose senders were woken

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "changed": self.changed,
            "unknown": list(self.unknown),
            "peers": list(self.peers),
        }


def parse_ids(values: object) -> list[bytes]:
    """Envelope ids from JSON: a non-empty list of 32 lowercase hex digits each."""
    if not isinstance(values, list) or not values:
        raise BadRequest("'ids' must be a non-empty list of envelope ids")
    if len(values) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids at once")
    out: list[bytes] = []
    for v in values:
        raw = bytes.fromhex(v) if isinstance(v, str) and _is_hex32(v) else None
        if raw is None:
            raise BadRequest(f"{v!r} is not an envelope id (32 lowercase hex digits)")
        out.append(raw)
    return list(dict.fromkeys(out))


def _is_hex32(v: str) -> bool:
    return len(v) == 32 and all(c in "0123456789abcdef" for c in v)


@dataclass(frozen=True, slots=True)
class _Row:
    id: bytes
    rid: int
    hop: str
    held: bool


async def _rows_of(tx: Tx, ids: Sequence[bytes]) -> list[_Row]:
    rows: list[_Row] = []
    for start in range(0, len(ids), ledger.IN_CHUNK):
        chunk = ids[start : start + ledger.IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        async with tx.execute(
            "SELECT e.id, q.rid, q.hop, q.held FROM queue q JOIN envelopes e ON e.rid = q.rid"
            f" WHERE e.id IN ({marks}) ORDER BY q.rid",
            chunk,
        ) as cur:
            rows.extend(_Row(bytes(r[0]), r[1], r[2], bool(r[3])) for r in await cur.fetchall())
    return rows


def _unknown(ids: Iterable[bytes], rows: Iterable[_Row]) -> tuple[str, ...]:
    found = {r.id for r in rows}
    return tuple(i.hex() for i in ids if i not in found)


async def set_held(state: NodeState, ids: Sequence[bytes], held: bool) -> ActionResult:
    """Hold (the sender skips them) or release queued envelopes."""

    async def job(tx: Tx) -> ActionResult:
        rows = await _rows_of(tx, ids)
        todo = [r for r in rows if r.held != held]
        await tx.executemany(
            "UPDATE queue SET held = ? WHERE rid = ?", [(int(held), r.rid) for r in todo]
        )
        hops = sorted({r.hop for r in todo}) if not held else []
        for hop in hops:
            state.note_hop(hop)
        return ActionResult(len(rows), len(todo), _unknown(ids, rows), tuple(hops))

    result = await state.store.write(job)
    event(
        log,
        "queue_hold" if held else "queue_release",
        envelopes=result.changed,
        unknown=len(result.unknown),
    )
    return result


async def retry(
    state: NodeState, *, dest: str | None = None, ids: Sequence[bytes] = ()
) -> ActionResult:
    """Clear the backoff of `dest`, or of the hops where `ids` are queued, and wake them."""

    async def job(tx: Tx) -> ActionResult:
        if dest is not None:
            async with tx.execute(
                "SELECT count(*), coalesce(sum(held), 0) FROM queue WHERE hop = ?", (dest,)
            ) as cur:
                row = await cur.fetchone()
            queued, held = (int(row[0]), int(row[1])) if row else (0, 0)
            async with tx.execute("SELECT 1 FROM peer_state WHERE peer = ?", (dest,)) as cur:
                known = await cur.fetchone() is not None
            if not queued and not known:
                return ActionResult(0, 0, (dest,))
            await _clear_backoff(tx, [dest])
            state.note_hop(dest)
            return ActionResult(queued, queued - held, (), (dest,))
        rows = await _rows_of(tx, ids)
        hops = sorted({r.hop for r in rows})
        await _clear_backoff(tx, hops)
        for hop in hops:
            state.note_hop(hop)
        changed = sum(not r.held for r in rows)
        return ActionResult(len(rows), changed, _unknown(ids, rows), tuple(hops))

    result = await state.store.write(job)
    event(log, "queue_retry", peers=",".join(result.peers), envelopes=result.changed)
    return result


async def _clear_backoff(tx: Tx, hops: Sequence[str]) -> None:
    # failures stay counted: a peer still down backs off from where it was
    await tx.executemany("UPDATE peer_state SET next_try = 0 WHERE peer = ?", [(h,) for h in hops])


async def delete(state: NodeState, ids: Sequence[bytes]) -> ActionResult:
    """Take envelopes out of the queue, each ending `rejected` (DELETED_REASON)."""

    async def job(tx: Tx) -> ActionResult:
        rows = await _rows_of(tx, ids)
        hop_of = {r.rid: r.hop for r in rows}
        items = await retention.queued(tx, list(hop_of))
        now = state.now_ms()
        await ledger.dequeue(tx, [it.rid for it in items])
        for it in items:
            await end_queued(tx, state.name, it, "rejected", DELETED_REASON, now)
            event(
                log,
                "envelope_ended",
                logging.WARNING,
                peer=hop_of[it.rid],
                envelope=it.id,
                origin=it.origin,
                status="rejected",
                reason=DELETED_REASON,
                attempts=it.attempts,
            )
        await retention.drop_content(
            tx, [it.rid for it in items], state.config.retention, now, source="admin_delete"
        )
        return ActionResult(len(rows), len(items), _unknown(ids, rows))

    return await state.store.write(job)
