"""The accept point in a running node: import_from and audit mode (DESIGN §7).

n.test (DE, allowed EU) receives from a.test, which it pins as FR. Only
`import_from` and `mode` change between the cases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from relay.policy.residency import RULE_IMPORT
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import (
    Clock,
    Harness,
    Identity,
    Pinned,
    start_node,
    write_node_toml,
)


@asynccontextmanager
async def node_with(tmp_path: Path, policy_lines: str) -> AsyncIterator[Harness]:
    """n.test with `policy_lines` added to its [policy] table; a.test pinned as FR."""
    a, a2, x = Identity("a.test"), Identity("a.test"), Identity("x.test")
    node_dir = tmp_path / "n"
    key = write_node_toml(
        node_dir,
        peers=[
            Pinned(a.name, (a.key_string, a2.key_string), jurisdiction="FR"),
            Pinned(x.name, (x.key_string,)),
        ],
    )
    toml = node_dir / "node.toml"
    text = toml.read_text()
    anchor = 'allowed_residency = ["EU"]\n'
    assert anchor in text
    toml.write_text(text.replace(anchor, anchor + policy_lines))
    clock = Clock()
    node = await start_node(node_dir, clock)
    try:
        async with aiohttp.ClientSession() as session:
            yield Harness(node, clock, key, session, a, a2, x)
    finally:
        await node.stop()


async def decisions(h: Harness) -> list[tuple[str, bytes, str, str, str, str]]:
    rows = await sqlite_store(h.state.store).fetchall(
        "SELECT point, envelope, peer, outcome, rule, policy_hash FROM decisions ORDER BY seq"
    )
    return [(r[0], bytes(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


async def test_sender_outside_import_from_is_refused(tmp_path: Path) -> None:
    async with node_with(tmp_path, 'import_from = ["DE"]\n') as h:
        env = h.envelope(residency=["DE", "FR"])
        before = await h.counts()
        result = await h.send([h.item(env)])
        assert result.results == {env.header.id: "rejected:residency"}
        assert not await h.stored(env.header.origin, env.header.id)
        after = await h.counts()
        changed = {t for t in after if after[t] != before[t]}
        assert changed == {"decisions", "batches", "nonces"}
        assert await decisions(h) == [
            ("accept", env.header.id, "a.test", "deny", RULE_IMPORT, h.state.policy_hash)
        ]


async def test_audit_mode_accepts_and_records_the_would_be_denial(tmp_path: Path) -> None:
    async with node_with(tmp_path, 'import_from = ["DE"]\nmode = "audit"\n') as h:
        env = h.envelope(residency=["DE", "FR"])
        result = await h.send([h.item(env)])
        assert result.results == {env.header.id: "accepted"}
        assert await h.stored(env.header.origin, env.header.id)
        assert await decisions(h) == [
            ("accept", env.header.id, "a.test", "audit", RULE_IMPORT, h.state.policy_hash)
        ]
        # a repeat is a duplicate, not a second decision
        again = await h.send([h.item(env)])
        assert again.results == {env.header.id: "duplicate"}
        assert len(await decisions(h)) == 1


async def test_allowed_accept_costs_no_decision_row(tmp_path: Path) -> None:
    async with node_with(tmp_path, "") as h:  # import_from defaults to allowed (EU)
        env = h.envelope(residency=["DE", "FR"])
        result = await h.send([h.item(env)])
        assert result.results == {env.header.id: "accepted"}
        assert await decisions(h) == []
        row = await sqlite_store(h.state.store).fetchone(
            "SELECT rule_id, policy_hash FROM envelopes WHERE id = ?", (env.header.id,)
        )
        assert row is not None and tuple(row) == ("", h.state.policy_hash)
