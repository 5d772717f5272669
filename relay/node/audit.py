"""The node's side of the audit log (docs/audit.md): tree heads and config entries.

Invariants:
- Entries themselves are appended by the write jobs that do what they record
  (relay.storage.audit); this module only reads them back to sign heads.
- A tree head covers a committed prefix of the log: the leaves are read from
  storage, never from what a job is about to commit, so a head never names
  an entry that a crash could take back.
- The leader signs a head every HEAD_INTERVAL_S and once more when it stops;
  `NodeState.tree_head` is the latest, which the senders carry to peers (the
  tree head extension, docs/protocol.md).
- Beside each head it signs or takes, the process keeps the right edge of its
  tree at that size (one hash per set bit, relay.protocol.merkle.Frontier), so
  the consistency proof a sender sends with a head (Relay-Tree-Proof,
  docs/protocol.md §19) is built from that edge and the entries since, once
  per pair of sizes, and reused for every batch: never from the whole log.
  The frontier only ever stops at head sizes, never between them.
- A config entry is written when the node starts (by worker 0 under
  `--workers N`), before it serves, and after every reload the leader
  applied: the policy hash, the node's keys and the peers it pins with their
  jurisdictions and keys, so an auditor learns from the log
  itself which keys were in force when.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from relay.errors import ProofFailed, RelayError
from relay.logs import event
from relay.node.state import NodeState
from relay.protocol.audit import (
    CONFIG,
    SignedHead,
    TreeHead,
    TreeProof,
    decode_signed_head,
    sign_head,
    tree_proof_header,
)
from relay.protocol.merkle import Frontier, consistency_proof_after
from relay.storage.audit import AuditEvent, StoredHead
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.audit")

HEAD_INTERVAL_S = 60.0
LEAF_PAGE = 50_000  # leaves read per query while catching up
EDGES_KEPT = 1440  # right edges of the latest heads (a day of them), at most 2 KB each
MAX_PROOF_SPAN = 2_000_000  # entries between two heads read to build one proof (64 MB)


class AuditLog:
    """Signs tree heads over the committed log and writes config entries."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self._frontier = Frontier()
        self._lock = asyncio.Lock()
        self._edges: dict[int, tuple[tuple[int, bytes], ...]] = {}  # by head size, oldest first
        self._wanted: set[int] = set()  # head sizes whose edge the frontier keeps on the way
        self._previous: int | None = None  # the size of the head before state.tree_head
        self._proofs: dict[tuple[int, int], str | None] = {}  # (from, to): header value
        self._proof_lock = asyncio.Lock()
        state.prove_head = self.proof_header

    async def _advance(self, to: int | None) -> None:
        """Catch the frontier up to `to` entries (every committed one when None),
        keeping its edge at each wanted head size it passes."""
        async for page in self._leaves(self._frontier.size, to):
            for leaf in page:
                self._frontier.append(leaf)
                if self._frontier.size in self._wanted:
                    self._keep_edge()

    async def _leaves(self, first: int, end: int | None) -> AsyncIterator[list[bytes]]:
        """The leaf hashes of entries `first` <= seq < `end` (every committed one from
        `first` when None), a page of at most LEAF_PAGE per read; stops where the log does."""
        while end is None or first < end:
            stop = first + LEAF_PAGE if end is None else min(first + LEAF_PAGE, end)
            page = await self.state.store.audit_leaves(first, stop)
            if page:
                yield page
            if len(page) < stop - first:
                return
            first = stop

    def _keep_edge(self) -> None:
        self._edges[self._frontier.size] = self._frontier.edge()
        while len(self._edges) > EDGES_KEPT:
            del self._edges[next(iter(self._edges))]

    def _took(self, signed: SignedHead) -> None:
        """`signed` is the head this process sends from now on."""
        st = self.state
        size = signed.head.size
        if st.tree_head is not None and st.tree_head.head.size < size:
            self._previous = st.tree_head.head.size
        st.tree_head = signed
        self._wanted = {s for s in (self._previous, size) if s is not None}
        self._proofs = {k: v for k, v in self._proofs.items() if k[1] == size}

    async def prime(self) -> None:
        """At start: take the latest stored head (peers get it until the next) and
        remember the size of the one before it, the first proofs' starting point."""
        st = self.state
        last = await st.store.latest_tree_head()
        if last is None:
            return
        before = await st.store.latest_tree_head(below=last.size)
        self._previous = before.size if before is not None else None
        self._took(decode_signed_head(last.wire))

    async def warm(self) -> None:
        """After prime, in the background: catch the frontier up to the latest head,
        keeping the edges the first proofs need; batches go without a proof until
        then (one pass over the stored leaves, which the first head needed anyway)."""
        st = self.state
        if st.tree_head is None:
            return
        head = st.tree_head.head
        async with self._lock:
            try:
                await self._advance(head.size)
            except RelayError as e:
                event(log, "tree_head_not_read", logging.WARNING, detail=e.detail)
                return
            log_root = self._frontier.root() if self._frontier.size == head.size else None
        if log_root != head.root:  # say so here, before the peers do
            event(
                log,
                "tree_head_mismatch",
                logging.ERROR,
                size=head.size,
                root=head.root.hex(),
                log_root=log_root.hex() if log_root else "",
                log_size=self._frontier.size,
                detail="the stored log does not match the last head this node signed: entries"
                " were changed or lost since (a restore from another copy?); peers that"
                " kept that head will find the next one forked",
            )

    async def sign(self) -> SignedHead:
        """Sign and keep a head over the log as committed now."""
        st = self.state
        async with self._lock:
            await self._advance(None)
            head = TreeHead(
                node=st.name,
                size=self._frontier.size,
                root=self._frontier.root(),
                at=st.now_ms(),
                key=st.key_id,
            )
            signed = sign_head(head, st.key)
            stored = StoredHead(head.size, head.at, signed.wire())

            async def job(tx: WriteTx) -> None:
                await tx.save_tree_head(stored)

            await st.store.write(job)
            self._keep_edge()
            self._took(signed)
        event(log, "tree_head_signed", logging.DEBUG, size=head.size, root=head.root.hex()[:16])
        return signed

    async def proof_header(self, signed: SignedHead, from_size: int | None) -> str | None:
        """The Relay-Tree-Proof value that `signed` extends this node's head of
        `from_size` entries (the head before the latest when None); None when the
        sizes need none or the proof cannot be built from what is kept."""
        m = self._previous if from_size is None else from_size
        n = signed.head.size
        if m is None or not 0 < m < n:
            return None
        if (m, n) in self._proofs:
            return self._proofs[(m, n)]
        edge = self._edges.get(m)
        if edge is None:  # not reached yet (catching up at start), or too old to keep
            return None
        async with self._proof_lock:
            if (m, n) not in self._proofs:
                self._proofs[(m, n)] = await self._build(m, n, edge)
        return self._proofs.get((m, n))

    async def _build(self, m: int, n: int, edge: tuple[tuple[int, bytes], ...]) -> str | None:
        if n - m > MAX_PROOF_SPAN:
            event(
                log,
                "tree_proof_skipped",
                logging.INFO,
                from_size=m,
                size=n,
                detail=f"over {MAX_PROOF_SPAN} entries between the two heads",
            )
            return None
        try:
            tail = [leaf async for page in self._leaves(m, n) for leaf in page]
            if len(tail) != n - m:
                raise ProofFailed(
                    f"the log holds {m + len(tail)} entries, fewer than the head's {n}"
                )
            proof = TreeProof(m, tuple(consistency_proof_after(edge, tail)))
        except RelayError as e:  # the batch goes without; the next head is another chance
            event(log, "tree_proof_failed", logging.WARNING, from_size=m, size=n, detail=e.detail)
            return None
        return tree_proof_header(proof)

    async def run(self) -> None:
        """Sign a head every HEAD_INTERVAL_S until cancelled (the last one before
        this started was signed when the node last stopped)."""
        while not self.state.stopping:
            await asyncio.sleep(HEAD_INTERVAL_S)
            try:
                await self.sign()
            except RelayError as e:
                event(log, "tree_head_failed", logging.ERROR, detail=e.detail)

    async def follow(self) -> None:
        """Under `--workers N`: a worker that does not lead takes the leader's latest
        head from storage every HEAD_INTERVAL_S, so its batches carry it too."""
        st = self.state
        while not st.stopping:
            await asyncio.sleep(HEAD_INTERVAL_S)
            if st.leading:
                continue
            try:
                last = await st.store.latest_tree_head()
            except RelayError as e:
                event(log, "tree_head_not_read", logging.WARNING, detail=e.detail)
                continue
            if last is None or (st.tree_head is not None and st.tree_head.wire() == last.wire):
                continue
            self._took(decode_signed_head(last.wire))
            async with self._lock:
                try:
                    await self._advance(last.size)
                except RelayError as e:
                    event(log, "tree_head_not_read", logging.WARNING, detail=e.detail)

    async def log_config(self, reason: str) -> None:
        """Append a config entry: what the node runs under from now on."""
        st = self.state
        cfg = st.config
        peers = tuple(
            " ".join((p.name, p.jurisdiction, *p.keys))
            for p in sorted(cfg.peers, key=lambda p: p.name)
        )
        entry = AuditEvent(
            st.now_ms(),
            CONFIG,
            {
                "reason": reason,
                "node": st.name,
                "jurisdiction": cfg.node.jurisdiction,
                "policy": st.policy_hash,
                "mode": st.policy.mode,
                "key": st.key_string,
                "retired": tuple(r.key for r in cfg.node.retired_keys),
                "revoked": tuple(cfg.node.revoked_keys),
                "peers": peers,
            },
        )

        async def job(tx: WriteTx) -> None:
            await tx.append_audit([entry])

        await st.store.write(job)
