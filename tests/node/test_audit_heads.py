"""relay.node.audit on a NodeState alone: heads over the committed log, a worker that
does not lead following the leader's head, and config entries."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.errors import ProofFailed
from relay.node import audit, queueops
from relay.node.audit import AuditLog
from relay.node.state import NodeState
from relay.protocol.audit import (
    CONFIG,
    DELETED,
    SignedHead,
    TreeProof,
    decode_entry,
    decode_signed_head,
    parse_tree_proof_header,
    verify_head,
)
from relay.protocol.merkle import EMPTY_ROOT, leaf_hash, root, verify_consistency
from relay.storage.audit import AuditEvent
from relay.storage.backends import open_storage
from relay.storage.interface import Storage, WriteTx
from tests.federation.conftest import lone_node, write_node_toml
from tests.storage.contract import envelope, new, put


async def test_heads_cover_the_log_and_a_follower_takes_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = write_node_toml(tmp_path, peers=[])
    config = load_config(tmp_path)
    storage = await open_storage(config.node.database)
    try:
        leader = AuditLog(NodeState(config, key, storage))
        empty = await leader.sign()
        assert (empty.head.size, empty.head.root) == (0, EMPTY_ROOT)

        await leader.log_config("start")
        await storage.write(
            lambda tx: tx.append_audit([AuditEvent(1, "purged", {"source": "t"})] * 3)
        )
        signed = await leader.sign()
        verify_head(signed, key.public_key())
        assert signed.head.size == 4
        assert signed.head.root == root(await storage.audit_leaves(0, 4))
        (cfg,) = [decode_entry(r.entry) for r in await storage.audit_entries(0, 1)]
        assert (cfg.kind, cfg.text("reason"), cfg.text("node")) == (CONFIG, "start", "n.test")

        follower_state = NodeState(config, key, storage)
        follower_state.leading = False
        monkeypatch.setattr(audit, "HEAD_INTERVAL_S", 0.01)
        task = asyncio.create_task(AuditLog(follower_state).follow())
        for _ in range(500):
            if follower_state.tree_head is not None:
                break
            await asyncio.sleep(0.01)
        follower_state.stopping = True
        await task
        assert follower_state.tree_head == decode_signed_head(signed.wire())
    finally:
        await storage.close()


async def test_an_admin_delete_is_logged_with_the_ids(tmp_path: Path) -> None:
    async with lone_node(tmp_path) as state:
        storage = state.store
        env = envelope(origin="n.test", to=["bob@b.test"], dest="b.test")
        await put(storage, [new(env, hop="b.test", from_peer=None)])
        result = await queueops.delete(state, [env.header.id, b"\x00" * 16])
        assert result.changed == 1
        logged = [decode_entry(r.entry) for r in await storage.audit_entries(0, 100)]
        assert [e.kind for e in logged] == ["stored", DELETED, "purged"]  # content went at once
        last = logged[1]
        assert (last.kind, last.text("by"), last.text("reason")) == (
            DELETED,
            "admin",
            queueops.DELETED_REASON,
        )
        assert last.fields["envelopes"] == (env.header.id,)


def purges(n: int) -> list[AuditEvent]:
    return [AuditEvent(1, "purged", {"source": f"t{i}"}) for i in range(n)]


async def heads_after(storage: Storage, signer: AuditLog, *counts: int) -> list[SignedHead]:
    """For each of `counts`: append that many entries, then sign a head."""
    heads = []
    for n in counts:

        async def job(tx: WriteTx, n: int = n) -> None:
            await tx.append_audit(purges(n))

        await storage.write(job)
        heads.append(await signer.sign())
    return heads


async def proven(state: NodeState, signed: SignedHead, from_size: int | None) -> TreeProof:
    value = await state.prove_head(signed, from_size)
    assert value is not None
    return parse_tree_proof_header(value)


async def test_a_sender_proves_each_head_from_an_earlier_one_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Proofs from the previous head (or a given one) verify against the heads signed
    then, are built once per pair, survive a restart (the edges are rebuilt in the
    background), and show a log rewritten under a stopped node."""
    key = write_node_toml(tmp_path, peers=[])
    config = load_config(tmp_path)
    storage = await open_storage(config.node.database)
    try:
        state = NodeState(config, key, storage)
        signer = AuditLog(state)
        s3, s8 = await heads_after(storage, signer, 3, 5)
        p = await proven(state, s8, None)  # no peer yet: from the head before
        assert p.from_size == 3
        verify_consistency(3, 8, s3.head.root, s8.head.root, p.hashes)
        reads = 0
        real = storage.audit_leaves

        async def counting(first: int, end: int) -> list[bytes]:
            nonlocal reads
            reads += 1
            return await real(first, end)

        monkeypatch.setattr(storage, "audit_leaves", counting)
        for _ in range(3):
            assert await proven(state, s8, 3) == p  # built once, reused per batch
        assert reads == 0
        assert await state.prove_head(s8, 8) is None  # the peer has this head
        assert await state.prove_head(s8, 2) is None  # no head of 2 was signed here
        monkeypatch.undo()
    finally:
        await storage.close()

    storage = await open_storage(config.node.database)  # a restart
    try:
        state = NodeState(config, key, storage)
        signer = AuditLog(state)
        await signer.prime()
        assert state.tree_head == s8
        await signer.warm()
        p = await proven(state, s8, None)
        verify_consistency(3, 8, s3.head.root, s8.head.root, p.hashes)
        assert not [r for r in caplog.records if r.getMessage() == "tree_head_mismatch"]
        await storage.write(lambda tx: tx.append_audit(purges(7)))
        s15 = await signer.sign()
        p = await proven(state, s15, 8)
        verify_consistency(8, 15, s8.head.root, s15.head.root, p.hashes)
    finally:
        await storage.close()

    con = sqlite3.connect(config.node.database)  # entry 1 rewritten, node stopped
    con.execute("UPDATE audit_log SET leaf = ? WHERE seq = 1", (leaf_hash(b"rewritten"),))
    con.commit()
    con.close()
    storage = await open_storage(config.node.database)
    try:
        state = NodeState(config, key, storage)
        signer = AuditLog(state)
        await signer.prime()
        assert not [r for r in caplog.records if r.getMessage() == "tree_head_mismatch"]
        await signer.warm()
        (said,) = [r for r in caplog.records if r.getMessage() == "tree_head_mismatch"]
        assert dict(getattr(said, "relay_fields", {}))["size"] == 15
        await storage.write(lambda tx: tx.append_audit(purges(2)))
        s17 = await signer.sign()
        p = await proven(state, s17, 15)  # what the peer that kept s15 gets
        with pytest.raises(ProofFailed, match="earlier root"):
            verify_consistency(15, 17, s15.head.root, s17.head.root, p.hashes)
    finally:
        await storage.close()


async def test_heads_and_proofs_read_the_log_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pages of two leaves, a head over eight entries and the proof from three
    to eight each read several pages, and come out as from one read."""
    monkeypatch.setattr(audit, "LEAF_PAGE", 2)
    pages: list[tuple[int, int]] = []
    async with lone_node(tmp_path) as state:
        storage = state.store
        real = storage.audit_leaves

        async def counting(first: int, end: int) -> list[bytes]:
            pages.append((first, end))
            return await real(first, end)

        signer = AuditLog(state)
        monkeypatch.setattr(storage, "audit_leaves", counting)
        s3, s8 = await heads_after(storage, signer, 3, 5)
        # a short page is where the log ends
        assert pages == [(0, 2), (2, 4), (3, 5), (5, 7), (7, 9)]
        assert s8.head.root == root(await real(0, 8))
        signer = AuditLog(state)  # a restart: the edges are rebuilt from the log
        await signer.prime()
        pages.clear()
        await signer.warm()
        assert pages == [(0, 2), (2, 4), (4, 6), (6, 8)]
        pages.clear()
        p = await proven(state, s8, 3)
        assert pages == [(3, 5), (5, 7), (7, 8)]
        verify_consistency(3, 8, s3.head.root, s8.head.root, p.hashes)


async def test_a_follower_proves_the_leaders_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that does not lead keeps the edges at the leader's head sizes, so
    its batches carry the same proofs."""
    key = write_node_toml(tmp_path, peers=[])
    config = load_config(tmp_path)
    storage = await open_storage(config.node.database)
    try:
        leader = AuditLog(NodeState(config, key, storage))
        follower_state = NodeState(config, key, storage)
        follower_state.leading = False
        monkeypatch.setattr(audit, "HEAD_INTERVAL_S", 0.01)
        task = asyncio.create_task(AuditLog(follower_state).follow())

        async def taken(signed: SignedHead) -> None:
            for _ in range(500):
                if follower_state.tree_head == signed:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"the follower did not take the head of {signed.head.size}")

        await storage.write(lambda tx: tx.append_audit(purges(6)))
        s6 = await leader.sign()
        await taken(s6)
        await storage.write(lambda tx: tx.append_audit(purges(5)))  # after the leader's head
        s11 = await leader.sign()
        await taken(s11)
        await storage.write(lambda tx: tx.append_audit(purges(3)))  # not under any head yet
        for from_size in (None, 6):
            p = await proven(follower_state, s11, from_size)
            assert p.from_size == 6
            verify_consistency(6, 11, s6.head.root, s11.head.root, p.hashes)
        follower_state.stopping = True
        await task
    finally:
        await storage.close()
