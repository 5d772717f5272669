"""Witnessing peers' audit logs (docs/audit.md, docs/protocol.md §19).

A sender puts its latest signed tree head in the optional `Relay-Tree-Head`
header of each batch; the receiver keeps every new head it sees from each
peer, so that an auditor can later hold the peer's log to them
(`relay audit heads DIR --peer NAME`, then `relay audit verify --witness`).

Invariants:
- The extension never changes a batch's fate: a head that is garbled, names
  another node or does not verify under the peer's trusted keys is logged
  (`tree_head_refused`) and ignored; the batch is judged as without it.
- Only a head that differs from the last one kept for that peer costs a
  signature check and a write (heads change once a minute, batches far more
  often): the last header value per peer is remembered in memory.
- What one head can show against the last is reported at once: the same size
  with another root (`tree_head_conflict`: two histories), or a smaller size
  (`tree_head_shrank`). Whether a larger head extends the last one needs a
  consistency proof from the peer's log; the auditor checks that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from relay.errors import MalformedError, ProofFailed, RelayError
from relay.logs import event
from relay.node.state import NodeState
from relay.policy.trust import TrustedNode
from relay.protocol.audit import (
    TREE_HEAD_HEADER,
    SignedHead,
    decode_signed_head,
    parse_tree_head_header,
    verify_head,
)
from relay.storage.audit import WitnessedHead
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.witness")


def _check(peer: TrustedNode, value: str) -> SignedHead:
    signed = parse_tree_head_header(value)
    head = signed.head
    if head.node != peer.name:
        raise ProofFailed(f"the tree head is {head.node}'s, not the sender's")
    pub = peer.keys.get(head.key)
    if pub is None:
        raise ProofFailed(f"the tree head is signed with key {head.key}, not one trusted for it")
    verify_head(signed, pub)
    return signed


async def observe(state: NodeState, peer: TrustedNode, headers: Mapping[str, str]) -> None:
    """Keep the tree head `peer` sent in `headers`, if it is new and checks out."""
    value = headers.get(TREE_HEAD_HEADER)
    if value is None or state.witnessed.get(peer.name) == value:
        return
    try:
        signed = _check(peer, value)
    except (MalformedError, ProofFailed) as e:
        event(log, "tree_head_refused", logging.WARNING, peer=peer.name, detail=e.detail)
        state.witnessed[peer.name] = value  # said once, not per batch
        return
    head = signed.head
    try:
        kept = await state.store.witnessed_heads(peer.name)
        heads = [decode_signed_head(w.wire).head for w in kept]
        last = max(heads, key=lambda h: (h.size, h.at), default=None)
        if last is not None and head.size == last.size and head.root != last.root:
            event(
                log,
                "tree_head_conflict",
                logging.ERROR,
                peer=peer.name,
                size=head.size,
                root=head.root.hex(),
                earlier_root=last.root.hex(),
                detail="two tree heads of one size with different roots: the peer's log forked",
            )
        elif last is not None and head.size < last.size:
            event(
                log,
                "tree_head_shrank",
                logging.ERROR,
                peer=peer.name,
                size=head.size,
                earlier_size=last.size,
                detail="the peer's log is smaller than a head it sent before",
            )
        row = WitnessedHead(peer.name, head.size, head.at, signed.wire(), state.now_ms())

        async def job(tx: WriteTx) -> None:
            await tx.save_witnessed([row])

        await state.store.write(job)
    except RelayError as e:  # the batch goes on; the next head is another chance
        event(log, "tree_head_not_kept", logging.WARNING, peer=peer.name, detail=e.detail)
        return
    state.witnessed[peer.name] = value
