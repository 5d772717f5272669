"""Rows to records, once per kind of row, for every backend.

Invariants:
- A row is anything indexable by column name (sqlite3.Row, a psycopg dict
  row); every SELECT that feeds a function here names the columns it reads.
- Blobs may come back as bytes or memoryview and integers as int or bool:
  each value is converted here, so records hold plain Python values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import msgpack

from relay.storage.records import (
    AllowRecord,
    DecisionRecord,
    Due,
    InboxItem,
    PeerState,
    PendingReceipt,
    Queued,
    QueueListing,
    RecipientStatus,
    StatusUpdate,
)


class Row(Protocol):
    """A database row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


# The columns of a queue entry (queue q JOIN envelopes e), read by `queued_of`.
QUEUED_COLS = (
    "q.rid, q.hop, e.header, e.signature, e.trace, e.kind, e.origin, e.id, e.expires,"
    " q.enqueued, q.attempts, e.residency, e.policy_hash, e.dest"
)

# The columns read by `queue_listing_of` (queue q, envelopes e, peer_state ps).
LISTING_COLS = (
    "q.rid, e.id, e.origin, e.kind, e.sender, e.dest, q.hop, q.enqueued,"
    " q.attempts, q.last_error, q.held, e.size, e.expires,"
    " coalesce(ps.next_try, 0) AS next_try, q.not_before"
)


_NO_TRACE: bytes = msgpack.packb([])


def pack_trace(trace: tuple[str, ...]) -> bytes:
    """An envelope row's `trace` column: the msgpack array of the nodes it passed
    (empty for this node's own envelopes: one constant, not a pack per row)."""
    packed: bytes = msgpack.packb(list(trace)) if trace else _NO_TRACE
    return packed


def status_groups(updates: Sequence[StatusUpdate]) -> dict[tuple[str, str], list[int]] | None:
    """The rids of whole-envelope updates by (status, reason), for one statement per
    group; None when a rid comes twice, where the order of the updates decides
    (a final status stops later ones) and they must run one by one."""
    groups: dict[tuple[str, str], list[int]] = {}
    seen: set[int] = set()
    for u in updates:
        if u.rid in seen:
            return None
        seen.add(u.rid)
        groups.setdefault((u.status, u.reason), []).append(u.rid)
    return groups


def unpack_trace(blob: bytes) -> tuple[str, ...]:
    """The nodes a `trace` column names (pack_trace's inverse)."""
    return () if blob == _NO_TRACE else tuple(msgpack.unpackb(blob))


def queued_of(r: Row, payload: bytes = b"") -> Queued:
    """A Queued from a row selecting QUEUED_COLS."""
    return Queued(
        rid=int(r["rid"]),
        hop=str(r["hop"]),
        header=bytes(r["header"]),
        signature=bytes(r["signature"]),
        payload=payload,
        trace=unpack_trace(r["trace"]),
        kind=str(r["kind"]),
        origin=str(r["origin"]),
        id=bytes(r["id"]),
        expires=int(r["expires"]),
        enqueued=int(r["enqueued"]),
        attempts=int(r["attempts"]),
        residency=str(r["residency"]),
        policy_hash=str(r["policy_hash"]),
        dest=str(r["dest"]),
    )


def peer_state_of(r: Row) -> PeerState:
    """A PeerState from a peer_state row."""
    return PeerState(
        failures=int(r["failures"]),
        next_try=int(r["next_try"]),
        last_error=str(r["last_error"]),
        last_ok=int(r["last_ok"]),
        delivered=int(r["delivered"]),
    )


def queue_listing_of(r: Row) -> QueueListing:
    """A QueueListing from a row selecting LISTING_COLS."""
    return QueueListing(
        rid=int(r["rid"]),
        id=bytes(r["id"]),
        origin=str(r["origin"]),
        kind=str(r["kind"]),
        sender=str(r["sender"]),
        dest=str(r["dest"]),
        hop=str(r["hop"]),
        enqueued=int(r["enqueued"]),
        attempts=int(r["attempts"]),
        last_error=str(r["last_error"]),
        held=bool(r["held"]),
        size=int(r["size"]),
        expires=int(r["expires"]),
        next_try=max(int(r["next_try"]), int(r["not_before"])),
    )


def recipient_status_of(r: Row) -> RecipientStatus:
    """A RecipientStatus from a recipients row (address, status, reason, at)."""
    return RecipientStatus(str(r["address"]), str(r["status"]), str(r["reason"]), int(r["at"]))


def inbox_item_of(r: Row) -> InboxItem:
    """An InboxItem from (seq, id, residency, header, body, erased)."""
    return InboxItem(
        seq=int(r["seq"]),
        id=bytes(r["id"]),
        residency=str(r["residency"]),
        header=bytes(r["header"]),
        payload=bytes(r["body"]) if r["body"] is not None else None,
        erased=int(r["erased"]) if r["erased"] is not None else None,
    )


def pending_receipt_of(r: Row) -> PendingReceipt:
    """A PendingReceipt from a pending_receipts row."""
    return PendingReceipt(
        origin=str(r["origin"]),
        status=str(r["status"]),
        reason=str(r["reason"]),
        residency=str(r["residency"]),
        id=bytes(r["id"]),
        recipients=tuple(msgpack.unpackb(r["recipients"], raw=False)),
        seq=int(r["seq"]),
    )


def decision_of(r: Row) -> DecisionRecord:
    """A DecisionRecord from a decisions row."""
    return DecisionRecord(
        at=int(r["at"]),
        point=str(r["point"]),
        envelope=bytes(r["envelope"]) if r["envelope"] is not None else None,
        peer=str(r["peer"] or ""),
        outcome=str(r["outcome"]),
        rule=str(r["rule"] or ""),
        reason=str(r["reason"] or ""),
        policy_hash=str(r["policy_hash"] or ""),
    )


def allow_of(r: Row) -> AllowRecord:
    """An AllowRecord from an envelopes row (received, from_peer, id, dest, rule_id, ...)."""
    return AllowRecord(
        at=int(r["received"]),
        point="submit" if r["from_peer"] is None else "accept",
        envelope=bytes(r["id"]),
        peer=str(r["from_peer"] if r["from_peer"] is not None else r["dest"]),
        rule=str(r["rule_id"] or ""),
        residency=str(r["residency"]),
        policy_hash=str(r["policy_hash"] or ""),
    )


def due_of(r: Row) -> Due:
    """A Due from a retention preview row."""
    return Due(
        origin=str(r["origin"]),
        id=bytes(r["id"]),
        kind=str(r["kind"]),
        received=int(r["received"]),
        expires=int(r["expires"]),
        why=str(r["why"]),
        queued=bool(r["queued"]),
    )


def unpack_results(raw: bytes) -> dict[bytes, str]:
    """Batch results as stored (msgpack map of id to result)."""
    found = msgpack.unpackb(bytes(raw), raw=False)
    return {bytes(k): str(v) for k, v in found.items()}


def answer_of(response: str) -> dict[str, object]:
    """An idempotent answer as stored (JSON text)."""
    answer: dict[str, object] = json.loads(response)
    return answer
