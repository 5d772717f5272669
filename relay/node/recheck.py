"""Re-check of queued envelopes under the config now in force (DESIGN §7 "re-check").

Run at node start, before anything is sent, and after a reload that changed
anything trust or routing depends on (relay.node.reload).

Invariants:
- Every queued envelope is judged again with `check_forward` against the
  hop `[[routes]]` give it now, with the policy and trust in force: a peer's
  jurisdiction is not part of the policy hash, so comparing hashes alone
  would miss a `relay peer update --jurisdiction`, a removed authority or a
  revoked certificate. The check is pure and cheap.
- One that may no longer go there leaves the queue in the same transaction
  that ends it as `rejected` with reason `residency` (status at the origin, a
  receipt to the origin otherwise) and writes its decision row (point
  "recheck"). Its content is deleted unless `content_min_days` still holds
  it; then it is marked, and the purge job deletes it once the minimum has
  passed.
- A relayed envelope signed with a key this node now revokes for its origin
  is ended the same way with reason `signature` (rule RULE_REVOKED_KEY): no
  next hop would accept it.
- One still allowed whose route changed is queued for its new hop, unless
  that hop is already in its trace (it stays where it was queued).
- An envelope this node originated, signed with a key of its own that is now
  revoked, is signed again with the signing key in the same transaction
  (same id; docs/keys.md "Revoke"). Relayed envelopes cannot be.
- A pass in audit mode is not recorded here: the forward point records it
  when the envelope actually goes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from relay.logs import event
from relay.node import retention
from relay.node.decisions import decision_record, refusal
from relay.node.queue_end import Ending, end_queued
from relay.node.state import NodeState
from relay.node.submit import resign
from relay.policy.keyring import revoked_key
from relay.policy.residency import check_forward
from relay.policy.routing import next_hop
from relay.protocol.envelope import Envelope, decode_header
from relay.protocol.keystr import key_id
from relay.storage.interface import WriteTx
from relay.storage.records import Queued

log = logging.getLogger("relay.recheck")

CHUNK = 500
RULE_REVOKED_KEY = "builtin:revoked_key"  # signed with a key revoked for its origin


@dataclass(frozen=True, slots=True)
class RecheckResult:
    checked: int = 0
    older_policy: int = 0  # queued under a policy with another hash
    rejected: int = 0
    content_deleted: int = 0  # of the rejected, content deleted at once
    content_held: int = 0  # of the rejected, content kept by content_min_days
    rerouted: int = 0  # queued for another hop: a route changed
    resigned: int = 0  # originated here under a key since revoked, signed again

    def __add__(self, o: RecheckResult) -> RecheckResult:
        return RecheckResult(
            self.checked + o.checked,
            self.older_policy + o.older_policy,
            self.rejected + o.rejected,
            self.content_deleted + o.content_deleted,
            self.content_held + o.content_held,
            self.rerouted + o.rerouted,
            self.resigned + o.resigned,
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
        rerouted=total.rerouted,
        resigned=total.resigned,
    )
    return total


async def _chunk(state: NodeState, tx: WriteTx, *, after: int) -> tuple[RecheckResult, int]:
    now = state.now_ms()
    items = await tx.queue_page(after, CHUNK)
    own_revoked = {key_id(k) for k in state.config.node.revoked_keys} - {state.key_id}
    older = 0
    endings: list[Ending] = []
    moves: dict[str, list[int]] = {}
    resigned: list[tuple[int, Envelope]] = []
    for it in items:
        older += it.policy_hash != state.policy_hash
        header = decode_header(it.header)
        ending = _revoked_origin_key(state, it, header.key, now)
        if ending is not None:
            endings.append(ending)
            continue
        hop = next_hop(state.config.routes, header.dest)
        if hop in it.trace:
            hop = it.hop  # the new route leads back: keep the one it was accepted for
        decision = check_forward(
            state.policy,
            it.residency.split(","),
            peer=hop,
            peer_jurisdiction=state.trust.jurisdiction(hop),
        )
        if not decision.allowed:
            record = decision_record(
                "recheck", decision, at=now, envelope=it.id, peer=hop, policy_hash=state.policy_hash
            )
            endings.append(Ending(it, "rejected", "residency", decision.reason, record))
            continue
        if hop != it.hop:
            moves.setdefault(hop, []).append(it.rid)
        if it.origin == state.name and header.key in own_revoked:
            resigned.append((it.rid, resign(header, state.key, state.key_id)))
            state.note_resigned(tx, hop)
    await end_queued(tx, state.name, endings, now, by="recheck")
    for hop, rids in moves.items():
        await tx.reroute(rids, hop)
        state.note_hop(tx, hop)
    await tx.resign(resigned)
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
        rerouted=sum(len(rids) for rids in moves.values()),
        resigned=len(resigned),
    )
    return result, (items[-1].rid if items else after)


def _revoked_origin_key(state: NodeState, it: Queued, kid: str, now: int) -> Ending | None:
    """The ending of a relayed envelope signed with a key revoked here for its origin."""
    if it.origin == state.name:
        return None
    revoked = revoked_key(state.config, it.origin, kid)
    if revoked is None:
        return None
    reason = f"signed with {it.origin}'s key {kid!r}, revoked at this node ({revoked})"
    record = decision_record(
        "recheck",
        refusal(RULE_REVOKED_KEY, reason),
        at=now,
        envelope=it.id,
        peer=it.hop,
        policy_hash=state.policy_hash,
    )
    return Ending(it, "rejected", "signature", reason, record)
