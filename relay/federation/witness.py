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
  often): the last header value per peer is remembered in memory, with the
  proof value checked with it. The same head again costs nothing unless it
  comes with another proof (the sender had none ready for its first batches
  after a start): then the proof is checked and its outcome filled in.
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
    again = seen is not None and seen[0] == value  # the head is kept: only a new proof counts
    if value is None or (again and proof_value in (None, seen[1] if seen else None)):
        return
    try:
        signed = _check(peer, value)
    except (MalformedError, ProofFailed) as e:
        event(log, "tree_head_refused", logging.WARNING, peer=peer.name, detail=e.detail)
        state.metrics.tree_head(peer.name, "refused")
        state.witnessed[peer.name] = (value, proof_value)  # said once, not per batch
        return
    head = signed.head
    try:
        kept = [
            decode_signed_head(w.wire).head for w in await state.store.witnessed_heads(peer.name)
        ]
        outcome = _compare(peer.name, head, kept)
        proof_from, proof = _prove(peer.name, head, kept, proof_value)
        row = WitnessedHead(
            peer.name, head.size, head.at, signed.wire(), state.now_ms(), proof_from, proof
        )

        async def job(tx: WriteTx) -> None:
            await tx.save_witnessed([row])

        await state.store.write(job)
    except RelayError as e:  # the batch goes on; the next head is another chance
        event(log, "tree_head_not_kept", logging.WARNING, peer=peer.name, detail=e.detail)
        return
    state.witnessed[peer.name] = (value, proof_value)
    if proof == PROOF_FORKED or (proof and outcome == "unproven"):
        outcome = proof  # a failed proof says most; a good one makes a larger head proven
    if not again or proof:
        state.metrics.tree_head(peer.name, outcome)


def _compare(peer: str, head: TreeHead, kept: Sequence[TreeHead]) -> str:
    """What `head` shows against the last head kept, alone: "conflict", "shrank" or
    "unproven" (a larger head needs a proof)."""
    last = max(kept, key=lambda h: (h.size, h.at), default=None)
    if last is not None and head.size == last.size and head.root != last.root:
        event(
            log,
            "tree_head_conflict",
            logging.ERROR,
            peer=peer,
            size=head.size,
            root=head.root.hex(),
            earlier_root=last.root.hex(),
            detail="two tree heads of one size with different roots: the peer's log forked",
        )
        return "conflict"
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
        return "shrank"
    return "unproven"


def _prove(
    peer: str, head: TreeHead, kept: Sequence[TreeHead], value: str | None
) -> tuple[int | None, str]:
    """(from_size, outcome) of the Relay-Tree-Proof `value` for `head`: PROOF_CONSISTENT
    or PROOF_FORKED against the kept head of from_size entries; (None, "") when no
    proof came or it cannot be checked (logged)."""
    if value is None:
        return None, ""
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
        return None, ""
    earlier = [h for h in kept if h.size == proof.from_size]
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
