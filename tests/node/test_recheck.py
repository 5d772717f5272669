"""Re-check at start: queued mail that may no longer go where it is queued (DESIGN §7).

n.test (DE) queues mail for a.test (pinned DE, no url, so it stays queued);
the admin then re-pins a.test as FR. The policy hash is unchanged, so only a
re-check of every queued envelope notices.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import tomlkit

from relay.config.model import DAY_MS
from relay.policy.residency import RULE_PEER
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import (
    Clock,
    Harness,
    Identity,
    Pinned,
    start_node,
    write_node_toml,
)


async def test_repinned_peer_ends_queued_mail_and_deletes_its_content(tmp_path: Path) -> None:
    a, a2, x = Identity("a.test"), Identity("a.test"), Identity("x.test")
    node_dir = tmp_path / "n"
    key = write_node_toml(
        node_dir,
        peers=[Pinned(a.name, (a.key_string,)), Pinned(x.name, (x.key_string,))],
    )
    clock = Clock()
    node = await start_node(node_dir, clock)
    try:
        async with aiohttp.ClientSession() as session:
            h = Harness(node, clock, key, session, a, a2, x)
            kept = await h.submit(["bob@a.test"], "stays queued")
            assert (await h.status(kept))["bob@a.test"]["status"] == "queued"
            hash_before = h.state.policy_hash
    finally:
        await node.stop()

    toml = node_dir / "node.toml"
    doc = tomlkit.parse(toml.read_text())
    peers = doc["peers"]
    assert isinstance(peers, tomlkit.items.AoT)
    peers[0]["jurisdiction"] = "FR"
    toml.write_text(tomlkit.dumps(doc))

    clock.now_ms += DAY_MS
    node = await start_node(node_dir, clock)
    try:
        state = node.state
        assert state is not None and state.policy_hash == hash_before
        store = state.store
        ident = bytes.fromhex(kept)
        rows = await sqlite_store(store).fetchall(
            "SELECT status, reason FROM recipients WHERE msg = ?", (ident,)
        )
        assert [tuple(r) for r in rows] == [("rejected", "residency")]
        assert (await store.row_counts())["queue"] == 0
        decision = await sqlite_store(store).fetchone(
            "SELECT point, envelope, peer, outcome, rule FROM decisions"
        )
        assert decision is not None
        assert tuple(decision) == ("recheck", ident, "a.test", "deny", RULE_PEER)
        # content_min_days is 0: the content went with the re-check, and that is recorded
        env = await sqlite_store(store).fetchone(
            "SELECT payload_sha FROM envelopes WHERE id = ?", (ident,)
        )
        assert env is not None and env[0] is None
        assert (await store.row_counts())["payloads"] == 0
        purge = await sqlite_store(store).fetchone("SELECT source, contents, payloads FROM purges")
        assert purge is not None and tuple(purge) == ("recheck", 1, 1)
    finally:
        await node.stop()
