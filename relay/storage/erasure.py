"""Erasing a stored message's copy (issue 14, docs/erasure.md): records and the steps.

Invariants:
- An erasure names envelopes of kind `message` by (origin, id). Erasing one
  takes, in one job's transaction: its inbox rows (read or unread, each
  replaced by one unread tombstone per mailbox that reads as "erased"), its
  queue row (it is not sent on; its recipients at the origin end as
  `rejected:erased`), and its content. Content inside the minimum retention
  (`content_min_days`, a legal hold) is kept, marked for retention's discard
  path, and the erasure is `held` until `hold_until`; `settle_erasures`
  turns it `erased` once retention cleared it.
- Each erasure gets one `erasures` row (kept after the envelope's rows are
  purged: it is the audit trail) and one decision row (point `erase`).
- Idempotent: a copy already erased is not touched again; its first record
  is returned (with `fresh` False).
- The steps are written once here (EraseSteps) over a few primitives each
  backend implements (EraseRows), so both backends erase alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from relay.storage.records import DecisionRecord, StatusUpdate
from relay.storage.rowmaps import Row

ERASED = "erased"
HELD = "held"
POINT = "erase"
HOLD_RULE = "retention.content_min_days"
ERASED_REASON = "erased"
SOURCES = ("mailbox", "admin", "peer")


@dataclass(frozen=True, slots=True)
class ErasureTarget:
    """A stored message envelope an erasure may reach."""

    rid: int
    origin: str
    id: bytes
    sender: str
    dest: str
    hop: str | None  # where this node sent (or would send) it on; None: nowhere
    residency: str
    received: int
    expires: int
    has_content: bool  # the payload is still referenced (not yet purged)
    erased: int | None  # when an earlier erasure reached this copy


@dataclass(frozen=True, slots=True)
class EraseOrder:
    """Who asks for an erasure, why, and the hold the node's retention demands."""

    source: str  # one of SOURCES
    actor: str  # the mailbox, "admin", or the node that sent the request
    reason: str
    hold_ms: int  # content_min_days in ms: content younger than this is held


@dataclass(frozen=True, slots=True)
class Erasure:
    """The record of one erasure of one copy (the `erasures` row)."""

    origin: str
    id: bytes
    status: str  # ERASED or HELD
    at: int  # when it was asked here
    done: int  # when the content went; 0 while held
    hold_until: int  # 0 unless it was held
    source: str
    actor: str
    reason: str
    mailboxes: tuple[str, ...] = ()  # inboxes given a tombstone by this call
    fresh: bool = True  # False: an earlier erasure's record, nothing changed now

    def to_json(self) -> dict[str, object]:
        """The record as the admin API, `relay erase` and the audit log show it."""
        return {
            "origin": self.origin,
            "id": self.id.hex(),
            "status": self.status,
            "at": self.at,
            "done": self.done,
            "hold_until": self.hold_until,
            "source": self.source,
            "actor": self.actor,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Stripped:
    """What `strip_copies` took from the envelopes it erased."""

    mailboxes: dict[int, tuple[str, ...]]  # rid -> mailboxes given a tombstone
    dequeued: frozenset[int]  # rids taken out of the outbound queue


class EraseRows(Protocol):
    """The backend primitives EraseSteps is written in (both WriteTx implement them)."""

    async def strip_copies(self, rids: Sequence[int], now: int) -> Stripped:
        """Mark `rids` erased at `now`, replace their inbox rows by tombstones, dequeue them."""
        ...

    async def erasure_records(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], Erasure]:
        """The erasure records of these (origin, id) pairs, where there are any."""
        ...

    async def add_erasures(self, records: Sequence[Erasure]) -> None:
        """Insert erasure records (a pair already recorded keeps its first record)."""
        ...

    async def clear_content(self, rids: Sequence[int]) -> None: ...

    async def mark_discard(self, rids: Sequence[int]) -> None: ...

    async def content_received_before(self, rids: Sequence[int], cut: int) -> dict[int, bytes]: ...

    async def drop_unreferenced_payloads(self, shas: Sequence[bytes]) -> tuple[int, int]: ...

    async def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None: ...

    async def set_status(self, updates: Sequence[StatusUpdate], now: int) -> None: ...


class EraseSteps:
    """`WriteTx.erase`, written once over EraseRows."""

    async def erase(
        self: EraseRows, targets: Sequence[ErasureTarget], order: EraseOrder, now: int
    ) -> list[Erasure]:
        """Erase these copies (see the module's invariants); one record per target."""
        if order.source not in SOURCES:
            raise ValueError(f"unknown erasure source {order.source!r}")
        earlier = await self.erasure_records([(t.origin, t.id) for t in targets])
        todo = [t for t in targets if t.erased is None and (t.origin, t.id) not in earlier]
        held = {t.rid for t in todo if t.has_content and t.received + order.hold_ms > now}
        stripped = await self.strip_copies([t.rid for t in todo], now)
        going = await self.content_received_before([t.rid for t in todo if t.rid not in held], now)
        await self.clear_content(list(going))
        await self.drop_unreferenced_payloads(list(going.values()))
        await self.mark_discard(sorted(held))
        await self.set_status(
            [StatusUpdate(rid, "rejected", ERASED_REASON) for rid in sorted(stripped.dequeued)], now
        )
        out: list[Erasure] = []
        fresh: list[Erasure] = []
        for t in targets:
            old = earlier.get((t.origin, t.id))
            if old is not None:
                out.append(replace(old, fresh=False))
                continue
            if t.erased is not None:  # erased before its record could be kept: say so
                out.append(_unrecorded(t))
                continue
            hold = t.rid in held
            rec = Erasure(
                origin=t.origin,
                id=t.id,
                status=HELD if hold else ERASED,
                at=now,
                done=0 if hold else now,
                hold_until=t.received + order.hold_ms if hold else 0,
                source=order.source,
                actor=order.actor,
                reason=order.reason,
                mailboxes=stripped.mailboxes.get(t.rid, ()),
            )
            out.append(rec)
            fresh.append(rec)
        await self.add_erasures(fresh)
        await self.record_decisions([decision_of(r) for r in fresh])
        return out


def _unrecorded(t: ErasureTarget) -> Erasure:
    erased = t.erased or 0
    return Erasure(t.origin, t.id, ERASED, erased, erased, 0, "", "", "", fresh=False)


def decision_of(rec: Erasure) -> DecisionRecord:
    """The decision row of an erasure (point `erase`), for `relay decisions` and audits."""
    why = f"{rec.source} {rec.actor}: {rec.reason}" if rec.reason else f"{rec.source} {rec.actor}"
    return DecisionRecord(
        at=rec.at,
        point=POINT,
        envelope=rec.id,
        peer=rec.actor if rec.source == "peer" else "",
        outcome=rec.status,
        rule=HOLD_RULE if rec.status == HELD else "",
        reason=why,
        policy_hash="",
    )


# The columns `target_of` reads (alias e: envelopes), the same on both backends.
TARGET_COLS = (
    "e.rid, e.origin, e.id, e.sender, e.dest, e.hop, e.residency, e.received, e.expires,"
    " e.payload_sha IS NOT NULL AS has_content, e.erased"
)
RECORD_COLS = "origin, id, status, at, done, hold_until, source, actor, reason"
# Held erasures whose content retention has cleared (or whose envelope is gone), and
# how each is settled; `:name` parameters, as relay.storage.purge_sql's.
HELD_DONE = (
    f"SELECT {RECORD_COLS} FROM erasures x WHERE x.status = '{HELD}' AND NOT EXISTS"
    " (SELECT 1 FROM envelopes e WHERE e.origin = x.origin AND e.id = x.id"
    " AND e.payload_sha IS NOT NULL) ORDER BY x.hold_until LIMIT :limit"
)
SETTLE = f"UPDATE erasures SET status = '{ERASED}', done = :now WHERE origin = :origin AND id = :id"


def target_of(r: Row) -> ErasureTarget:
    """An ErasureTarget from a row selecting TARGET_COLS."""
    return ErasureTarget(
        rid=int(r["rid"]),
        origin=str(r["origin"]),
        id=bytes(r["id"]),
        sender=str(r["sender"]),
        dest=str(r["dest"]),
        hop=str(r["hop"]) if r["hop"] is not None else None,
        residency=str(r["residency"]),
        received=int(r["received"]),
        expires=int(r["expires"]),
        has_content=bool(r["has_content"]),
        erased=int(r["erased"]) if r["erased"] is not None else None,
    )


def record_of(r: Row) -> Erasure:
    """An Erasure from a row selecting RECORD_COLS."""
    return Erasure(
        origin=str(r["origin"]),
        id=bytes(r["id"]),
        status=str(r["status"]),
        at=int(r["at"]),
        done=int(r["done"]),
        hold_until=int(r["hold_until"]),
        source=str(r["source"]),
        actor=str(r["actor"]),
        reason=str(r["reason"]),
        fresh=False,
    )


def record_row(rec: Erasure) -> tuple[object, ...]:
    """The values of an `erasures` row, in RECORD_COLS order."""
    return (
        rec.origin,
        rec.id,
        rec.status,
        rec.at,
        rec.done,
        rec.hold_until,
        rec.source,
        rec.actor,
        rec.reason,
    )
