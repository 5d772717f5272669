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
from relay.logs import event
from relay.node import retention
from relay.node.queue_end import Ending, end_queued
from relay.node.state import NodeState
from relay.storage.audit import deleted_event
from relay.storage.interface import WriteTx
from relay.storage.records import QueueRef

log = logging.getLogger("relay.admin")

DELETED_REASON = "deleted by admin"
# ids per admin request, for the queue's actions and erasure alike: as many as one
# by-sender erasure reaches (erasure.MAX_BY_SENDER), and well inside the admin body
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
    """Envelope (or message) ids from JSON: a list of 1 to MAX_IDS, 32 lowercase hex
    digits each; repeats are dropped."""
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


def _unknown(ids: Iterable[bytes], rows: Iterable[QueueRef]) -> tuple[str, ...]:
    found = {r.id for r in rows}
    return tuple(i.hex() for i in ids if i not in found)


async def set_held(state: NodeState, ids: Sequence[bytes], held: bool) -> ActionResult:
    """Hold (the sender skips them) or release queued envelopes."""

    async def job(tx: WriteTx) -> ActionResult:
        rows = await tx.queue_refs(ids)
        todo = [r for r in rows if r.held != held]
        await tx.set_held([r.rid for r in todo], held)
        hops = sorted({r.hop for r in todo}) if not held else []
        for hop in hops:
            state.note_hop(tx, hop)
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

    async def job(tx: WriteTx) -> ActionResult:
        if dest is not None:
            count = await tx.queue_count(dest)
            if not count.queued and not await tx.has_peer_state(dest):
                return ActionResult(0, 0, (dest,))
            await tx.clear_backoff([dest])  # failures stay counted: a dead peer backs off on
            await tx.clear_deferred([dest])
            state.note_hop(tx, dest)
            return ActionResult(count.queued, count.queued - count.held, (), (dest,))
        rows = await tx.queue_refs(ids)
        hops = sorted({r.hop for r in rows})
        await tx.clear_backoff(hops)
        await tx.clear_deferred(hops)
        for hop in hops:
            state.note_hop(tx, hop)
        changed = sum(not r.held for r in rows)
        return ActionResult(len(rows), changed, _unknown(ids, rows), tuple(hops))

    result = await state.store.write(job)
    event(log, "queue_retry", peers=",".join(result.peers), envelopes=result.changed)
    return result


async def delete(state: NodeState, ids: Sequence[bytes]) -> ActionResult:
    """Take envelopes out of the queue, each ending `rejected` (DELETED_REASON)."""

    async def job(tx: WriteTx) -> ActionResult:
        rows = await tx.queue_refs(ids)
        items = await tx.queued([r.rid for r in rows])
        now = state.now_ms()
        endings = [Ending(it, "rejected", DELETED_REASON) for it in items]
        await end_queued(tx, state.name, endings, now, by="admin")
        if items:
            await tx.append_audit(
                [deleted_event(now, [it.id for it in items], "admin", DELETED_REASON)]
            )
        await retention.drop_content(
            tx, [it.rid for it in items], state.config.retention, now, source="admin_delete"
        )
        return ActionResult(len(rows), len(items), _unknown(ids, rows))

    return await state.store.write(job)
