"""Re-check of queued envelopes under the policy now in force (DESIGN §7 "re-check").

Run at node start, before anything is sent, and after a reload.

Invariants:
- Every queued envelope is judged again with `check_forward` against its next
  hop, with the policy and pinned trust in force: a peer's jurisdiction is
  not part of the policy hash, so comparing hashes alone would miss a
  `relay peer update --jurisdiction`. The check is pure and cheap.
- One that may no longer go there leaves the queue in the same transaction
  that ends it as `rejected` with reason `residency` (status at the origin, a
  receipt to the origin otherwise) and writes its decision row (point
  "recheck"). Its content is deleted unless `content_min_days` still holds
  it; then it is marked, and the purge job deletes it once the minimum has
  passed.
- A pass in audit mode is not recorded here: the forward point records it
  when the envelope actually goes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from relay.federation.outbound import end_queued
from relay.logs import event
from relay.node import retention
from relay.node.state import NodeState
from relay.policy.residency import check_forward
from relay.storage.sqlite import ledger
from relay.storage.sqlite.store import Tx

log = logging.getLogger("relay.recheck")

CHUNK = 500


@dataclass(frozen=True, slots=True)
class RecheckResult:
    checked: int = 0
    older_policy: int = 0  # queued under a policy with another hash
    rejected: int = 0
    content_deleted: int = 0  # of the rejected, content deleted at once
    content_held: int = 0  # of the rejected, content kept by content_min_days

    def __add__(self, o: RecheckResult) -> RecheckResult:
        return RecheckResult(
            self.checked + o.checked,
            self.older_policy + o.older_policy,
            self.rejected + o.rejected,
            self.content_deleted + o.content_deleted,
            self.content_held + o.content_held,
        )


async def recheck(state: NodeState) -> RecheckResult:
    """Judge every queued envelope again; end those no longer allowed to their hop."""
    total = RecheckResult()
    after = 0
    while True:
        part, after = await state.store.write(functools.partial(_chunk, state, after=after))
        total += part
        if part.checked < CHUNK:
            break
    event(
        log,
        "recheck",
        policy_hash=state.policy_hash,
        checked=total.checked,
        older_policy=total.older_policy,
        rejected=total.rejected,
        content_deleted=total.content_deleted,
        content_held=total.content_held,
    )
    return total


async def _chunk(state: NodeState, tx: Tx, *, after: int) -> tuple[RecheckResult, int]:
    now = state.now_ms()
    async with tx.execute(
        "SELECT q.rid, q.hop, e.header, e.signature, e.trace, e.kind, e.origin, e.id,"
        " e.expires, q.enqueued, q.attempts, e.residency, e.policy_hash"
        " FROM queue q JOIN envelopes e ON e.rid = q.rid WHERE q.rid > ?"
        " ORDER BY q.rid LIMIT ?",
        (after, CHUNK),
    ) as cur:
        rows = list(await cur.fetchall())
    older = 0
    denied: list[int] = []
    for r in rows:
        it = ledger.queued_from(r[0], r[2:12])
        hop: str = r[1]
        older += r[12] != state.policy_hash
        decision = check_forward(
            state.policy,
            it.residency.split(","),
            peer=hop,
            peer_jurisdiction=state.trust.jurisdiction(hop),
        )
        if decision.allowed:
            continue
        denied.append(it.rid)
        await ledger.dequeue(tx, [it.rid])
        await end_queued(tx, state.name, it, "rejected", "residency", now)
        await ledger.record_decision(
            tx,
            at=now,
            point="recheck",
            envelope=it.id,
            peer=hop,
            outcome="deny",
            rule=decision.rule,
            reason=decision.reason,
            policy_hash=state.policy_hash,
        )
        event(
            log,
            "envelope_ended",
            logging.WARNING,
            peer=hop,
            envelope=it.id,
            origin=it.origin,
            status="rejected",
            reason="residency",
            rule=decision.rule,
            detail=decision.reason,
        )
    dropped = await retention.drop_content(
        tx, denied, state.config.retention, now, source="recheck"
    )
    result = RecheckResult(
        checked=len(rows),
        older_policy=older,
        rejected=len(denied),
        content_deleted=dropped.contents,
        content_held=len(denied) - dropped.contents,
    )
    return result, (rows[-1][0] if rows else after)
