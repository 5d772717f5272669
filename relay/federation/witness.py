"""Witnessing peers' audit logs (docs/audit.md, docs/protocol.md §19).

A sender puts its latest signed tree head in the optional `Relay-Tree-Head`
header of each batch; the receiver keeps every new head it sees from each
peer, so that an auditor can later hold the peer's log to them
(`relay audit heads DIR --peer NAME`, then `relay audit verify --witness`).

Invariants:
- The extension never changes a batch's fate: a head that is garbled, names
  another node or does not verify under the peer's trusted keys is logged
  (`tree_head_refused`) and ignored; the batch is judged as without it.
- Only a head that differs from the last one seen from that peer costs a
  signature check and a few reads by key (heads change once a minute,
  batches far more often): the last header value per peer is remembered in
  memory, with the proof value checked with it. A head kept before (a
  sender's workers take turns carrying the leader's heads) is not reported
  or counted again, and is written again only when it now comes with a proof
  (the sender had none ready for its first batches after a start): its
  outcome is filled in.
- What one head can show against the last is reported at once: the same size
  with another root (`tree_head_conflict`: two histories), or a smaller size
  (`tree_head_shrank`).
- Whether a larger head extends a kept one takes a consistency proof from the
  peer's log: the peer may send it (`Relay-Tree-Proof`), from the size of a
  head it sent before. It is checked against every kept head of that size when
  the new head is kept; success records the head as consistent with it, a
  failure is `tree_head_forked` (the peer's own proof shows its log does not
  extend what it signed). A proof that does not decode, or from a size never
  kept, is logged and the head kept unproven; it never touches the batch.
  Without a proof, the auditor checks (`relay audit verify --witness`).
- Each new head counts once in `relay_tree_heads_total{peer, outcome}`, and
  once more if a proof for it arrives after it was kept.
- The reads are by the key of audit_witnessed (peer, size): the heads of the
  new head's size, of the proof's from_size, and the largest; never every
  head kept from the peer.
- A head that contradicts a kept one (conflict, shrank, forked) is kept with
  that head's size (`evidence`): retention never prunes either of the pair
  (relay.node.retention), nor a peer's last head. The last head seen, the
  only one the next head is compared with alone, is in storage, so a restart
  forgets nothing a fork is found by; the in-memory `state.witnessed` only
  spares re-checking a header value seen just before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from relay.errors import MalformedError, ProofFailed, RelayError
from relay.logs import event
from relay.node.state import NodeState
from relay.policy.trust import TrustedNode
from relay.protocol.audit import (
    TREE_HEAD_HEADER,
    TREE_PROOF_HEADER,
    SignedHead,
    TreeHead,
    TreeProof,
    decode_signed_head,
    parse_tree_head_header,
    parse_tree_proof_header,
    verify_head,
)
from relay.protocol.merkle import verify_consistency
from relay.storage.audit import PROOF_CONSISTENT, PROOF_FORKED, WitnessedHead
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
    """Keep the tree head `peer` sent in `headers`, if it is new and checks out, with
    what the consistency proof sent beside it (if any) showed."""
    value = headers.get(TREE_HEAD_HEADER)
    proof_value = headers.get(TREE_PROOF_HEADER)
    seen = state.witnessed.get(peer.name)
    if value is None or (seen is not None and seen[0] == value and proof_value in (None, seen[1])):
        return
    try:
        signed = _check(peer, value)
    except (MalformedError, ProofFailed) as e:
        event(log, "tree_head_refused", logging.WARNING, peer=peer.name, detail=e.detail)
        state.metrics.tree_head(peer.name, "refused")
        state.witnessed[peer.name] = (value, proof_value)  # said once, not per batch
        return
    head = signed.head
    store = state.store
    try:
        rows = await store.witnessed_heads(peer.name, head.size)
        same_size = [_head(w) for w in rows]
        # Sent again (a sender's workers take turns): only a first proof is news.
        kept = head in same_size
        if kept and rows[same_size.index(head)].proof:
            state.witnessed[peer.name] = (value, proof_value)
            return
        outcome, against = (
            ("unproven", None) if kept else await _compare(state, peer.name, head, same_size)
        )
        proof = _parse_proof(peer.name, head, proof_value)
        earlier = [] if proof is None else await store.witnessed_heads(peer.name, proof.from_size)
        proof_from, proven = _prove(peer.name, head, proof, [_head(w) for w in earlier])
        if kept and not proven:
            state.witnessed[peer.name] = (value, proof_value)
            return
        if proven == PROOF_FORKED and against is None:
            against = proof_from
        row = WitnessedHead(
            peer.name,
            head.size,
            head.at,
            signed.wire(),
            state.now_ms(),
            proof_from,
            proven,
            against,
        )

        async def job(tx: WriteTx) -> None:
            await tx.save_witnessed([row])

        await store.write(job)
    except RelayError as e:  # the batch goes on; the next head is another chance
        event(log, "tree_head_not_kept", logging.WARNING, peer=peer.name, detail=e.detail)
        return
    state.witnessed[peer.name] = (value, proof_value)
    if proven == PROOF_FORKED or (proven and outcome == "unproven"):
        outcome = proven  # a failed proof says most; a good one makes a larger head proven
    state.metrics.tree_head(peer.name, outcome)


def _head(w: WitnessedHead) -> TreeHead:
    return decode_signed_head(w.wire).head


async def _compare(
    state: NodeState, peer: str, head: TreeHead, same_size: Sequence[TreeHead]
) -> tuple[str, int | None]:
    """What a head not kept before shows against those kept, alone: "conflict" (another
    root of its size), "shrank" (a larger one was kept) or "unproven" (a larger head
    than any kept needs a proof); with the size of the kept head it contradicts."""
    other = next((h for h in same_size if h.root != head.root), None)
    if other is not None:
        event(
            log,
            "tree_head_conflict",
            logging.ERROR,
            peer=peer,
            size=head.size,
            root=head.root.hex(),
            earlier_root=other.root.hex(),
            detail="two tree heads of one size with different roots: the peer's log forked",
        )
        return "conflict", head.size
    last = await state.store.last_witnessed(peer)
    if last is not None and head.size < last.size:
        event(
            log,
            "tree_head_shrank",
            logging.ERROR,
            peer=peer,
            size=head.size,
            earlier_size=last.size,
            detail="the peer's log is smaller than a head it sent before",
        )
        return "shrank", last.size
    return "unproven", None


def _parse_proof(peer: str, head: TreeHead, value: str | None) -> TreeProof | None:
    """The Relay-Tree-Proof `value` sent with `head`, if any and well formed (logged if not)."""
    if value is None:
        return None
    try:
        proof = parse_tree_proof_header(value)
        if proof.from_size >= head.size:
            raise MalformedError(
                f"{TREE_PROOF_HEADER}: from_size {proof.from_size} is not below"
                f" the head's size {head.size}"
            )
    except MalformedError as e:
        event(
            log, "tree_proof_refused", logging.WARNING, peer=peer, size=head.size, detail=e.detail
        )
        return None
    return proof


def _prove(
    peer: str, head: TreeHead, proof: TreeProof | None, earlier: Sequence[TreeHead]
) -> tuple[int | None, str]:
    """(from_size, outcome) of `proof` for `head`: PROOF_CONSISTENT or PROOF_FORKED
    against the `earlier` heads kept of its from_size; (None, "") when there is no
    proof or none of that size was kept (logged)."""
    if proof is None:
        return None, ""
    if not earlier:
        event(
            log,
            "tree_proof_unmatched",
            logging.INFO,
            peer=peer,
            size=head.size,
            from_size=proof.from_size,
            detail="no head of that size was kept from the peer: the new head is kept unproven",
        )
        return None, ""
    failed: list[tuple[TreeHead, str]] = []
    for old in earlier:  # one, unless the peer already showed two roots of that size
        try:
            verify_consistency(old.size, head.size, old.root, head.root, proof.hashes)
        except ProofFailed as e:
            failed.append((old, e.detail))
        else:
            return old.size, PROOF_CONSISTENT
    old, why = failed[-1]
    event(
        log,
        "tree_head_forked",
        logging.ERROR,
        peer=peer,
        size=head.size,
        root=head.root.hex(),
        from_size=old.size,
        earlier_root=old.root.hex(),
        rule="relay-tree-proof",
        detail=f"{why}; both heads are kept as evidence (relay audit heads --peer)",
    )
    return old.size, PROOF_FORKED
