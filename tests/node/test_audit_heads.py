"""relay.node.audit on a NodeState alone: heads over the committed log, a worker that
does not lead following the leader's head, and config entries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.node import audit, queueops
from relay.node.audit import AuditLog
from relay.node.state import NodeState
from relay.protocol.audit import CONFIG, DELETED, decode_entry, decode_signed_head, verify_head
from relay.protocol.merkle import EMPTY_ROOT, root
from relay.storage.audit import AuditEvent
from relay.storage.backends import open_storage
from tests.federation.conftest import write_node_toml
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
    key = write_node_toml(tmp_path, peers=[])
    config = load_config(tmp_path)
    storage = await open_storage(config.node.database)
    try:
        state = NodeState(config, key, storage)
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
    finally:
        await storage.close()
