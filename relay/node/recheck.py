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

from relay.logs import event
from relay.node import retention
from relay.node.decisions import decision_record
from relay.node.queue_end import Ending, end_queued
from relay.node.state import NodeState
from relay.policy.residency import check_forward
from relay.storage.interface import WriteTx

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


async def _chunk(state: NodeState, tx: WriteTx, *, after: int) -> tuple[RecheckResult, int]:
    now = state.now_ms()
    items = await tx.queue_page(after, CHUNK)
    older = 0
    endings: list[Ending] = []
    for it in items:
        older += it.policy_hash != state.policy_hash
        decision = check_forward(
            state.policy,
            it.residency.split(","),
            peer=it.hop,
            peer_jurisdiction=state.trust.jurisdiction(it.hop),
        )
        if decision.allowed:
            continue
        record = decision_record(
            "recheck", decision, at=now, envelope=it.id, peer=it.hop, policy_hash=state.policy_hash
        )
        endings.append(Ending(it, "rejected", "residency", decision.reason, record))
    await end_queued(tx, state.name, endings, now, by="recheck")
    denied = [e.item.rid for e in endings]
    dropped = await retention.drop_content(
        tx, denied, state.config.retention, now, source="recheck"
    )
    result = RecheckResult(
        checked=len(items),
        older_policy=older,
        rejected=len(denied),
        content_deleted=dropped.contents,
        content_held=len(denied) - dropped.contents,
    )
    return result, (items[-1].rid if items else after)
