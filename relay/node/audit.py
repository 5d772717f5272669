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
- A config entry is written when the node starts (by worker 0 under
  `--workers N`), before it serves, and after every reload the leader
  applied: the policy hash, the node's keys and the peers it pins with their
  jurisdictions and keys, so an auditor learns from the log
  itself which keys were in force when.
"""

from __future__ import annotations

import asyncio
import logging

from relay.errors import RelayError
from relay.logs import event
from relay.node.state import NodeState
from relay.protocol.audit import CONFIG, SignedHead, TreeHead, decode_signed_head, sign_head
from relay.protocol.merkle import Frontier
from relay.storage.audit import AuditEvent, StoredHead
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.audit")

HEAD_INTERVAL_S = 60.0
LEAF_PAGE = 50_000  # leaves read per query while catching up


class AuditLog:
    """Signs tree heads over the committed log and writes config entries."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self._frontier = Frontier()
        self._lock = asyncio.Lock()

    async def _catch_up(self) -> None:
        while True:
            size = self._frontier.size
            leaves = await self.state.store.audit_leaves(size, size + LEAF_PAGE)
            for leaf in leaves:
                self._frontier.append(leaf)
            if len(leaves) < LEAF_PAGE:
                return

    async def sign(self) -> SignedHead:
        """Sign and keep a head over the log as committed now."""
        st = self.state
        async with self._lock:
            await self._catch_up()
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
            st.tree_head = signed
        event(log, "tree_head_signed", logging.DEBUG, size=head.size, root=head.root.hex()[:16])
        return signed

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
            if last is not None:
                st.tree_head = decode_signed_head(last.wire)

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
