"""Ending queued envelopes that will not be delivered: the one place it is done.

Every path that takes an envelope out of the queue without delivering it
(the sender, the expiry sweep, the policy re-check, retention, an admin's
delete) calls `end_queued` inside its write job.

Invariants:
- The queue row leaves in the same transaction that records the outcome:
  at the origin (`here`) the recipients' final status, for a relayed
  message a pending receipt to its origin. A receipt never gets a receipt.
- A refusal by policy writes its decision row in that transaction too.
- Each ended envelope is logged once, as `envelope_ended`, with who ended it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from relay.logs import event
from relay.protocol.envelope import decode_header
from relay.storage.interface import WriteTx
from relay.storage.records import DecisionRecord, PendingReceipt, Queued, StatusUpdate

log = logging.getLogger("relay.queue")


@dataclass(frozen=True, slots=True)
class Ending:
    """How one queued envelope ends: `status` ("expired" or "rejected") with `reason`
    (the stored reason code), a human `detail` for the log, and the policy
    decision that refused it, if one did."""

    item: Queued
    status: str
    reason: str
    detail: str = ""
    decision: DecisionRecord | None = None

    @property
    def rule(self) -> str:
        """The policy rule that refused it, "" if none did."""
        return self.decision.rule if self.decision is not None else ""


async def end_queued(
    tx: WriteTx, here: str, endings: Sequence[Ending], now: int, *, by: str
) -> None:
    """Dequeue `endings` and record each one's final outcome (see the module invariants).

    `here` is this node's name; `by` names the path that ended them in the log.
    """
    if not endings:
        return
    await tx.dequeue([e.item.rid for e in endings])
    statuses: list[StatusUpdate] = []
    receipts: list[PendingReceipt] = []
    ended_requests: list[DecisionRecord] = []
    for e in endings:
        it = e.item
        if it.kind == "erasure":  # the origin's status shows it (relay.node.erasure)
            ended_requests.append(
                DecisionRecord(now, "erase", it.id, it.hop, e.status, "", e.reason, "")
            )
        if it.kind != "message":
            continue
        if it.origin == here:
            statuses.append(StatusUpdate(it.rid, e.status, e.reason))
        else:
            receipts.append(
                PendingReceipt(
                    origin=it.origin,
                    status=e.status,
                    reason=e.reason,
                    residency=it.residency,
                    id=it.id,
                    recipients=decode_header(it.header).to,
                )
            )
    await tx.set_status(statuses, now)
    await tx.add_pending_receipts(receipts, now)
    await tx.record_decisions([e.decision for e in endings if e.decision is not None])
    await tx.record_decisions(ended_requests)
    for e in endings:
        extra = {"detail": e.detail} if e.detail else {}
        if e.rule:
            extra["rule"] = e.rule
        event(
            log,
            "envelope_ended",
            logging.WARNING,
            peer=e.item.hop,
            envelope=e.item.id,
            origin=e.item.origin,
            status=e.status,
            reason=e.reason,
            attempts=e.item.attempts,
            by=by,
            **extra,
        )
